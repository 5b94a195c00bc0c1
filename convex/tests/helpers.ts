// Test records built from tests/fixtures/full-record.json, which is byte for byte what serde_json
// writes (to_string_pretty) for a SessionExport with every optional field present.
import fullJson from "./fixtures/full-record.json";
import type { SessionRecord } from "../convex/sessions";

export const FULL = fullJson as SessionRecord;

/** The top-level fields record.rs omits when None / false / empty. */
export const OPTIONAL_FIELDS = [
  "projectWorktree",
  "contentHash",
  "revision",
  "worktreeChanges",
  "parentSessionId",
  "forkedFrom",
  "inherited",
  "reverted",
  "archivedAt",
  "deletedAt",
  "durationMs",
  "primaryAgent",
  "error",
  "incomplete",
  "children",
  "rollup",
  "todos",
  "messages",
  "truncated",
  "corrected",
  "redactions",
  "deletion",
] as const;

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** A deep copy of the full fixture record, with overrides. */
export function fullRecord(over: Partial<SessionRecord> = {}): SessionRecord {
  return { ...clone(FULL), ...over };
}

/** The fixture without any optional top-level field (a plain idle session), with overrides. */
export function minimalRecord(over: Partial<SessionRecord> = {}): SessionRecord {
  const r: Record<string, unknown> = clone(FULL);
  for (const k of OPTIONAL_FIELDS) delete r[k];
  r.endReason = "idle";
  return { ...(r as SessionRecord), ...over };
}

/** A stored document without its system fields. */
export function withoutSystemFields<T extends { _id: unknown; _creationTime: unknown }>(
  doc: T,
): Omit<T, "_id" | "_creationTime"> {
  const { _id, _creationTime, ...rest } = doc;
  return rest;
}

export const TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/** JSON clone (records go over the wire as JSON anyway). */
export const cloneJson = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;
