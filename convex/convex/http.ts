// HTTP actions, served on https://<deployment-name>.convex.site.
//
// POST /ingest — the only way session records get in (ingest contract v1, see convex/README.md):
//
//   POST https://<deployment-name>.convex.site/ingest
//   Authorization: Bearer <INGEST_TOKEN>
//   Content-Type: application/json
//   {"sessions":[<SessionExport>, ...]}                 1..=MAX_BATCH records
//
// 200 {"results":[...]} one result per record in input order ("inserted" | "updated" | "unchanged"
//     | "stale" | "conflict" + storedDeviceId | "rejected" + error);
// 400 BAD_REQUEST, 401 UNAUTHORIZED (+ WWW-Authenticate: Bearer), 413 BATCH_TOO_LARGE,
// 500 INTERNAL — all `{"code","message"}` JSON bodies. On 401 nothing is written.
import { httpRouter } from "convex/server";
import { internal } from "./_generated/api";
import { env, httpAction, type ActionCtx } from "./_generated/server";
import type { UpsertResult } from "./sessions";

/** Most records per request. */
export const MAX_BATCH = 500;
/**
 * Most JSON bytes of records passed to one `sessions:upsertBatch` call (one transaction). Convex
 * allows 16 MiB of arguments and 16 MiB written per transaction; a larger request is split into
 * several calls. A request of typical records (a few KiB each) is one call.
 */
export const MAX_CHUNK_BYTES = 8 << 20;
/**
 * Most aggregate-row lookups budgeted per call (Convex allows 4096 index reads per transaction):
 * each record costs 2 (its sessionId lookup and its day row) + 1 per model it counts (its
 * `models`, or its `rollup.models` when larger), twice for an update (old and new document).
 */
export const MAX_CHUNK_READS = 2000;
/** Longest `error` of a "rejected" result, in characters. */
export const MAX_ERROR_CHARS = 500;

type IngestResult = UpsertResult | { sessionId?: string; action: "rejected"; error: string };

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });

const unauthorized = (message: string) =>
  json(401, { code: "UNAUTHORIZED", message }, { "www-authenticate": "Bearer" });

const badRequest = (message: string) => json(400, { code: "BAD_REQUEST", message });

/**
 * String equality whose running time depends only on the lengths, not on where the strings
 * differ. Convex's default runtime has no `crypto.timingSafeEqual`, hence the loop.
 */
export function constantTimeEqual(a: string, b: string): boolean {
  const n = Math.max(a.length, b.length);
  let diff = a.length ^ b.length;
  for (let i = 0; i < n; i++) {
    // charCodeAt past the end is NaN; `| 0` turns it into 0.
    diff |= (a.charCodeAt(i) | 0) ^ (b.charCodeAt(i) | 0);
  }
  return diff === 0;
}

/** null when the request carries the deployment's INGEST_TOKEN, else the 401 response. */
function checkAuth(request: Request): Response | null {
  const expected = env.INGEST_TOKEN;
  if (expected === undefined || expected === "") {
    return unauthorized(
      "INGEST_TOKEN is not set on this deployment; set it with `npx convex env set INGEST_TOKEN <token>`",
    );
  }
  const header = request.headers.get("authorization");
  if (header === null) return unauthorized("missing `Authorization: Bearer <INGEST_TOKEN>` header");
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  if (m === null) return unauthorized("malformed Authorization header; expected `Bearer <INGEST_TOKEN>`");
  if (!constantTimeEqual(m[1], expected)) {
    return unauthorized("the bearer token does not match this deployment's INGEST_TOKEN");
  }
  return null;
}

const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);

/** An error as one line of at most MAX_ERROR_CHARS, without the record's content echoed back. */
export function oneLine(e: unknown): string {
  const raw = e instanceof Error ? e.message : String(e);
  const text = raw
    .split("\n")
    .map((l) => l.trim())
    // Backend validation messages quote the whole offending value and validator on these lines.
    .filter((l) => l !== "" && !/^(Object|Value|Validator):/.test(l) && !/^at /.test(l))
    .join(" ")
    .replace(/^\[Request ID: [^\]]*\] Server Error\s*/, "")
    .replace(/^Uncaught (Error: )?/, "");
  return text.length <= MAX_ERROR_CHARS ? text : text.slice(0, MAX_ERROR_CHARS - 1) + "…";
}

/**
 * True when a single-record upsert failed because of the record itself: argument/schema
 * validation, or one of Convex's value and document limits. Anything else (a bug, an overloaded
 * deployment) is not the record's fault and makes the request a 500, so the daemon retries
 * instead of dropping the record.
 */
export function isRecordError(message: string): boolean {
  return /ArgumentValidationError|Validator error|does not match (the )?(validator|schema)|missing the required field|Missing required field|extra field|Unexpected field|Value is too large|too large|too many fields|Array length|too nested|Invalid top-level field|field name|is reserved|Expected `/i.test(
    message,
  );
}

/** Splits records (with their input positions) into upsertBatch calls within the chunk budgets. */
function chunks(records: Array<{ index: number; record: Record<string, unknown> }>) {
  const out: Array<typeof records> = [];
  let cur: typeof records = [];
  let bytes = 0;
  let reads = 0;
  for (const r of records) {
    const size = JSON.stringify(r.record).length;
    const len = (a: unknown) => (Array.isArray(a) ? a.length : 0);
    const models = Math.max(len(r.record.models), len((r.record.rollup as { models?: unknown } | undefined)?.models));
    const cost = 2 * (2 + models);
    if (cur.length > 0 && (bytes + size > MAX_CHUNK_BYTES || reads + cost > MAX_CHUNK_READS)) {
      out.push(cur);
      cur = [];
      bytes = 0;
      reads = 0;
    }
    cur.push(r);
    bytes += size;
    reads += cost;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

const sessionIdOf = (r: unknown) =>
  isPlainObject(r) && typeof r.sessionId === "string" ? { sessionId: r.sessionId } : {};

async function upsertChunk(
  ctx: ActionCtx,
  chunk: Array<{ index: number; record: Record<string, unknown> }>,
  results: IngestResult[],
): Promise<void> {
  try {
    const res = await ctx.runMutation(internal.sessions.upsertBatch, { sessions: chunk.map((c) => c.record) as never });
    chunk.forEach((c, i) => (results[c.index] = res[i]));
    return;
  } catch {
    // Some record (or the chunk as a whole) failed: nothing of it was written. Retry one record
    // per transaction so that only the bad records are rejected.
  }
  for (const c of chunk) {
    try {
      const [res] = await ctx.runMutation(internal.sessions.upsertBatch, { sessions: [c.record] as never });
      results[c.index] = res;
    } catch (e) {
      const error = oneLine(e);
      if (!isRecordError(error)) throw e;
      results[c.index] = { ...sessionIdOf(c.record), action: "rejected", error };
    }
  }
}

const ingest = httpAction(async (ctx, request) => {
  // Authentication first: an unauthenticated request gets no further, whatever its body.
  const denied = checkAuth(request);
  if (denied !== null) return denied;

  let body: unknown;
  try {
    body = JSON.parse(await request.text());
  } catch (e) {
    return badRequest(`the body is not JSON: ${oneLine(e)}`);
  }
  if (!isPlainObject(body)) return badRequest('the body must be a JSON object {"sessions":[...]}');
  const sessions = body.sessions;
  if (sessions === undefined) return badRequest("`sessions` is missing");
  if (!Array.isArray(sessions)) return badRequest("`sessions` must be an array of session records");
  if (sessions.length === 0) return badRequest("`sessions` is empty");
  if (sessions.length > MAX_BATCH) {
    return json(413, {
      code: "BATCH_TOO_LARGE",
      message: `at most ${MAX_BATCH} records per request, got ${sessions.length}`,
      limit: MAX_BATCH,
    });
  }

  try {
    const results: IngestResult[] = new Array(sessions.length);
    const objects: Array<{ index: number; record: Record<string, unknown> }> = [];
    sessions.forEach((record: unknown, index) => {
      if (isPlainObject(record)) objects.push({ index, record });
      else results[index] = { action: "rejected", error: "the record is not a JSON object" };
    });
    for (const chunk of chunks(objects)) await upsertChunk(ctx, chunk, results);
    return json(200, { results });
  } catch (e) {
    console.error("ingest failed", e);
    return json(500, { code: "INTERNAL", message: `ingest failed: ${oneLine(e)}` });
  }
});

const http = httpRouter();
http.route({ path: "/ingest", method: "POST", handler: ingest });
export default http;
