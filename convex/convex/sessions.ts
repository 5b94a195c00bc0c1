// Functions of the `sessions` table. All of them are internal: the only way in from outside is the
// token-checked HTTP action `POST /ingest` (http.ts), and reading needs an admin or deploy key
// (the Convex dashboard, `npx convex run`, or your own authenticated wrapper).
//
// - `upsertBatch` (internal mutation): the upsert the HTTP action calls.
// - `get` (internal query): one stored document by sessionId.
// - `recent`, `byDevice`, `byProject`, `byDay`, `children`, `failures` (internal paginated
//   queries): session summaries, newest `createdAt` first (children: oldest first), through
//   indexes. A summary is the stored document without its `messages` and `todos` arrays, plus
//   `deviceName` (the name of the device bound to its deviceId, null when none); `get` returns
//   the whole document.
import { paginationOptsValidator, type PaginationOptions, type PaginationResult } from "convex/server";
import { ConvexError, v, type Infer } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, internalQuery, type MutationCtx, type QueryCtx } from "./_generated/server";
import { AggregateDelta, dayStartMs } from "./aggregates";
import { deviceById, deviceNames } from "./devices";
import { sessionRecord } from "./schema";
import { validateRecord } from "./validate";

/** Most items of one page of the paginated queries; a larger `numItems` is lowered to it. */
export const MAX_PAGE_ITEMS = 256;
/**
 * Most bytes of documents one page reads (Convex's limit per query is 16 MiB). A page of large
 * documents (records with message text) may hold fewer than `numItems`; `isDone` says whether
 * more remain and `continueCursor` continues.
 */
export const MAX_PAGE_BYTES = 8 << 20;

export type SessionRecord = Infer<typeof sessionRecord>;

const upsertResult = v.union(
  v.object({
    sessionId: v.string(),
    action: v.union(
      v.literal("inserted"),
      v.literal("updated"),
      v.literal("unchanged"),
      v.literal("stale"),
      // A "delete" deletion (`deletion: "delete"`): the session's document is removed (or was
      // not stored).
      v.literal("deleted"),
    ),
  }),
  // The record broke a content rule (validate.ts), claimed another device's deviceId, or names a
  // session stored under another device. Nothing of it was written. (Deployments before device
  // credentials answered the last case "conflict" with the stored deviceId; that leaked another
  // device's id and is gone.)
  v.object({
    sessionId: v.string(),
    action: v.literal("rejected"),
    error: v.string(),
  }),
);
export type UpsertResult = Infer<typeof upsertResult>;

/**
 * The upsert of one record, keyed by sessionId, after the checks of `upsertBatch` (content
 * rules, the writing device's deviceId):
 * - no row                                    -> insert, "inserted"
 * - stored deviceId differs                   -> no write, "rejected" (the other device is not named)
 * - stored version is greater                 -> no write, "stale"
 * - stored version is equal                   -> no write, "unchanged"
 *   (the version: `revision` when both the stored and the new record have one — the daemon's
 *   per-session counter, immune to wall-clock steps — else (updatedAt, exportedAt))
 * - same non-empty contentHash as stored      -> no write, "unchanged": a re-export of the same
 *                                                content (only exportedAt differs); the stored
 *                                                document keeps its exportedAt
 * - `deletion: "delete"`                      -> remove the stored document (if any) and its
 *                                                share of the totals, "deleted"
 * - otherwise                                 -> replace the whole document, "updated"
 * Fields absent from the record are removed from the stored document on "updated".
 * Aggregate changes are recorded in `delta` (written by the caller).
 */
type Versioned = { revision?: number; updatedAt: number; exportedAt: number };

/**
 * Orders two records of one session: > 0 when `a` is newer, 0 when they are the same version.
 * By `revision` when both have one, else by (updatedAt, exportedAt).
 */
export function compareVersions(a: Versioned, b: Versioned): number {
  if (a.revision !== undefined && b.revision !== undefined) {
    return Math.sign(a.revision - b.revision);
  }
  return Math.sign(a.updatedAt - b.updatedAt) || Math.sign(a.exportedAt - b.exportedAt);
}

/** The `rejected` reason for a sessionId stored under another device (which one is not said). */
export const STORED_UNDER_ANOTHER_DEVICE = "this sessionId is stored under another device";
/** The `rejected` reason for a record whose deviceId is not the writing device's. */
export const NOT_THIS_DEVICE = "the record's deviceId is not the deviceId of the device whose token sent it";

async function upsertOne(ctx: MutationCtx, record: SessionRecord, delta: AggregateDelta): Promise<UpsertResult> {
  const { sessionId } = record;
  const existing = await ctx.db
    .query("sessions")
    .withIndex("by_sessionId", (q) => q.eq("sessionId", sessionId))
    .unique();
  const remove = record.endReason === "deleted" && record.deletion === "delete";
  if (existing === null) {
    // Nothing stored to remove (deleted before its first export, or removed already).
    if (remove) return { sessionId, action: "deleted" };
    await ctx.db.insert("sessions", record);
    delta.add(record, 1);
    return { sessionId, action: "inserted" };
  }
  if (existing.deviceId !== record.deviceId) {
    return { sessionId, action: "rejected", error: STORED_UNDER_ANOTHER_DEVICE };
  }
  const order = compareVersions(existing, record);
  if (order > 0) {
    return { sessionId, action: "stale" };
  }
  if (order === 0) {
    return { sessionId, action: "unchanged" };
  }
  if (remove) {
    await ctx.db.delete("sessions", existing._id);
    delta.add(existing, -1);
    return { sessionId, action: "deleted" };
  }
  if (record.contentHash && existing.contentHash === record.contentHash) {
    return { sessionId, action: "unchanged" };
  }
  await ctx.db.replace("sessions", existing._id, record);
  delta.add(existing, -1);
  delta.add(record, 1);
  return { sessionId, action: "updated" };
}

/**
 * Upserts SessionExport records in one transaction and keeps the aggregate tables in step.
 * Results are in input order; a sessionId repeated within one call is processed in order, each
 * item seeing the previous one's write. An invalid record (extra field, wrong type) fails the
 * whole call with an ArgumentValidationError before the handler runs; a document over Convex's
 * limits fails it when written. Either way nothing of the call is written.
 *
 * `device`: the `devices` row whose token sent the records (http.ts), absent for the legacy
 * INGEST_TOKEN. With a device, each record must carry the device's bound deviceId (a device not
 * yet bound is bound to its first record's deviceId, unless another device holds it), and the
 * device's `lastSeenAt` is set. A revoked (or deleted) device fails the call with ConvexError
 * REVOKED and nothing is written. Each record is then checked against the content rules
 * (validate.ts); a record failing either check is "rejected" with a one-line reason and the
 * others are processed.
 */
export const upsertBatch = internalMutation({
  args: { sessions: v.array(sessionRecord), device: v.optional(v.id("devices")) },
  returns: v.array(upsertResult),
  handler: async (ctx, { sessions, device: deviceDocId }) => {
    const now = Date.now();
    let device = deviceDocId === undefined ? null : await ctx.db.get("devices", deviceDocId);
    if (deviceDocId !== undefined && (device === null || device.revokedAt !== undefined)) {
      throw new ConvexError({ code: "REVOKED", message: "this device's token was revoked" });
    }
    const delta = new AggregateDelta();
    const results: UpsertResult[] = [];
    for (const record of sessions) {
      const invalid = validateRecord(record, now);
      if (invalid !== null) {
        results.push({ sessionId: record.sessionId, action: "rejected", error: invalid });
        continue;
      }
      if (device !== null) {
        if (device.deviceId === undefined) {
          const holder = await deviceById(ctx, record.deviceId);
          if (holder !== null) {
            results.push({ sessionId: record.sessionId, action: "rejected", error: NOT_THIS_DEVICE });
            continue;
          }
          await ctx.db.patch("devices", device._id, { deviceId: record.deviceId });
          device = { ...device, deviceId: record.deviceId };
        }
        if (record.deviceId !== device.deviceId) {
          results.push({ sessionId: record.sessionId, action: "rejected", error: NOT_THIS_DEVICE });
          continue;
        }
      }
      results.push(await upsertOne(ctx, record, delta));
    }
    await delta.apply(ctx);
    if (device !== null) await ctx.db.patch("devices", device._id, { lastSeenAt: now });
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

/** A stored session without its `messages` and `todos` arrays (the fields that can be large). */
export type SessionSummary = Omit<Doc<"sessions">, "messages" | "todos">;

export function summary(doc: Doc<"sessions">): SessionSummary {
  const { messages: _m, todos: _t, ...rest } = doc;
  return rest;
}

/** `paginationOpts` with numItems clamped to 1..MAX_PAGE_ITEMS and the byte budget set. */
function bounded(opts: PaginationOptions): PaginationOptions {
  const n = Number.isFinite(opts.numItems) ? Math.floor(opts.numItems) : MAX_PAGE_ITEMS;
  return {
    ...opts,
    numItems: Math.min(Math.max(n, 1), MAX_PAGE_ITEMS),
    maximumBytesRead: Math.min(opts.maximumBytesRead ?? MAX_PAGE_BYTES, MAX_PAGE_BYTES),
  };
}

/** A summary with the name of the device its deviceId is bound to (null: no such device, e.g. legacy rows). */
export type NamedSummary = SessionSummary & { deviceName: string | null };

async function summaries(ctx: QueryCtx, r: PaginationResult<Doc<"sessions">>): Promise<PaginationResult<NamedSummary>> {
  const names = await deviceNames(ctx);
  return { ...r, page: r.page.map((d) => ({ ...summary(d), deviceName: names.get(d.deviceId) ?? null })) };
}

/** All sessions, newest createdAt first (index by_createdAt). */
export const recent = internalQuery({
  args: { paginationOpts: paginationOptsValidator },
  handler: async (ctx, { paginationOpts }) =>
    summaries(
      ctx,
      await ctx.db.query("sessions").withIndex("by_createdAt").order("desc").paginate(bounded(paginationOpts)),
    ),
});

/** Sessions of one device, newest createdAt first (index by_deviceId_createdAt). */
export const byDevice = internalQuery({
  args: { deviceId: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { deviceId, paginationOpts }) =>
    summaries(
      ctx,
      await ctx.db
        .query("sessions")
        .withIndex("by_deviceId_createdAt", (q) => q.eq("deviceId", deviceId))
        .order("desc")
        .paginate(bounded(paginationOpts)),
    ),
});

/** Sessions of one OpenCode project (`projectId`), newest createdAt first (index by_projectId_createdAt). */
export const byProject = internalQuery({
  args: { projectId: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { projectId, paginationOpts }) =>
    summaries(
      ctx,
      await ctx.db
        .query("sessions")
        .withIndex("by_projectId_createdAt", (q) => q.eq("projectId", projectId))
        .order("desc")
        .paginate(bounded(paginationOpts)),
    ),
});

/** Parses a "YYYY-MM-DD" argument; ConvexError BAD_DAY otherwise. */
export function parseDay(name: string, day: string): number {
  const ms = dayStartMs(day);
  if (ms === null) {
    throw new ConvexError({ code: "BAD_DAY", message: `${name} must be a UTC date "YYYY-MM-DD", got ${JSON.stringify(day)}` });
  }
  return ms;
}

/**
 * Sessions created on one UTC day ("YYYY-MM-DD"), optionally of one device, newest first
 * (index by_createdAt, or by_deviceId_createdAt with deviceId).
 */
export const byDay = internalQuery({
  args: { day: v.string(), deviceId: v.optional(v.string()), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { day, deviceId, paginationOpts }) => {
    const start = parseDay("day", day);
    const end = start + 86_400_000;
    const q =
      deviceId === undefined
        ? ctx.db.query("sessions").withIndex("by_createdAt", (q) => q.gte("createdAt", start).lt("createdAt", end))
        : ctx.db
            .query("sessions")
            .withIndex("by_deviceId_createdAt", (q) =>
              q.eq("deviceId", deviceId).gte("createdAt", start).lt("createdAt", end),
            );
    return summaries(ctx, await q.order("desc").paginate(bounded(paginationOpts)));
  },
});

/**
 * The subagent sessions of a session, oldest first. When the deployment holds them as rows
 * (the daemon's `skip_subagent_sessions = false`), their summaries (rows whose parentSessionId
 * is `sessionId`, index by_parentSessionId_createdAt), paginated like the others. Otherwise
 * (the default: children are only rolled up into their parent's record) one page with the
 * parent document's `children` entries, each with `parentSessionId` and `summaryOnly: true`
 * (empty when the parent is not stored either).
 */
export const children = internalQuery({
  args: { sessionId: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { sessionId, paginationOpts }) => {
    const rows = await summaries(
      ctx,
      await ctx.db
        .query("sessions")
        .withIndex("by_parentSessionId_createdAt", (q) => q.eq("parentSessionId", sessionId))
        .order("asc")
        .paginate(bounded(paginationOpts)),
    );
    if (rows.page.length > 0 || paginationOpts.cursor !== null) return rows;
    const parent = await ctx.db
      .query("sessions")
      .withIndex("by_sessionId", (q) => q.eq("sessionId", sessionId))
      .unique();
    const rolledUp = (parent?.children ?? []).map((c) => ({ ...c, parentSessionId: sessionId, summaryOnly: true as const }));
    return { ...rows, page: rolledUp, isDone: true };
  },
});

/**
 * Sessions whose last turn ended on an error (endReason "error"), newest first; with
 * `errorName`, only those whose `error.name` equals it (index by_endReason_errorName_createdAt,
 * a nested-field index on "error.name"; otherwise by_endReason_createdAt).
 */
export const failures = internalQuery({
  args: { errorName: v.optional(v.string()), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { errorName, paginationOpts }) => {
    const q =
      errorName === undefined
        ? ctx.db.query("sessions").withIndex("by_endReason_createdAt", (q) => q.eq("endReason", "error"))
        : ctx.db
            .query("sessions")
            .withIndex("by_endReason_errorName_createdAt", (q) =>
              q.eq("endReason", "error").eq("error.name", errorName),
            );
    return summaries(ctx, await q.order("desc").paginate(bounded(paginationOpts)));
  },
});
