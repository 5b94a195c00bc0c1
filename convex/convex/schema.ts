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

/** `CodeChanges`: lines added/deleted and distinct files changed. */
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
  message: v.string(),
});

/** `ChildSummary`: one subagent session inside its parent's record. */
export const childSummary = v.object({
  sessionId: v.string(),
  title: v.string(),
  agent: v.optional(v.string()),
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
  error: v.optional(errorInfo),
});

/** `Rollup`: totals over a session and all its subagent sessions. */
export const rollup = v.object({
  sessions: v.number(),
  messageCount: v.number(),
  tokens: tokenUsage,
  cost: v.number(),
});

/** `Todo`: one todo row. */
export const todo = v.object({
  content: v.string(),
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
  text: v.string(),
});

/** `EndReason`. */
export const endReason = v.union(v.literal("idle"), v.literal("error"), v.literal("deleted"));

/**
 * The fields of one `SessionExport`, in record.rs order. Shared by the table schema and the
 * `sessions:ingest` arguments so the two cannot drift.
 */
export const sessionFields = {
  schemaVersion: v.number(),
  sessionId: v.string(),
  deviceId: v.string(),
  hostname: v.string(),
  opencodeVersion: v.string(),
  daemonVersion: v.string(),
  projectId: v.string(),
  projectDirectory: v.string(),
  projectWorktree: v.optional(v.string()),
  parentSessionId: v.optional(v.string()),
  title: v.string(),
  // Epoch milliseconds.
  createdAt: v.number(),
  updatedAt: v.number(),
  exportedAt: v.number(),
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
  tokens: tokenUsage,
  // US dollars.
  cost: v.number(),
  models: v.array(modelUsage),
  tools: v.array(toolUsage),
  skills: v.array(toolUsage),
  endReason,
  error: v.optional(errorInfo),
  // Omitted by the daemon when false.
  incomplete: v.optional(v.boolean()),
  // Omitted by the daemon when empty.
  children: v.optional(v.array(childSummary)),
  rollup: v.optional(rollup),
  todos: v.optional(v.array(todo)),
  messages: v.optional(v.array(messageSummary)),
};

export const sessionRecord = v.object(sessionFields);

export default defineSchema({
  sessions: defineTable(sessionFields)
    .index("by_sessionId", ["sessionId"])
    .index("by_deviceId", ["deviceId"])
    .index("by_projectId", ["projectId"])
    .index("by_createdAt", ["createdAt"])
    .index("by_deviceId_createdAt", ["deviceId", "createdAt"]),
});
