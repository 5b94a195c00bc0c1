// Totals over a range of UTC days, read from the aggregate tables that the ingest keeps up to
// date (see aggregates.ts). All internal queries.
//
// Arguments: `from` and `to` are inclusive UTC dates "YYYY-MM-DD" of the sessions' createdAt;
// `to` may not precede `from`, and the range may span at most MAX_RANGE_DAYS days. A query reads
// at most MAX_AGGREGATE_ROWS aggregate rows (days x devices, or days x models); a range needing
// more fails with ConvexError RANGE_TOO_LARGE (narrow the range, or pass deviceId).
import { ConvexError, v, type Infer } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalQuery, type QueryCtx } from "./_generated/server";
import type { errorNameCount, tokenUsage } from "./schema";
import { deviceNames } from "./devices";
import { parseDay } from "./sessions";

/** Longest range, in days (both ends included). */
export const MAX_RANGE_DAYS = 366;
/** Most aggregate rows one query reads. */
export const MAX_AGGREGATE_ROWS = 10_000;

type Tokens = Infer<typeof tokenUsage>;
type ErrorNameCount = Infer<typeof errorNameCount>;

const rangeArgs = { from: v.string(), to: v.string() };

function checkRange(from: string, to: string): void {
  const a = parseDay("from", from);
  const b = parseDay("to", to);
  if (b < a) throw new ConvexError({ code: "BAD_RANGE", message: `to (${to}) is before from (${from})` });
  const days = (b - a) / 86_400_000 + 1;
  if (days > MAX_RANGE_DAYS) {
    throw new ConvexError({
      code: "BAD_RANGE",
      message: `the range ${from}..${to} spans ${days} days; at most ${MAX_RANGE_DAYS} are allowed`,
    });
  }
}

function tooMany(what: string): never {
  throw new ConvexError({
    code: "RANGE_TOO_LARGE",
    message: `more than ${MAX_AGGREGATE_ROWS} ${what} rows in this range; narrow the range${what === "dailyTotals" ? " or pass deviceId" : ""}`,
  });
}

/** The dailyTotals rows of the range (of one device, or of all), at most MAX_AGGREGATE_ROWS. */
async function dailyRows(ctx: QueryCtx, from: string, to: string, deviceId: string | undefined) {
  checkRange(from, to);
  const q =
    deviceId === undefined
      ? ctx.db.query("dailyTotals").withIndex("by_day_deviceId", (q) => q.gte("day", from).lte("day", to))
      : ctx.db
          .query("dailyTotals")
          .withIndex("by_deviceId_day", (q) => q.eq("deviceId", deviceId).gte("day", from).lte("day", to));
  const rows = await q.take(MAX_AGGREGATE_ROWS + 1);
  if (rows.length > MAX_AGGREGATE_ROWS) tooMany("dailyTotals");
  return rows;
}

const zeroTokens = (): Tokens => ({ input: 0, output: 0, reasoning: 0, cacheRead: 0, cacheWrite: 0 });
function addTokens(into: Tokens, t: Tokens): void {
  into.input += t.input;
  into.output += t.output;
  into.reasoning += t.reasoning;
  into.cacheRead += t.cacheRead;
  into.cacheWrite += t.cacheWrite;
}

/** Totals of several dailyTotals rows. `todoCompletionRate` = todosCompleted / todosTotal, null when no todos. */
export interface Totals {
  sessions: number;
  messages: number;
  tokens: Tokens;
  cost: number;
  errors: number;
  todosTotal: number;
  todosCompleted: number;
  todoCompletionRate: number | null;
}

function sum(rows: Doc<"dailyTotals">[]): Totals {
  const t: Totals = {
    sessions: 0,
    messages: 0,
    tokens: zeroTokens(),
    cost: 0,
    errors: 0,
    todosTotal: 0,
    todosCompleted: 0,
    todoCompletionRate: null,
  };
  for (const r of rows) {
    t.sessions += r.sessions;
    t.messages += r.messages;
    addTokens(t.tokens, r.tokens);
    t.cost += r.cost;
    t.errors += r.errors;
    t.todosTotal += r.todosTotal;
    t.todosCompleted += r.todosCompleted;
  }
  t.todoCompletionRate = t.todosTotal > 0 ? t.todosCompleted / t.todosTotal : null;
  return t;
}

/**
 * Per-day totals over [from, to], of one device or of all devices together:
 * `{days: [{day, ...Totals}], total: Totals}`. `days` is ascending and lists only days with
 * sessions.
 */
export const daily = internalQuery({
  args: { ...rangeArgs, deviceId: v.optional(v.string()) },
  handler: async (ctx, { from, to, deviceId }) => {
    const rows = await dailyRows(ctx, from, to, deviceId);
    const byDay = new Map<string, Doc<"dailyTotals">[]>();
    for (const r of rows) byDay.set(r.day, [...(byDay.get(r.day) ?? []), r]);
    const days = [...byDay.keys()].sort().map((day) => ({ day, ...sum(byDay.get(day)!) }));
    return { days, total: sum(rows) };
  },
});

/**
 * Usage per provider and model over [from, to] (all devices):
 * `[{providerId, modelId, sessions, messages, tokens, cost}]`, highest cost first (ties by
 * providerId, modelId). `sessions` counts sessions whose `models` lists the model.
 */
export const byModel = internalQuery({
  args: rangeArgs,
  handler: async (ctx, { from, to }) => {
    checkRange(from, to);
    const rows = await ctx.db
      .query("modelDailyTotals")
      .withIndex("by_day_providerId_modelId", (q) => q.gte("day", from).lte("day", to))
      .take(MAX_AGGREGATE_ROWS + 1);
    if (rows.length > MAX_AGGREGATE_ROWS) tooMany("modelDailyTotals");
    const out = new Map<string, { providerId: string; modelId: string; sessions: number; messages: number; tokens: Tokens; cost: number }>();
    for (const r of rows) {
      const k = JSON.stringify([r.providerId, r.modelId]);
      let m = out.get(k);
      if (m === undefined) {
        m = { providerId: r.providerId, modelId: r.modelId, sessions: 0, messages: 0, tokens: zeroTokens(), cost: 0 };
        out.set(k, m);
      }
      m.sessions += r.sessions;
      m.messages += r.messages;
      addTokens(m.tokens, r.tokens);
      m.cost += r.cost;
    }
    return [...out.values()].sort(
      (a, b) =>
        b.cost - a.cost ||
        (a.providerId < b.providerId ? -1 : a.providerId > b.providerId ? 1 : 0) ||
        (a.modelId < b.modelId ? -1 : a.modelId > b.modelId ? 1 : 0),
    );
  },
});

/**
 * Failed sessions (endReason "error") over [from, to], optionally of one device, by error name:
 * `{errors, byName: [{name, sessions}]}`, most frequent first (ties by name). A failed record
 * without an `error` object counts under "(none)".
 */
export const failuresByName = internalQuery({
  args: { ...rangeArgs, deviceId: v.optional(v.string()) },
  handler: async (ctx, { from, to, deviceId }) => {
    const rows = await dailyRows(ctx, from, to, deviceId);
    const m = new Map<string, number>();
    let errors = 0;
    for (const r of rows) {
      errors += r.errors;
      for (const e of r.errorNames) m.set(e.name, (m.get(e.name) ?? 0) + e.sessions);
    }
    const byName: ErrorNameCount[] = [...m]
      .map(([name, sessions]) => ({ name, sessions }))
      .sort((a, b) => b.sessions - a.sessions || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { errors, byName };
  },
});

/**
 * Todo completion over [from, to], optionally of one device: `{todosTotal, todosCompleted, rate}`
 * summed over the sessions' todoStats; `rate` = todosCompleted / todosTotal, null when there are
 * no todos. Cancelled todos count in the total, not as completed.
 */
export const todoCompletion = internalQuery({
  args: { ...rangeArgs, deviceId: v.optional(v.string()) },
  handler: async (ctx, { from, to, deviceId }) => {
    const t = sum(await dailyRows(ctx, from, to, deviceId));
    return { todosTotal: t.todosTotal, todosCompleted: t.todosCompleted, rate: t.todoCompletionRate };
  },
});

/**
 * Totals per device over [from, to]: `[{deviceId, deviceName, ...Totals}]`, highest cost first
 * (ties by deviceId). `deviceName` is the name of the device bound to that deviceId (devices.ts),
 * null for rows no device is bound to (e.g. written with the legacy INGEST_TOKEN).
 */
export const perDevice = internalQuery({
  args: rangeArgs,
  handler: async (ctx, { from, to }) => {
    const rows = await dailyRows(ctx, from, to, undefined);
    const names = await deviceNames(ctx);
    const by = new Map<string, Doc<"dailyTotals">[]>();
    for (const r of rows) by.set(r.deviceId, [...(by.get(r.deviceId) ?? []), r]);
    return [...by]
      .map(([deviceId, rs]) => ({ deviceId, deviceName: names.get(deviceId) ?? null, ...sum(rs) }))
      .sort((a, b) => b.cost - a.cost || (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));
  },
});
