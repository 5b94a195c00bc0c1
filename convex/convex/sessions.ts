// Functions of the `sessions` table.
//
// - `ingest` (public mutation): what the opencode-telemetry daemon calls, as
//   POST <deployment>/api/mutation {"path":"sessions:ingest","args":{"token":…,"sessions":[…]}}.
//   It checks `token` against the deployment environment variable INGEST_TOKEN, then upserts
//   every record (idempotent, monotonic on (updatedAt, exportedAt), one row per sessionId).
// - `get`, `list`, `stats` (internal queries): for the Convex dashboard and `npx convex run`.
//   They are internal so the data is not readable by anyone who knows the deployment URL.
import { ConvexError, v, type Infer } from "convex/values";
import { env, internalQuery, mutation, type MutationCtx, type QueryCtx } from "./_generated/server";
import type { Doc } from "./_generated/dataModel";
import { sessionRecord } from "./schema";

/** Most records accepted by one `ingest` call. */
const MAX_BATCH = 1000;
/** Default and largest `limit` of `list`. */
const LIST_DEFAULT_LIMIT = 100;
const LIST_MAX_LIMIT = 1000;
/** Most rows `stats` (and `list` by projectId) read. */
const SCAN_MAX_ROWS = 10000;

export type SessionRecord = Infer<typeof sessionRecord>;

const ingestResult = v.union(
  v.object({
    sessionId: v.string(),
    action: v.union(
      v.literal("inserted"),
      v.literal("updated"),
      v.literal("unchanged"),
      v.literal("stale"),
    ),
  }),
  v.object({
    sessionId: v.string(),
    action: v.literal("conflict"),
    storedDeviceId: v.string(),
  }),
);
export type IngestResult = Infer<typeof ingestResult>;

/**
 * String equality whose running time depends only on the lengths, not on where the strings
 * differ. Convex's default runtime has no `crypto.timingSafeEqual`, hence the loop.
 */
function constantTimeEqual(a: string, b: string): boolean {
  const n = Math.max(a.length, b.length);
  let diff = a.length ^ b.length;
  for (let i = 0; i < n; i++) {
    // charCodeAt past the end is NaN; `| 0` turns it into 0.
    diff |= (a.charCodeAt(i) | 0) ^ (b.charCodeAt(i) | 0);
  }
  return diff === 0;
}

/** Throws ConvexError UNAUTHORIZED unless `token` equals the deployment's INGEST_TOKEN. */
function checkToken(token: string): void {
  const expected = env.INGEST_TOKEN;
  if (expected === undefined || expected === "") {
    throw new ConvexError({
      code: "UNAUTHORIZED",
      message:
        "INGEST_TOKEN is not set on this deployment; set it with `npx convex env set INGEST_TOKEN <token>`",
    });
  }
  if (!constantTimeEqual(token, expected)) {
    throw new ConvexError({
      code: "UNAUTHORIZED",
      message: "The ingest token does not match this deployment's INGEST_TOKEN",
    });
  }
}

/**
 * The upsert of one record, keyed by sessionId:
 * - no row                                   -> insert, "inserted"
 * - stored deviceId differs                  -> no write, "conflict" (+ storedDeviceId)
 * - stored (updatedAt, exportedAt) is greater -> no write, "stale"
 * - stored (updatedAt, exportedAt) is equal   -> no write, "unchanged"
 * - otherwise                                -> replace the whole document, "updated"
 * Fields absent from the record are removed from the stored document on "updated".
 */
async function upsertOne(ctx: MutationCtx, record: SessionRecord): Promise<IngestResult> {
  const { sessionId } = record;
  const existing = await ctx.db
    .query("sessions")
    .withIndex("by_sessionId", (q) => q.eq("sessionId", sessionId))
    .unique();
  if (existing === null) {
    await ctx.db.insert("sessions", record);
    return { sessionId, action: "inserted" };
  }
  if (existing.deviceId !== record.deviceId) {
    return { sessionId, action: "conflict", storedDeviceId: existing.deviceId };
  }
  if (
    existing.updatedAt > record.updatedAt ||
    (existing.updatedAt === record.updatedAt && existing.exportedAt > record.exportedAt)
  ) {
    return { sessionId, action: "stale" };
  }
  if (existing.updatedAt === record.updatedAt && existing.exportedAt === record.exportedAt) {
    return { sessionId, action: "unchanged" };
  }
  await ctx.db.replace("sessions", existing._id, record);
  return { sessionId, action: "updated" };
}

/**
 * Upserts a batch of SessionExport records. One transaction per call: either every record is
 * processed or (on an error) nothing is written. Results are in input order; a sessionId repeated
 * within one batch is processed in order, each seeing the previous one's write.
 *
 * Errors (HTTP 200, status "error", `errorData.code`):
 * - UNAUTHORIZED: INGEST_TOKEN unset/empty on the deployment, or `token` differs from it.
 * - BATCH_TOO_LARGE: more than MAX_BATCH records.
 * An invalid record (extra field, wrong type) fails the whole call with an ArgumentValidationError
 * before this handler runs.
 */
export const ingest = mutation({
  args: { token: v.string(), sessions: v.array(sessionRecord) },
  returns: v.array(ingestResult),
  handler: async (ctx, { token, sessions }) => {
    checkToken(token);
    if (sessions.length > MAX_BATCH) {
      throw new ConvexError({
        code: "BATCH_TOO_LARGE",
        message: `At most ${MAX_BATCH} sessions per call, got ${sessions.length}`,
        limit: MAX_BATCH,
        got: sessions.length,
      });
    }
    const results: IngestResult[] = [];
    for (const record of sessions) {
      results.push(await upsertOne(ctx, record));
    }
    return results;
  },
});

/** The stored document of one session, or null. */
export const get = internalQuery({
  args: { sessionId: v.string() },
  handler: async (ctx, { sessionId }) => {
    return await ctx.db
      .query("sessions")
      .withIndex("by_sessionId", (q) => q.eq("sessionId", sessionId))
      .unique();
  },
});

function listLimit(limit: number | undefined): number {
  if (limit === undefined) return LIST_DEFAULT_LIMIT;
  if (!Number.isFinite(limit) || limit < 1) {
    throw new ConvexError({ code: "BAD_LIMIT", message: `limit must be at least 1, got ${limit}` });
  }
  return Math.min(Math.floor(limit), LIST_MAX_LIMIT);
}

const byCreatedAtDesc = (a: Doc<"sessions">, b: Doc<"sessions">) =>
  b.createdAt - a.createdAt || b._creationTime - a._creationTime;

/**
 * Sessions, newest `createdAt` first. Filters: `deviceId` (index by_deviceId_createdAt),
 * `projectId` (index by_projectId; with deviceId too, a filter on the device's rows).
 * `limit`: default 100, at most 1000.
 *
 * by_projectId is not ordered by createdAt, so a projectId-only listing reads at most
 * SCAN_MAX_ROWS rows of the project and sorts them.
 */
export const list = internalQuery({
  args: {
    deviceId: v.optional(v.string()),
    projectId: v.optional(v.string()),
    limit: v.optional(v.number()),
  },
  handler: async (ctx, { deviceId, projectId, limit }) => {
    const n = listLimit(limit);
    if (deviceId !== undefined) {
      let q = ctx.db
        .query("sessions")
        .withIndex("by_deviceId_createdAt", (q) => q.eq("deviceId", deviceId))
        .order("desc");
      if (projectId !== undefined) q = q.filter((q) => q.eq(q.field("projectId"), projectId));
      return await q.take(n);
    }
    if (projectId !== undefined) {
      const rows = await ctx.db
        .query("sessions")
        .withIndex("by_projectId", (q) => q.eq("projectId", projectId))
        .take(SCAN_MAX_ROWS);
      return rows.sort(byCreatedAtDesc).slice(0, n);
    }
    return await ctx.db.query("sessions").withIndex("by_createdAt").order("desc").take(n);
  },
});

async function newestSessions(ctx: QueryCtx, deviceId: string | undefined, max: number) {
  if (deviceId !== undefined) {
    return await ctx.db
      .query("sessions")
      .withIndex("by_deviceId_createdAt", (q) => q.eq("deviceId", deviceId))
      .order("desc")
      .take(max);
  }
  return await ctx.db.query("sessions").withIndex("by_createdAt").order("desc").take(max);
}

/**
 * Totals over the newest SCAN_MAX_ROWS sessions (by createdAt), optionally of one device:
 * `{sessions, cost, messageCount, byEndReason: {idle, error, deleted}}`.
 */
export const stats = internalQuery({
  args: { deviceId: v.optional(v.string()) },
  handler: async (ctx, { deviceId }) => {
    const rows = await newestSessions(ctx, deviceId, SCAN_MAX_ROWS);
    const out = {
      sessions: 0,
      cost: 0,
      messageCount: 0,
      byEndReason: { idle: 0, error: 0, deleted: 0 },
    };
    for (const s of rows) {
      out.sessions += 1;
      out.cost += s.cost;
      out.messageCount += s.messageCount;
      out.byEndReason[s.endReason] += 1;
    }
    return out;
  },
});
