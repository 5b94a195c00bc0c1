// Upkeep of the `dailyTotals` and `modelDailyTotals` tables (helpers, no Convex functions).
//
// Every write to `sessions` (insert, replace, delete) goes through `AggregateDelta`: it subtracts
// the old document's contribution, adds the new one's, and `apply` writes the net change once per
// touched aggregate row, in the same transaction as the session write. So after any sequence of
// inserts, updates and deletes, each aggregate row equals the sum over the stored session rows of
// its key. A row whose `sessions` count drops to 0 is deleted.
//
// The key of a session is the UTC day of its `createdAt`: a session's whole usage counts on the
// day it was created, even if it went on past midnight.
//
// What a session counts (`counted`), so that every token and dollar is counted exactly once:
// - a top-level session counts itself and all its subagent sessions — its `rollup` when it has
//   one (whose `models` carries the children's per-model usage), else its own figures;
// - minus what a fork `inherited` (the copied prefix was spent in the session it was copied
//   from, which counts it);
// - a subagent session stored as its own row (`parentSessionId` set: the daemon's
//   `skip_subagent_sessions = false`) counts nothing: its parent's rollup already holds it.
//   So the totals are the same whether children are exported as rows or only rolled up.
// A reverted turn stays counted (its money was spent; see `reverted` in schema.ts).
import type { Infer } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import type { MutationCtx } from "./_generated/server";
import type { errorNameCount, modelUsage, sessionRecord, tokenUsage } from "./schema";

type SessionLike = Infer<typeof sessionRecord> | Doc<"sessions">;
type Tokens = Infer<typeof tokenUsage>;
type ModelUsage = Infer<typeof modelUsage>;
type ErrorNameCount = Infer<typeof errorNameCount>;

const DAY_MS = 86_400_000;

/** Name counted in `errorNames` for an endReason "error" record without an `error` object. */
export const NO_ERROR_NAME = "(none)";

/** "YYYY-MM-DD" (UTC) of an epoch-millisecond timestamp. */
export function utcDay(ms: number): string {
  return new Date(Math.floor(ms / DAY_MS) * DAY_MS).toISOString().slice(0, 10);
}

/** Epoch milliseconds of 00:00 UTC of "YYYY-MM-DD", or null when `day` is not such a date. */
export function dayStartMs(day: string): number | null {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) return null;
  const ms = Date.parse(`${day}T00:00:00.000Z`);
  // Date.parse accepts "2026-02-30" on some engines; a round trip catches it.
  if (!Number.isFinite(ms) || utcDay(ms) !== day) return null;
  return ms;
}

const zeroTokens = (): Tokens => ({ input: 0, output: 0, reasoning: 0, cacheRead: 0, cacheWrite: 0 });

function addTokens(into: Tokens, t: Tokens, sign: number): void {
  into.input += sign * t.input;
  into.output += sign * t.output;
  into.reasoning += sign * t.reasoning;
  into.cacheRead += sign * t.cacheRead;
  into.cacheWrite += sign * t.cacheWrite;
}

interface DailyDelta {
  day: string;
  deviceId: string;
  sessions: number;
  messages: number;
  tokens: Tokens;
  cost: number;
  errors: number;
  errorNames: Map<string, number>;
  todosTotal: number;
  todosCompleted: number;
}

interface ModelDelta {
  day: string;
  providerId: string;
  modelId: string;
  sessions: number;
  messages: number;
  tokens: Tokens;
  cost: number;
}

/** Adds `b` (a map of name -> count) times `sign` into a sorted, zero-free `errorNames` array. */
function mergeErrorNames(a: ErrorNameCount[], b: Map<string, number>, sign: number): ErrorNameCount[] {
  const m = new Map(a.map((e) => [e.name, e.sessions]));
  for (const [name, n] of b) m.set(name, (m.get(name) ?? 0) + sign * n);
  return [...m]
    .filter(([, n]) => n > 0)
    .sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))
    .map(([name, sessions]) => ({ name, sessions }));
}

/** What one session adds to the totals (see the top of this file). */
export interface Counted {
  messages: number;
  tokens: Tokens;
  cost: number;
  /** Per provider/model, net of what a fork inherited; models left with no message are dropped. */
  models: ModelUsage[];
}

/** What `s` adds to the totals; null for a subagent row (its parent's rollup counts it). */
export function counted(s: SessionLike): Counted | null {
  if (s.parentSessionId !== undefined) return null;
  const r = s.rollup;
  const tokens = { ...(r?.tokens ?? s.tokens) };
  let messages = r?.messageCount ?? s.messageCount;
  let cost = r?.cost ?? s.cost;
  const byModel = new Map<string, ModelUsage>();
  const addModels = (list: ModelUsage[], sign: number) => {
    for (const m of list) {
      const k = JSON.stringify([m.providerId, m.modelId]);
      let u = byModel.get(k);
      if (u === undefined) {
        u = { providerId: m.providerId, modelId: m.modelId, messages: 0, tokens: zeroTokens(), cost: 0 };
        byModel.set(k, u);
      }
      u.messages += sign * m.messages;
      addTokens(u.tokens, m.tokens, sign);
      u.cost += sign * m.cost;
    }
  };
  // Records of daemons before `rollup.models` carry only the session's own models.
  addModels(r?.models ?? s.models, 1);
  const i = s.inherited;
  if (i !== undefined) {
    messages -= i.messageCount;
    addTokens(tokens, i.tokens, -1);
    cost -= i.cost;
    addModels(i.models, -1);
  }
  const models = [...byModel.values()].filter((m) => m.messages > 0);
  return { messages, tokens, cost, models };
}

/** Net changes to the aggregate tables, accumulated in memory, then written by `apply`. */
export class AggregateDelta {
  private daily = new Map<string, DailyDelta>();
  private models = new Map<string, ModelDelta>();

  /** Adds (sign 1) or subtracts (sign -1) one session's contribution (`counted`). */
  add(s: SessionLike, sign: 1 | -1): void {
    const c = counted(s);
    if (c === null) return;
    const day = utcDay(s.createdAt);
    const dk = JSON.stringify([day, s.deviceId]);
    let d = this.daily.get(dk);
    if (d === undefined) {
      d = {
        day,
        deviceId: s.deviceId,
        sessions: 0,
        messages: 0,
        tokens: zeroTokens(),
        cost: 0,
        errors: 0,
        errorNames: new Map(),
        todosTotal: 0,
        todosCompleted: 0,
      };
      this.daily.set(dk, d);
    }
    d.sessions += sign;
    d.messages += sign * c.messages;
    addTokens(d.tokens, c.tokens, sign);
    d.cost += sign * c.cost;
    d.todosTotal += sign * s.todoStats.total;
    d.todosCompleted += sign * s.todoStats.completed;
    if (s.endReason === "error") {
      d.errors += sign;
      const name = s.error?.name ?? NO_ERROR_NAME;
      d.errorNames.set(name, (d.errorNames.get(name) ?? 0) + sign);
    }

    // `counted` lists each model once, so each counts one session of that model.
    for (const m of c.models) {
      const mk = JSON.stringify([day, m.providerId, m.modelId]);
      let md = this.models.get(mk);
      if (md === undefined) {
        md = { day, providerId: m.providerId, modelId: m.modelId, sessions: 0, messages: 0, tokens: zeroTokens(), cost: 0 };
        this.models.set(mk, md);
      }
      md.sessions += sign;
      md.messages += sign * m.messages;
      addTokens(md.tokens, m.tokens, sign);
      md.cost += sign * m.cost;
    }
  }

  /** Writes the accumulated changes: one index read and at most one write per touched row. */
  async apply(ctx: MutationCtx): Promise<void> {
    for (const d of this.daily.values()) {
      const row = await ctx.db
        .query("dailyTotals")
        .withIndex("by_day_deviceId", (q) => q.eq("day", d.day).eq("deviceId", d.deviceId))
        .unique();
      if (row === null) {
        // Nothing stored yet: only a net addition can create the row.
        if (d.sessions > 0) {
          await ctx.db.insert("dailyTotals", {
            day: d.day,
            deviceId: d.deviceId,
            sessions: d.sessions,
            messages: d.messages,
            tokens: d.tokens,
            cost: d.cost,
            errors: d.errors,
            errorNames: mergeErrorNames([], d.errorNames, 1),
            todosTotal: d.todosTotal,
            todosCompleted: d.todosCompleted,
          });
        }
        continue;
      }
      const sessions = row.sessions + d.sessions;
      if (sessions <= 0) {
        await ctx.db.delete("dailyTotals", row._id);
        continue;
      }
      const tokens = { ...row.tokens };
      addTokens(tokens, d.tokens, 1);
      await ctx.db.patch("dailyTotals", row._id, {
        sessions,
        messages: row.messages + d.messages,
        tokens,
        cost: row.cost + d.cost,
        errors: row.errors + d.errors,
        errorNames: mergeErrorNames(row.errorNames, d.errorNames, 1),
        todosTotal: row.todosTotal + d.todosTotal,
        todosCompleted: row.todosCompleted + d.todosCompleted,
      });
    }
    for (const m of this.models.values()) {
      const row = await ctx.db
        .query("modelDailyTotals")
        .withIndex("by_day_providerId_modelId", (q) =>
          q.eq("day", m.day).eq("providerId", m.providerId).eq("modelId", m.modelId),
        )
        .unique();
      if (row === null) {
        if (m.sessions > 0) await ctx.db.insert("modelDailyTotals", m);
        continue;
      }
      const sessions = row.sessions + m.sessions;
      if (sessions <= 0) {
        await ctx.db.delete("modelDailyTotals", row._id);
        continue;
      }
      const tokens = { ...row.tokens };
      addTokens(tokens, m.tokens, 1);
      await ctx.db.patch("modelDailyTotals", row._id, {
        sessions,
        messages: row.messages + m.messages,
        tokens,
        cost: row.cost + m.cost,
      });
    }
    this.daily.clear();
    this.models.clear();
  }
}
