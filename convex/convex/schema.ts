// The `sessions` table: one document per OpenCode session, as exported by the opencode-telemetry
// daemon. The fields mirror the daemon's `SessionExport` (daemon/src/export/record.rs) one to one:
// same camelCase names, nested structs as objects, Vec as arrays, Option / skipped-when-empty
// fields as `v.optional` (the daemon omits them; it never sends null).
//
// Every number is `v.number()` (float64). Integers (counts, token totals, epoch-millisecond
// timestamps) are exact up to 2^53. The HTTP API returns them as `3.0`, so clients must read
// them as floating point.
//
// Change this file together with record.rs.
//
// Two more tables hold totals the ingest keeps up to date in the same transaction as each write
// to `sessions` (see aggregates.ts), so the totals queries read a few small rows per day instead
// of every session: `dailyTotals` (per UTC day of createdAt and device) and `modelDailyTotals`
// (per UTC day of createdAt, provider and model).
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

/** `TokenUsage`: token counts as OpenCode reports them. */
export const tokenUsage = v.object({
  input: v.number(),
  output: v.number(),
  reasoning: v.number(),
  cacheRead: v.number(),
  cacheWrite: v.number(),
});

/** `TodoStats`: todo rows by status. */
export const todoStats = v.object({
  total: v.number(),
  completed: v.number(),
  cancelled: v.number(),
  pending: v.number(),
  inProgress: v.number(),
});

/**
 * `CodeChanges`: lines added/deleted and distinct files changed. As `codeChanges`: the session's
 * own file-editing tool calls; as `worktreeChanges`: OpenCode's snapshot diffs of the whole
 * working tree during its turns (edits by other sessions in the same repository included).
 */
export const codeChanges = v.object({
  additions: v.number(),
  deletions: v.number(),
  filesChanged: v.number(),
});

/** `ModelUsage`: usage of one provider/model pair. */
export const modelUsage = v.object({
  providerId: v.string(),
  modelId: v.string(),
  messages: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
});

/** `ToolUsage`: usage of one tool or one skill. */
export const toolUsage = v.object({
  name: v.string(),
  calls: v.number(),
  errors: v.number(),
  durationMs: v.number(),
});

/** `ErrorInfo`: the error that ended a turn. */
export const errorInfo = v.object({
  name: v.string(),
  // Absent when OpenCode stored none or the daemon's [privacy] withholds error messages.
  message: v.optional(v.string()),
});

/** `ChildSummary`: one subagent session inside its parent's record. */
export const childSummary = v.object({
  sessionId: v.string(),
  // Absent unless the daemon's [privacy] sends titles.
  title: v.optional(v.string()),
  agent: v.optional(v.string()),
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
  // Absent in records of daemons before it.
  models: v.optional(v.array(modelUsage)),
  error: v.optional(errorInfo),
});

/**
 * `Rollup`: totals over a session and all its subagent sessions. `models`, `tools` and `skills`
 * are absent in records of daemons before them.
 */
export const rollup = v.object({
  sessions: v.number(),
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
  models: v.optional(v.array(modelUsage)),
  tools: v.optional(v.array(toolUsage)),
  skills: v.optional(v.array(toolUsage)),
});

/**
 * `Inherited`: the prefix a fork copied from the session it was forked from. Counted in the
 * record's own messageCount/tokens/cost/models (as OpenCode stores them); every total
 * subtracts it (aggregates.ts).
 */
export const inherited = v.object({
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
  models: v.array(modelUsage),
});

/** `RevertedUsage`: the part a pending revert hides (still spent, so totals keep it). */
export const reverted = v.object({
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
});

/** `Todo`: one todo row. */
export const todo = v.object({
  // Absent unless the daemon's [privacy] sends todo texts.
  content: v.optional(v.string()),
  status: v.string(),
  priority: v.string(),
});

/** `MessageSummary`: one message (only with the daemon's `export.include_messages`). */
export const messageSummary = v.object({
  id: v.string(),
  role: v.string(),
  agent: v.optional(v.string()),
  providerId: v.optional(v.string()),
  modelId: v.optional(v.string()),
  createdAt: v.number(),
  completedAt: v.optional(v.number()),
  finish: v.optional(v.string()),
  error: v.optional(v.string()),
  // Absent unless the daemon's [privacy] sends message texts.
  text: v.optional(v.string()),
});

/**
 * `deletion` of an endReason "deleted" record (the daemon's `privacy.on_delete`): "tombstone"
 * (the content is gone, ids, times and counts stay), "keep" (the last record, marked deleted),
 * "delete" (the upsert removes the session's document and its share of the totals).
 */
export const deletion = v.union(v.literal("tombstone"), v.literal("keep"), v.literal("delete"));

/** `EndReason`. */
export const endReason = v.union(v.literal("idle"), v.literal("error"), v.literal("deleted"));

/**
 * The fields of one `SessionExport`, in record.rs order. Shared by the table schema and the
 * `sessions:upsertBatch` arguments so the two cannot drift.
 */
export const sessionFields = {
  schemaVersion: v.number(),
  sessionId: v.string(),
  deviceId: v.string(),
  // Free text, paths and the host name are sent only as the daemon's [privacy] allows
  // (daemon/src/export/privacy.rs); absent otherwise. Free text is redacted by the daemon.
  hostname: v.optional(v.string()),
  opencodeVersion: v.string(),
  daemonVersion: v.string(),
  projectId: v.string(),
  // Plain, the last path component, or "hmac:" + a keyed hash (the daemon's privacy.project_paths).
  projectDirectory: v.optional(v.string()),
  projectWorktree: v.optional(v.string()),
  parentSessionId: v.optional(v.string()),
  // The session a fork was made from (a fork has no parentSessionId).
  forkedFrom: v.optional(v.string()),
  title: v.optional(v.string()),
  // Epoch milliseconds.
  createdAt: v.number(),
  updatedAt: v.number(),
  exportedAt: v.number(),
  // The record's place among its session's records on its device: strictly increasing, a
  // hybrid logical clock independent of wall-clock steps (daemon/src/export/record.rs). The
  // upsert orders by it first when both records have one. Absent from older daemons.
  revision: v.optional(v.number()),
  // Hex SHA-256 (16 bytes) of the record without exportedAt: equal hashes mean a re-export
  // that changes nothing (see daemon/src/export/hash.rs). Absent from older daemons.
  contentHash: v.optional(v.string()),
  archivedAt: v.optional(v.number()),
  deletedAt: v.optional(v.number()),
  durationMs: v.optional(v.number()),
  messageCount: v.number(),
  userMessageCount: v.number(),
  assistantMessageCount: v.number(),
  agentsUsed: v.array(v.string()),
  primaryAgent: v.optional(v.string()),
  todoStats,
  codeChanges,
  // Absent in records of daemons before it.
  worktreeChanges: v.optional(codeChanges),
  tokens: tokenUsage,
  // US dollars.
  cost: v.number(),
  models: v.array(modelUsage),
  tools: v.array(toolUsage),
  skills: v.array(toolUsage),
  inherited: v.optional(inherited),
  reverted: v.optional(reverted),
  endReason,
  error: v.optional(errorInfo),
  // Omitted by the daemon when false.
  incomplete: v.optional(v.boolean()),
  // Omitted by the daemon when empty.
  children: v.optional(v.array(childSummary)),
  rollup: v.optional(rollup),
  todos: v.optional(v.array(todo)),
  messages: v.optional(v.array(messageSummary)),
  // Names of the fields the daemon shortened to fit Convex's limits (e.g. ["title","messages"]);
  // absent when nothing was shortened. Shortened strings end with
  // "… [truncated by opencode-telemetry: N more chars]"; shortened arrays keep their first items.
  truncated: v.optional(v.array(v.string())),
  // Names of the fields whose source value broke a content rule (validate.ts) and that the daemon
  // clamped or dropped before queueing the record (e.g. ["createdAt","durationMs"]; paths without
  // array indexes, sorted); absent when nothing was corrected. See daemon/src/export/validate.rs.
  corrected: v.optional(v.array(v.string())),
  // How many secrets the daemon replaced by "[redacted:<kind>]" in the record's free text;
  // absent when none.
  redactions: v.optional(v.number()),
  // With endReason "deleted": what the record is (see `deletion` above); absent from older
  // daemons (then "keep").
  deletion: v.optional(deletion),
};

export const sessionRecord = v.object(sessionFields);

/** Sessions counted per `ErrorInfo.name` (endReason "error" only). */
export const errorNameCount = v.object({ name: v.string(), sessions: v.number() });

/**
 * One row per (UTC day of `createdAt`, deviceId) that has sessions. Every number is the sum over
 * the stored `sessions` rows of that day and device.
 */
export const dailyTotalsFields = {
  /** "YYYY-MM-DD", UTC, of the session's createdAt. */
  day: v.string(),
  deviceId: v.string(),
  /** Top-level session rows (subagent rows count in their parent's rollup). */
  sessions: v.number(),
  /** Messages of those sessions and their subagents, without what forks inherited (aggregates.ts `counted`). */
  messages: v.number(),
  /** Their tokens, counted the same way. */
  tokens: tokenUsage,
  /** Their cost (USD), counted the same way. */
  cost: v.number(),
  /** Sessions with endReason "error". */
  errors: v.number(),
  /** Those sessions by error.name ("(none)" when the record has no error), sorted by name. */
  errorNames: v.array(errorNameCount),
  /** Sum of todoStats.total. */
  todosTotal: v.number(),
  /** Sum of todoStats.completed. */
  todosCompleted: v.number(),
};

/**
 * One row per (UTC day of `createdAt`, providerId, modelId) used by some session: the sums of
 * that model's usage over the top-level sessions and their subagents, without what forks
 * inherited (aggregates.ts `counted`).
 */
export const modelDailyTotalsFields = {
  day: v.string(),
  providerId: v.string(),
  modelId: v.string(),
  /** Top-level sessions (with their subagents) that used this model. */
  sessions: v.number(),
  /** Sum of ModelUsage.messages. */
  messages: v.number(),
  tokens: tokenUsage,
  /** USD. */
  cost: v.number(),
};

/**
 * One row per device credential (devices.ts). `tokenHash`: hex SHA-256 of the device's token
 * (the token itself is never stored). `deviceId`: the record `deviceId` the device writes under,
 * bound at creation or by its first record. Epoch-ms `createdAt`, `lastSeenAt` (its last
 * authenticated ingest), `revokedAt` (set: its token is refused).
 */
export const deviceFields = {
  name: v.string(),
  tokenHash: v.string(),
  deviceId: v.optional(v.string()),
  createdAt: v.number(),
  lastSeenAt: v.optional(v.number()),
  revokedAt: v.optional(v.number()),
};

export default defineSchema({
  devices: defineTable(deviceFields)
    .index("by_tokenHash", ["tokenHash"])
    .index("by_name", ["name"])
    .index("by_deviceId", ["deviceId"]),
  sessions: defineTable(sessionFields)
    .index("by_sessionId", ["sessionId"])
    .index("by_deviceId", ["deviceId"])
    .index("by_projectId", ["projectId"])
    .index("by_createdAt", ["createdAt"])
    .index("by_deviceId_createdAt", ["deviceId", "createdAt"])
    .index("by_projectId_createdAt", ["projectId", "createdAt"])
    .index("by_parentSessionId_createdAt", ["parentSessionId", "createdAt"])
    .index("by_endReason_createdAt", ["endReason", "createdAt"])
    .index("by_endReason_errorName_createdAt", ["endReason", "error.name", "createdAt"]),
  dailyTotals: defineTable(dailyTotalsFields)
    .index("by_day_deviceId", ["day", "deviceId"])
    .index("by_deviceId_day", ["deviceId", "day"]),
  modelDailyTotals: defineTable(modelDailyTotalsFields).index("by_day_providerId_modelId", [
    "day",
    "providerId",
    "modelId",
  ]),
});
