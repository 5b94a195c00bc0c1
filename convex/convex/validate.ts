// Content rules for one SessionExport, checked by `sessions:upsertBatch` for every record after
// Convex's schema validation (types, fields) and before anything is written. A record that
// breaks one is answered `rejected` with the rule as a one-line reason; its batch neighbours are
// stored. The daemon applies the same rules before it queues a record
// (daemon/src/export/validate.rs, whose test checks these constants and key sets): a bad source
// value is clamped or dropped there and named in the record's `corrected`, so only a record from
// an older daemon, or one whose daemon clock runs over a day ahead, is rejected here.
//
// The rules:
// - every number in the record (counts, token totals, costs, durations, timestamps, revision,
//   schemaVersion — the schema has no other kind) is finite, >= 0 and <= MAX_NUMBER (2^53 - 1);
//   every cost is <= MAX_COST_USD. So a sum over any number of stored rows stays finite: the
//   aggregate tables can never hold Infinity or NaN;
// - timestamps (createdAt, updatedAt, exportedAt, archivedAt, deletedAt, messages[].createdAt /
//   completedAt) and `revision` lie in [MIN_TIMESTAMP_MS (2000-01-01), now + MAX_FUTURE_MS (1 day)];
// - updatedAt >= createdAt;
// - strings at most MAX_STRING_CHARS (ids and names at most MAX_ID_CHARS, the title at most
//   MAX_TITLE_CHARS); arrays at most MAX_ARRAY_ITEMS items.
import type { SessionRecord } from "./sessions";

/** 2000-01-01T00:00:00Z, epoch ms: the earliest timestamp accepted. */
export const MIN_TIMESTAMP_MS = Date.UTC(2000, 0, 1);
/** How far past the deployment's clock a timestamp may be (clock skew), ms. */
export const MAX_FUTURE_MS = 86_400_000;
/** The largest number accepted anywhere (Number.MAX_SAFE_INTEGER). */
export const MAX_NUMBER = Number.MAX_SAFE_INTEGER;
/** The largest cost accepted (USD), for a session, a model, a child or a rollup. */
export const MAX_COST_USD = 1e9;
/** Longest string anywhere (message text is the long one), in UTF-16 code units. */
export const MAX_STRING_CHARS = 1 << 20;
/** Longest id, name, version, provider/model/tool name, in UTF-16 code units. */
export const MAX_ID_CHARS = 1024;
/** Longest title (the daemon cuts at 1024 characters plus its truncation note). */
export const MAX_TITLE_CHARS = 4096;
/** Most items of any array (the daemon's export::fit::MAX_ARRAY_ITEMS). */
export const MAX_ARRAY_ITEMS = 4096;

/** Keys of strings that are ids or names (anywhere in the record). */
const ID_KEYS = new Set([
  "sessionId",
  "deviceId",
  "hostname",
  "opencodeVersion",
  "daemonVersion",
  "projectId",
  "parentSessionId",
  "forkedFrom",
  "contentHash",
  "primaryAgent",
  "providerId",
  "modelId",
  "agent",
  "role",
  "id",
  "status",
  "priority",
  "finish",
]);
/** Top-level and message keys holding epoch-ms timestamps. */
const TIMESTAMP_KEYS = new Set(["createdAt", "updatedAt", "exportedAt", "archivedAt", "deletedAt", "completedAt", "revision"]);

/** The first rule `record` breaks, as one line, or null when it keeps them all. `now`: epoch ms. */
export function validateRecord(record: SessionRecord, now: number): string | null {
  const latest = now + MAX_FUTURE_MS;
  const walk = (x: unknown, path: string, key: string): string | null => {
    if (typeof x === "number") {
      if (!Number.isFinite(x)) return `${path} is not a finite number`;
      if (x < 0) return `${path} is negative (${x})`;
      if (x > MAX_NUMBER) return `${path} is over ${MAX_NUMBER}`;
      if (key === "cost" && x > MAX_COST_USD) return `${path} is over ${MAX_COST_USD} USD`;
      if (TIMESTAMP_KEYS.has(key) && (path.startsWith(".messages[") || !path.slice(1).includes("."))) {
        if (x < MIN_TIMESTAMP_MS) return `${path} (${x}) is before 2000-01-01`;
        if (x > latest) return `${path} (${x}) is more than a day after the deployment's clock (${now})`;
      }
      return null;
    }
    if (typeof x === "string") {
      const max = ID_KEYS.has(key) ? MAX_ID_CHARS : path === ".title" ? MAX_TITLE_CHARS : MAX_STRING_CHARS;
      return x.length > max ? `${path} is longer than ${max} characters (${x.length})` : null;
    }
    if (Array.isArray(x)) {
      if (x.length > MAX_ARRAY_ITEMS) return `${path} has more than ${MAX_ARRAY_ITEMS} items (${x.length})`;
      for (let i = 0; i < x.length; i++) {
        const e = walk(x[i], `${path}[${i}]`, key);
        if (e !== null) return e;
      }
      return null;
    }
    if (typeof x === "object" && x !== null) {
      for (const [k, val] of Object.entries(x)) {
        const e = walk(val, `${path}.${k}`, k);
        if (e !== null) return e;
      }
    }
    return null;
  };
  const e = walk(record, "", "");
  if (e !== null) return e.replace(/^\./, "");
  if (record.updatedAt < record.createdAt) {
    return `updatedAt (${record.updatedAt}) is before createdAt (${record.createdAt})`;
  }
  return null;
}
