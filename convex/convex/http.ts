// HTTP actions, served on https://<deployment-name>.convex.site.
//
// POST /ingest — the only way session records get in (ingest contract v1, see convex/README.md):
//
//   POST https://<deployment-name>.convex.site/ingest
//   Authorization: Bearer <device token>     (devices.ts; the legacy INGEST_TOKEN only with
//                                            ALLOW_LEGACY_INGEST_TOKEN=1 on the deployment)
//   Content-Type: application/json
//   {"sessions":[<SessionExport>, ...]}                 1..=MAX_BATCH records
//
// 200 {"results":[...]} one result per record in input order ("inserted" | "updated" | "unchanged"
//     | "stale" | "deleted" (a `deletion: "delete"` record: the document removed) | "rejected" + error: a content rule of validate.ts, a record claiming another
//     device's deviceId, or a sessionId stored under another device — which one is never said);
// 400 BAD_REQUEST, 401 UNAUTHORIZED (+ WWW-Authenticate: Bearer), 413 BATCH_TOO_LARGE,
// 500 INTERNAL — all `{"code","message"}` JSON bodies. On 401 (no/unknown/revoked token)
// nothing is written. A device token writes only under its device's deviceId (bound at
// `devices:create` or by its first record); the legacy token may write any deviceId.
//
// GET /whoami — the device name (and bound deviceId) the bearer token belongs to (see `whoami`).
import { httpRouter } from "convex/server";
import { ConvexError } from "convex/values";
import { internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";
import { env, httpAction, type ActionCtx } from "./_generated/server";
import { sha256Hex } from "./devices";
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

/** Who sent a request: a device (its `devices` row id and name), or the legacy shared token. */
export type Sender =
  | { kind: "device"; id: Id<"devices">; name: string; deviceId: string | null }
  | { kind: "legacy" };

/** True when the owner opted in to the legacy single INGEST_TOKEN (`ALLOW_LEGACY_INGEST_TOKEN=1`). */
export function legacyAllowed(): boolean {
  return (env.ALLOW_LEGACY_INGEST_TOKEN ?? "").trim() === "1";
}

/**
 * The sender of the request, else the 401 response. The bearer token is hashed (SHA-256) and
 * looked up in `devices` by index; a revoked device is refused. Only when no device has that
 * token, `ALLOW_LEGACY_INGEST_TOKEN=1` is set and INGEST_TOKEN is non-empty, the token is
 * compared with INGEST_TOKEN in constant time (legacy: that token may write any deviceId).
 */
async function authenticate(ctx: ActionCtx, request: Request): Promise<Sender | Response> {
  const header = request.headers.get("authorization");
  if (header === null) return unauthorized("missing `Authorization: Bearer <device token>` header");
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  if (m === null) return unauthorized("malformed Authorization header; expected `Bearer <device token>`");
  const token = m[1];
  const device = await ctx.runQuery(internal.devices.byTokenHash, { tokenHash: await sha256Hex(token) });
  if (device !== null) {
    if (device.revokedAt !== undefined) return unauthorized("this device's token was revoked");
    return { kind: "device", id: device._id, name: device.name, deviceId: device.deviceId ?? null };
  }
  const legacy = env.INGEST_TOKEN;
  if (legacyAllowed() && legacy !== undefined && legacy !== "" && constantTimeEqual(token, legacy)) {
    return { kind: "legacy" };
  }
  return unauthorized(
    "the bearer token is not a device token of this deployment (create one with `npx convex run devices:create '{\"name\":\"<name>\"}'`)",
  );
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

/** The REVOKED error of upsertBatch: the device was revoked while the request ran. */
class Revoked extends Error {}

async function upsertChunk(
  ctx: ActionCtx,
  device: Id<"devices"> | undefined,
  chunk: Array<{ index: number; record: Record<string, unknown> }>,
  results: IngestResult[],
): Promise<void> {
  try {
    const res = await ctx.runMutation(internal.sessions.upsertBatch, { sessions: chunk.map((c) => c.record) as never, device });
    chunk.forEach((c, i) => (results[c.index] = res[i]));
    return;
  } catch (e) {
    if (isRevoked(e)) throw new Revoked();
    // Some record (or the chunk as a whole) failed: nothing of it was written. Retry one record
    // per transaction so that only the bad records are rejected.
  }
  for (const c of chunk) {
    try {
      const [res] = await ctx.runMutation(internal.sessions.upsertBatch, { sessions: [c.record] as never, device });
      results[c.index] = res;
    } catch (e) {
      if (isRevoked(e)) throw new Revoked();
      const error = oneLine(e);
      if (!isRecordError(error)) throw e;
      results[c.index] = { ...sessionIdOf(c.record), action: "rejected", error };
    }
  }
}

const isRevoked = (e: unknown) =>
  (e instanceof ConvexError && (e.data as { code?: string } | undefined)?.code === "REVOKED") ||
  /"code":\s*"REVOKED"/.test(e instanceof Error ? e.message : String(e));

const ingest = httpAction(async (ctx, request) => {
  // Authentication first: an unauthenticated request gets no further, whatever its body.
  const sender = await authenticate(ctx, request);
  if (sender instanceof Response) return sender;
  const device = sender.kind === "device" ? sender.id : undefined;

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
    for (const chunk of chunks(objects)) await upsertChunk(ctx, device, chunk, results);
    return json(200, { results });
  } catch (e) {
    // Revoked while the request ran: the chunks before were written, nothing after.
    if (e instanceof Revoked) return unauthorized("this device's token was revoked");
    console.error("ingest failed", e);
    return json(500, { code: "INTERNAL", message: `ingest failed: ${oneLine(e)}` });
  }
});

/**
 * GET /whoami with `Authorization: Bearer <token>`: 200 `{"device":"<name>","deviceId":<the record
 * deviceId it is bound to, or null before its first record>}` for a device token
 * (`{"device":null,"legacy":true}` for the legacy INGEST_TOKEN when allowed), else the same 401
 * as /ingest. Reads only; `opencode-telemetry login`, `check-config` and `status` ask it which
 * device the deployment knows this machine as.
 */
const whoami = httpAction(async (ctx, request) => {
  const sender = await authenticate(ctx, request);
  if (sender instanceof Response) return sender;
  return json(
    200,
    sender.kind === "device" ? { device: sender.name, deviceId: sender.deviceId } : { device: null, legacy: true },
  );
});

const http = httpRouter();
http.route({ path: "/ingest", method: "POST", handler: ingest });
http.route({ path: "/whoami", method: "GET", handler: whoami });
export default http;
