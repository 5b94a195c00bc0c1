// The read side (sessions:* paginated queries, totals:*), the aggregate tables' invariant and the
// retention job, on a seeded dataset. Expected values are computed here from the seed records with
// plain filters and sums, never by calling the code under test.
/// <reference types="vite/client" />
import { convexTest } from "convex-test";
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { internal } from "../convex/_generated/api";
import schema from "../convex/schema";
import type { SessionRecord } from "../convex/sessions";
import { TOKEN, cloneJson, fullRecord, minimalRecord } from "./helpers";

const modules = import.meta.glob("../convex/**/*.*s");

const saved: Record<string, string | undefined> = {};
beforeEach(() => {
  for (const k of ["INGEST_TOKEN", "ALLOW_LEGACY_INGEST_TOKEN", "RETENTION_DAYS"]) saved[k] = process.env[k];
  process.env.INGEST_TOKEN = TOKEN;
  process.env.ALLOW_LEGACY_INGEST_TOKEN = "1";
  delete process.env.RETENTION_DAYS;
});
afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  vi.useRealTimers();
});

const DEV_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DEV_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const DAY = 86_400_000;
const D1 = Date.UTC(2026, 2, 1); // 2026-03-01
const D2 = Date.UTC(2026, 2, 2);
const D5 = Date.UTC(2026, 2, 5);
const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const zeroTok = () => ({ input: 0, output: 0, reasoning: 0, cacheRead: 0, cacheWrite: 0 });

type Model = SessionRecord["models"][number];
const model = (providerId: string, modelId: string, messages: number, input: number, output: number, cost: number): Model => ({
  providerId,
  modelId,
  messages,
  tokens: { input, output, reasoning: messages, cacheRead: 10 * messages, cacheWrite: 0 },
  cost,
});

interface Spec {
  id: string;
  dev: string;
  proj: string;
  at: number;
  end?: "idle" | "error" | "deleted";
  err?: string;
  parent?: string;
  models: Model[];
  todos?: [number, number];
}

// createdAt values are distinct, so "newest first" has one right answer.
const SPECS: Spec[] = [
  { id: "ses_01", dev: DEV_A, proj: "p1", at: D1 + 1_000, models: [model("anthropic", "claude", 3, 100, 10, 0.5)], todos: [4, 2] },
  { id: "ses_02", dev: DEV_A, proj: "p1", at: D1 + 5_000, end: "error", err: "APIError", models: [model("openai", "gpt", 1, 50, 5, 0.25)] },
  { id: "ses_03", dev: DEV_B, proj: "p2", at: D1 + 3_000, models: [model("anthropic", "claude", 2, 70, 7, 0.125), model("openai", "gpt", 1, 30, 3, 0.0625)], todos: [2, 2] },
  { id: "ses_04", dev: DEV_A, proj: "p2", at: D1 + DAY - 1, end: "deleted", models: [] },
  { id: "ses_05", dev: DEV_A, proj: "p1", at: D2, end: "error", err: "ProviderAuthError", models: [model("anthropic", "claude", 1, 10, 1, 0.03125)], todos: [3, 0] },
  { id: "ses_06", dev: DEV_B, proj: "p1", at: D2 + 7_000, parent: "ses_05", models: [model("anthropic", "haiku", 4, 40, 4, 0.01)] },
  { id: "ses_07", dev: DEV_B, proj: "p1", at: D2 + 2_000, parent: "ses_05", end: "error", err: "APIError", models: [model("anthropic", "haiku", 2, 20, 2, 0.02)] },
  { id: "ses_08", dev: DEV_A, proj: "p1", at: D2 + 9_000, parent: "ses_05", models: [model("openai", "gpt", 5, 500, 50, 1.5)], todos: [1, 1] },
  { id: "ses_09", dev: DEV_B, proj: "p2", at: D5 + 4_000, end: "error", models: [model("openai", "gpt", 2, 20, 2, 0.2)] },
  { id: "ses_10", dev: DEV_A, proj: "p3", at: D5 + 8_000, end: "error", err: "APIError", models: [model("anthropic", "claude", 6, 60, 6, 0.75)], todos: [5, 3] },
];

function recordOf(s: Spec): SessionRecord {
  const base = fullRecord();
  const r: SessionRecord = {
    ...base,
    sessionId: s.id,
    deviceId: s.dev,
    projectId: s.proj,
    createdAt: s.at,
    updatedAt: s.at + 60_000,
    exportedAt: s.at + 61_000,
    // Every timestamp near createdAt, so the records are valid under a fake clock soon after it.
    revision: s.at + 61_000,
    archivedAt: s.at + 30_000,
    deletedAt: s.at + 61_000,
    messages: base.messages?.map((m) => ({ ...m, createdAt: s.at + 1_000, completedAt: s.at + 2_000 })),
    title: `title of ${s.id}`,
    messageCount: s.models.reduce((n, m) => n + m.messages, 0) + 1,
    models: s.models,
    tokens: {
      input: s.models.reduce((n, m) => n + m.tokens.input, 0),
      output: s.models.reduce((n, m) => n + m.tokens.output, 0),
      reasoning: s.models.reduce((n, m) => n + m.tokens.reasoning, 0),
      cacheRead: s.models.reduce((n, m) => n + m.tokens.cacheRead, 0),
      cacheWrite: 0,
    },
    cost: s.models.reduce((n, m) => n + m.cost, 0),
    endReason: s.end ?? "idle",
    todoStats: { total: s.todos?.[0] ?? 0, completed: s.todos?.[1] ?? 0, cancelled: 0, pending: 0, inProgress: 0 },
  };
  delete r.error;
  delete r.parentSessionId;
  delete r.forkedFrom;
  delete r.inherited;
  delete r.reverted;
  delete r.children;
  delete r.rollup;
  if (s.err !== undefined) r.error = { name: s.err, message: `${s.err} happened` };
  if (s.parent !== undefined) r.parentSessionId = s.parent;
  return r;
}

/** Sums `models` lists per provider/model, sorted by that key (as the daemon's rollup does). */
function mergeModels(lists: Model[][]): Model[] {
  const by = new Map<string, Model>();
  for (const m of lists.flat()) {
    const k = JSON.stringify([m.providerId, m.modelId]);
    const e = by.get(k) ?? { providerId: m.providerId, modelId: m.modelId, messages: 0, tokens: zeroTok(), cost: 0 };
    e.messages += m.messages;
    for (const f of Object.keys(e.tokens) as Array<keyof typeof e.tokens>) e.tokens[f] += m.tokens[f];
    e.cost += m.cost;
    by.set(k, e);
  }
  return [...by.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, m]) => m);
}

/** What the daemon sends for a session with subagents: their summaries and the rollup over all. */
function withChildren(parent: SessionRecord, children: SessionRecord[]): SessionRecord {
  if (children.length === 0) return parent;
  const all = [parent, ...children];
  const tokens = zeroTok();
  for (const r of all) for (const k of Object.keys(tokens) as Array<keyof typeof tokens>) tokens[k] += r.tokens[k];
  return {
    ...parent,
    children: children.map((c) => ({
      sessionId: c.sessionId,
      title: c.title,
      messageCount: c.messageCount,
      tokens: c.tokens,
      cost: c.cost,
      models: c.models,
    })),
    rollup: {
      sessions: all.length,
      messageCount: all.reduce((n, r) => n + r.messageCount, 0),
      tokens,
      cost: all.reduce((n, r) => n + r.cost, 0),
      models: mergeModels(all.map((r) => r.models)),
      tools: [],
      skills: [],
    },
  };
}

/** Each session's own figures (no rollup), as the specs say. */
const OWN = SPECS.map(recordOf);
const RECORDS = OWN.map((r) => withChildren(r, OWN.filter((c) => c.parentSessionId === r.sessionId)));

function setup() {
  const t = convexTest(schema, modules);
  const ingest = async (records: unknown[]) => {
    const r = await t.fetch("/ingest", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify({ sessions: records }),
    });
    expect(r.status).toBe(200);
    return ((await r.json()) as { results: Array<{ action: string }> }).results;
  };
  return { t, ingest };
}

async function seeded() {
  const s = setup();
  // Two batches in an order unrelated to createdAt.
  await s.ingest(cloneJson(RECORDS.filter((_, i) => i % 2 === 1)));
  await s.ingest(cloneJson(RECORDS.filter((_, i) => i % 2 === 0)));
  return s;
}

const newestFirst = (rs: SessionRecord[]) => [...rs].sort((a, b) => b.createdAt - a.createdAt).map((r) => r.sessionId);

/** Pages through a paginated query with `numItems` per page and returns every sessionId, plus the page count. */
async function pageAll(
  run: (paginationOpts: { numItems: number; cursor: string | null }) => Promise<{ page: Array<Record<string, unknown>>; isDone: boolean; continueCursor: string }>,
  numItems: number,
) {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  for (;;) {
    const r = await run({ numItems, cursor });
    pages += 1;
    for (const d of r.page) {
      expect(d).not.toHaveProperty("messages");
      expect(d).not.toHaveProperty("todos");
      ids.push(d.sessionId as string);
    }
    if (r.isDone) break;
    cursor = r.continueCursor;
    if (pages > 100) throw new Error("pagination does not end");
  }
  return { ids, pages };
}

describe("paginated session queries on the seeded dataset", () => {
  test("recent, byDevice, byProject: newest first, across pages", async () => {
    const { t } = await seeded();
    const all = await pageAll((p) => t.query(internal.sessions.recent, { paginationOpts: p }), 3);
    expect(all.ids).toEqual(newestFirst(RECORDS));
    expect(all.ids).toEqual(["ses_10", "ses_09", "ses_08", "ses_06", "ses_07", "ses_05", "ses_04", "ses_02", "ses_03", "ses_01"]);
    expect(all.pages).toBeGreaterThanOrEqual(4);
    for (const dev of [DEV_A, DEV_B, "nobody"]) {
      const got = await pageAll((p) => t.query(internal.sessions.byDevice, { deviceId: dev, paginationOpts: p }), 2);
      expect(got.ids).toEqual(newestFirst(RECORDS.filter((r) => r.deviceId === dev)));
    }
    for (const proj of ["p1", "p2", "p3", "p9"]) {
      const got = await pageAll((p) => t.query(internal.sessions.byProject, { projectId: proj, paginationOpts: p }), 2);
      expect(got.ids).toEqual(newestFirst(RECORDS.filter((r) => r.projectId === proj)));
    }
  });

  test("byDay: the UTC day's sessions, optionally of one device; ends of the day included/excluded", async () => {
    const { t } = await seeded();
    for (const day of ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-05"]) {
      const got = await pageAll((p) => t.query(internal.sessions.byDay, { day, paginationOpts: p }), 2);
      expect(got.ids).toEqual(newestFirst(RECORDS.filter((r) => dayOf(r.createdAt) === day)));
      for (const dev of [DEV_A, DEV_B]) {
        const one = await pageAll((p) => t.query(internal.sessions.byDay, { day, deviceId: dev, paginationOpts: p }), 5);
        expect(one.ids).toEqual(newestFirst(RECORDS.filter((r) => dayOf(r.createdAt) === day && r.deviceId === dev)));
      }
    }
    // ses_04 is at 23:59:59.999 of 03-01, ses_05 at 00:00 of 03-02.
    expect((await t.query(internal.sessions.byDay, { day: "2026-03-01", paginationOpts: { numItems: 1, cursor: null } })).page[0].sessionId).toBe("ses_04");
    const d2 = await pageAll((p) => t.query(internal.sessions.byDay, { day: "2026-03-02", paginationOpts: p }), 10);
    expect(d2.ids.at(-1)).toBe("ses_05");
  });

  test("children: the subagent sessions, oldest first", async () => {
    const { t } = await seeded();
    const got = await pageAll((p) => t.query(internal.sessions.children, { sessionId: "ses_05", paginationOpts: p }), 2);
    const expected = RECORDS.filter((r) => r.parentSessionId === "ses_05").sort((a, b) => a.createdAt - b.createdAt).map((r) => r.sessionId);
    expect(got.ids).toEqual(expected);
    expect(got.ids).toEqual(["ses_07", "ses_06", "ses_08"]);
    expect((await pageAll((p) => t.query(internal.sessions.children, { sessionId: "ses_01", paginationOpts: p }), 2)).ids).toEqual([]);
  });

  test("failures: endReason error, newest first, optionally by error name", async () => {
    const { t } = await seeded();
    const errs = RECORDS.filter((r) => r.endReason === "error");
    const all = await pageAll((p) => t.query(internal.sessions.failures, { paginationOpts: p }), 2);
    expect(all.ids).toEqual(newestFirst(errs));
    for (const name of ["APIError", "ProviderAuthError", "Nope"]) {
      const got = await pageAll((p) => t.query(internal.sessions.failures, { errorName: name, paginationOpts: p }), 1);
      expect(got.ids).toEqual(newestFirst(errs.filter((r) => r.error?.name === name)));
    }
    expect((await pageAll((p) => t.query(internal.sessions.failures, { errorName: "APIError", paginationOpts: p }), 10)).ids).toEqual([
      "ses_10",
      "ses_07",
      "ses_02",
    ]);
  });

  test("a page holds at most 256 items; summaries drop messages and todos, get keeps them", async () => {
    const s = setup();
    const many = Array.from({ length: 300 }, (_, i) => minimalRecord({ sessionId: `ses_${i}`, createdAt: D1 + i }));
    await s.ingest(many.slice(0, 150));
    await s.ingest(many.slice(150));
    const page = await s.t.query(internal.sessions.recent, { paginationOpts: { numItems: 1000, cursor: null } });
    expect(page.page).toHaveLength(256);
    expect(page.isDone).toBe(false);
    await s.ingest([fullRecord({ sessionId: "ses_full", createdAt: D5 })]);
    const first = (await s.t.query(internal.sessions.recent, { paginationOpts: { numItems: 1, cursor: null } })).page[0];
    expect(first.sessionId).toBe("ses_full");
    const { messages: _m, todos: _t, ...rest } = fullRecord({ sessionId: "ses_full", createdAt: D5 });
    // Plus the device's name: null, as no device is bound to the legacy-written deviceId.
    expect({ ...first, _id: undefined, _creationTime: undefined }).toEqual({ ...rest, deviceName: null, _id: undefined, _creationTime: undefined });
    const doc = await s.t.query(internal.sessions.get, { sessionId: "ses_full" });
    expect(doc!.messages).toEqual(fullRecord().messages);
    expect(doc!.todos).toEqual(fullRecord().todos);
  });

  test("a malformed day is BAD_DAY", async () => {
    const { t } = setup();
    for (const day of ["2026-3-1", "2026-02-30", "yesterday", ""]) {
      const e = await t.query(internal.sessions.byDay, { day, paginationOpts: { numItems: 1, cursor: null } }).catch((x) => x);
      expect(e).toBeInstanceOf(ConvexError);
      expect((e as ConvexError<any>).data.code).toBe("BAD_DAY");
    }
  });
});

// ---- independent totals over records ----
const round = (x: number) => Math.round(x * 1e9) / 1e9;

/**
 * The totals of the top-level sessions `tops`: sessions, errors and todos are theirs; messages,
 * tokens and cost are the sums of each session's own figures over them and their subagents
 * (`OWN`, every session once).
 */
function expectedTotals(tops: SessionRecord[]) {
  const ids = new Set(tops.map((r) => r.sessionId));
  const spent = OWN.filter((r) => ids.has(r.sessionId) || (r.parentSessionId !== undefined && ids.has(r.parentSessionId)));
  const tokens = zeroTok();
  for (const r of spent) for (const k of Object.keys(tokens) as Array<keyof typeof tokens>) tokens[k] += r.tokens[k];
  const todosTotal = tops.reduce((n, r) => n + r.todoStats.total, 0);
  const todosCompleted = tops.reduce((n, r) => n + r.todoStats.completed, 0);
  return {
    sessions: tops.length,
    messages: spent.reduce((n, r) => n + r.messageCount, 0),
    tokens,
    cost: round(spent.reduce((n, r) => n + r.cost, 0)),
    errors: tops.filter((r) => r.endReason === "error").length,
    todosTotal,
    todosCompleted,
    todoCompletionRate: todosTotal > 0 ? todosCompleted / todosTotal : null,
  };
}

const roundCosts = <T>(x: T): T =>
  JSON.parse(JSON.stringify(x), (k, v) => (k === "cost" && typeof v === "number" ? round(v) : v)) as T;

describe("totals on the seeded dataset", () => {
  const inRange = (r: SessionRecord, from: string, to: string) => dayOf(r.createdAt) >= from && dayOf(r.createdAt) <= to;

  test("daily: per day and in total, all devices and per device", async () => {
    const { t } = await seeded();
    for (const [from, to] of [["2026-03-01", "2026-03-31"], ["2026-03-02", "2026-03-02"], ["2026-03-03", "2026-03-04"], ["2025-03-06", "2026-03-06"]]) {
      for (const dev of [undefined, DEV_A, DEV_B]) {
        const rs = RECORDS.filter((r) => r.parentSessionId === undefined && inRange(r, from, to) && (dev === undefined || r.deviceId === dev));
        const days = [...new Set(rs.map((r) => dayOf(r.createdAt)))].sort();
        const got = await t.query(internal.totals.daily, { from, to, ...(dev ? { deviceId: dev } : {}) });
        expect(roundCosts(got)).toEqual({
          days: days.map((day) => ({ day, ...expectedTotals(rs.filter((r) => dayOf(r.createdAt) === day)) })),
          total: expectedTotals(rs),
        });
      }
    }
    // Hand-checked values: 2026-03-01 has ses_01..ses_04, costing 0.5 + 0.25 + 0.1875 + 0;
    // 2026-03-02 has ses_05 and its three subagents (stored as rows and rolled up into ses_05,
    // counted once): 0.03125 + 0.01 + 0.02 + 1.5.
    const d1 = await t.query(internal.totals.daily, { from: "2026-03-01", to: "2026-03-01" });
    expect(d1.total.sessions).toBe(4);
    expect(d1.total.cost).toBe(0.9375);
    expect(d1.total.errors).toBe(1);
    expect(d1.total.todoCompletionRate).toBe(4 / 6);
    const d2 = await t.query(internal.totals.daily, { from: "2026-03-02", to: "2026-03-02" });
    expect(d2.total.sessions).toBe(1);
    expect(d2.total.cost).toBe(1.56125);
  });

  test("byModel: per provider/model over the range, highest cost first", async () => {
    const { t } = await seeded();
    for (const [from, to] of [["2026-03-01", "2026-03-31"], ["2026-03-01", "2026-03-01"], ["2026-03-05", "2026-03-05"], ["2026-04-01", "2026-04-30"]]) {
      const byKey = new Map<string, { providerId: string; modelId: string; sessions: number; messages: number; tokens: ReturnType<typeof zeroTok>; cost: number }>();
      for (const r of RECORDS.filter((r) => r.parentSessionId === undefined && inRange(r, from, to))) {
        // The session and its subagents, each once.
        const own = OWN.filter((o) => o.sessionId === r.sessionId || o.parentSessionId === r.sessionId);
        for (const m of mergeModels(own.map((o) => o.models))) {
          const k = `${m.providerId}/${m.modelId}`;
          const e = byKey.get(k) ?? { providerId: m.providerId, modelId: m.modelId, sessions: 0, messages: 0, tokens: zeroTok(), cost: 0 };
          e.sessions += 1;
          e.messages += m.messages;
          for (const f of Object.keys(e.tokens) as Array<keyof typeof e.tokens>) e.tokens[f] += m.tokens[f];
          e.cost += m.cost;
          byKey.set(k, e);
        }
      }
      const expected = [...byKey.values()].sort((a, b) => b.cost - a.cost);
      expect(roundCosts(await t.query(internal.totals.byModel, { from, to }))).toEqual(roundCosts(expected));
    }
    const month = await t.query(internal.totals.byModel, { from: "2026-03-01", to: "2026-03-31" });
    expect(month.map((m) => `${m.providerId}/${m.modelId}:${m.sessions}`)).toEqual([
      "openai/gpt:4",
      "anthropic/claude:4",
      "anthropic/haiku:1",
    ]);
  });

  test("failuresByName and todoCompletion", async () => {
    const { t } = await seeded();
    for (const [from, to] of [["2026-03-01", "2026-03-31"], ["2026-03-02", "2026-03-05"], ["2026-03-03", "2026-03-03"]]) {
      for (const dev of [undefined, DEV_A, DEV_B]) {
        // Top-level sessions: a subagent row counts in its parent.
        const rs = RECORDS.filter((r) => r.parentSessionId === undefined && inRange(r, from, to) && (dev === undefined || r.deviceId === dev));
        const errs = rs.filter((r) => r.endReason === "error");
        const counts = new Map<string, number>();
        for (const r of errs) counts.set(r.error?.name ?? "(none)", (counts.get(r.error?.name ?? "(none)") ?? 0) + 1);
        const byName = [...counts].map(([name, sessions]) => ({ name, sessions })).sort((a, b) => b.sessions - a.sessions || a.name.localeCompare(b.name));
        const args = { from, to, ...(dev ? { deviceId: dev } : {}) };
        expect(await t.query(internal.totals.failuresByName, args)).toEqual({ errors: errs.length, byName });
        const total = rs.reduce((n, r) => n + r.todoStats.total, 0);
        const done = rs.reduce((n, r) => n + r.todoStats.completed, 0);
        expect(await t.query(internal.totals.todoCompletion, args)).toEqual({
          todosTotal: total,
          todosCompleted: done,
          rate: total > 0 ? done / total : null,
        });
      }
    }
    expect(await t.query(internal.totals.failuresByName, { from: "2026-03-01", to: "2026-03-31" })).toEqual({
      errors: 4,
      byName: [
        { name: "APIError", sessions: 2 },
        { name: "(none)", sessions: 1 },
        { name: "ProviderAuthError", sessions: 1 },
      ],
    });
  });

  test("range checks: BAD_DAY, BAD_RANGE (reversed, over 366 days); 366 days is allowed", async () => {
    const { t } = await seeded();
    const code = (p: Promise<unknown>) => p.then(() => "ok", (e) => (e instanceof ConvexError ? (e.data as any).code : String(e)));
    expect(await code(t.query(internal.totals.daily, { from: "2026-03-02", to: "2026-03-01" }))).toBe("BAD_RANGE");
    expect(await code(t.query(internal.totals.daily, { from: "2025-01-01", to: "2026-01-02" }))).toBe("BAD_RANGE"); // 367 days
    expect(await code(t.query(internal.totals.daily, { from: "2025-01-01", to: "2026-01-01" }))).toBe("ok"); // 366 days
    expect(await code(t.query(internal.totals.byModel, { from: "2024-01-01", to: "2024-12-31" }))).toBe("ok"); // 366 days (leap year)
    expect(await code(t.query(internal.totals.byModel, { from: "2024-01-01", to: "2025-01-01" }))).toBe("BAD_RANGE");
    expect(await code(t.query(internal.totals.todoCompletion, { from: "2026-13-01", to: "2026-13-02" }))).toBe("BAD_DAY");
    expect(await code(t.query(internal.totals.failuresByName, { from: "2026-03-01", to: "tomorrow" }))).toBe("BAD_DAY");
  });

  test("more than 10000 aggregate rows in a range is RANGE_TOO_LARGE; a deviceId narrows it", async () => {
    const { t } = setup();
    await t.run(async (ctx) => {
      for (let i = 0; i <= 10_000; i++) {
        await ctx.db.insert("dailyTotals", {
          day: "2026-03-01",
          deviceId: `dev${i}`,
          sessions: 1,
          messages: 1,
          tokens: zeroTok(),
          cost: 0,
          errors: 0,
          errorNames: [],
          todosTotal: 0,
          todosCompleted: 0,
        });
      }
    });
    const e = await t.query(internal.totals.daily, { from: "2026-03-01", to: "2026-03-01" }).catch((x) => x);
    expect((e as ConvexError<any>).data.code).toBe("RANGE_TOO_LARGE");
    expect((await t.query(internal.totals.daily, { from: "2026-03-01", to: "2026-03-01", deviceId: "dev7" })).total.sessions).toBe(1);
  }, 30_000);
});

// ---- every token and dollar counted once ----
describe("children and forks are counted once", () => {
  const P = D2 + 100_000;
  const own = (id: string, models: Model[], over: Partial<SessionRecord> = {}) =>
    recordOf({ id, dev: DEV_A, proj: "p9", at: P, models, ...(over.parentSessionId ? { parent: over.parentSessionId } : {}) });
  const parentOwn = own("ses_p", [model("anthropic", "claude", 2, 100, 10, 0.4)]);
  const kids = [
    own("ses_k1", [model("anthropic", "haiku", 3, 30, 3, 0.03)], { parentSessionId: "ses_p" }),
    own("ses_k2", [model("anthropic", "claude", 1, 10, 1, 0.1), model("openai", "gpt", 1, 5, 1, 0.05)], { parentSessionId: "ses_p" }),
  ];
  const parent = withChildren(parentOwn, kids);
  const totals = async (t: ReturnType<typeof convexTest>) => ({
    daily: await t.query(internal.totals.daily, { from: "2026-03-02", to: "2026-03-02" }),
    byModel: await t.query(internal.totals.byModel, { from: "2026-03-02", to: "2026-03-02" }),
  });

  test("a session's subagents count once, whether stored as rows or only rolled up", async () => {
    const rolledUp = setup();
    await rolledUp.ingest([parent]);
    const asRows = setup();
    await asRows.ingest([...kids, parent]);
    const a = await totals(rolledUp.t);
    expect(roundCosts(await totals(asRows.t))).toEqual(roundCosts(a));
    // The sums of each session's own figures, computed here.
    expect(a.daily.total.sessions).toBe(1);
    expect(a.daily.total.messages).toBe(parentOwn.messageCount + kids[0].messageCount + kids[1].messageCount);
    expect(round(a.daily.total.cost)).toBe(0.58);
    expect(a.byModel.map((m) => `${m.providerId}/${m.modelId}:${m.sessions}:${m.messages}:${round(m.cost)}`)).toEqual([
      "anthropic/claude:1:3:0.5",
      "openai/gpt:1:1:0.05",
      "anthropic/haiku:1:3:0.03",
    ]);
    // Stored before its parent, a subagent row counts nothing until the parent arrives.
    const early = setup();
    await early.ingest([kids[0]]);
    expect((await early.t.query(internal.totals.daily, { from: "2026-03-02", to: "2026-03-02" })).days).toEqual([]);
  });

  test("a fork's copied prefix counts once across the original and the fork", async () => {
    const { t, ingest } = setup();
    const original = own("ses_o", [model("anthropic", "claude", 2, 100, 10, 0.4)]);
    // The fork copied the original's first turn (1 message, 0.15) and ran one more (0.25, on gpt).
    const copied = model("anthropic", "claude", 1, 40, 4, 0.15);
    const fork = {
      ...own("ses_f", [copied, model("openai", "gpt", 1, 20, 2, 0.25)]),
      forkedFrom: "ses_o",
      inherited: { messageCount: 1, tokens: copied.tokens, cost: 0.15, models: [copied] },
    };
    await ingest([original, fork]);
    const { daily, byModel } = await totals(t);
    expect(daily.total.sessions).toBe(2);
    expect(round(daily.total.cost)).toBe(0.65);
    expect(daily.total.messages).toBe(original.messageCount + fork.messageCount - 1);
    expect(daily.total.tokens.input).toBe(100 + 40 + 20 - 40);
    // The fork used claude only through the copy: one claude session, one gpt session.
    expect(byModel.map((m) => `${m.providerId}/${m.modelId}:${m.sessions}:${m.messages}:${round(m.cost)}`)).toEqual([
      "anthropic/claude:1:2:0.4",
      "openai/gpt:1:1:0.25",
    ]);
    await checkAggregates(t);
  });

  test("children lists the rolled-up subagents when they are not stored as rows", async () => {
    const { t, ingest } = setup();
    await ingest([parent]);
    const page = await t.query(internal.sessions.children, { sessionId: "ses_p", paginationOpts: { numItems: 10, cursor: null } });
    expect(page.isDone).toBe(true);
    expect(page.page).toEqual(
      parent.children!.map((c) => ({ ...c, parentSessionId: "ses_p", summaryOnly: true })),
    );
    // Stored as rows, the rows are listed.
    await ingest(kids);
    const rows = await t.query(internal.sessions.children, { sessionId: "ses_p", paginationOpts: { numItems: 10, cursor: null } });
    expect(rows.page.map((d) => d.sessionId)).toEqual(["ses_k1", "ses_k2"]);
    expect(rows.page.every((d) => !("summaryOnly" in d))).toBe(true);
    // An unknown session has none.
    const none = await t.query(internal.sessions.children, { sessionId: "ses_x", paginationOpts: { numItems: 10, cursor: null } });
    expect(none.page).toEqual([]);
  });
});

// ---- aggregates == sums over the stored rows ----
async function checkAggregates(t: ReturnType<typeof convexTest>) {
  const { rows, daily, models } = await t.run(async (ctx) => ({
    rows: await ctx.db.query("sessions").collect(),
    daily: await ctx.db.query("dailyTotals").collect(),
    models: await ctx.db.query("modelDailyTotals").collect(),
  }));
  const expDaily = new Map<string, any>();
  const expModels = new Map<string, any>();
  for (const r of rows) {
    // The documented rule (schema.ts, aggregates.ts): a subagent row counts in its parent's
    // rollup; a top-level row counts its rollup (or itself) minus what a fork inherited.
    if (r.parentSessionId !== undefined) continue;
    const day = dayOf(r.createdAt);
    const dk = `${day}|${r.deviceId}`;
    const d = expDaily.get(dk) ?? { day, deviceId: r.deviceId, sessions: 0, messages: 0, tokens: zeroTok(), cost: 0, errors: 0, names: {} as Record<string, number>, todosTotal: 0, todosCompleted: 0 };
    const spent = r.rollup ?? { messageCount: r.messageCount, tokens: r.tokens, cost: r.cost };
    d.sessions += 1;
    d.messages += spent.messageCount - (r.inherited?.messageCount ?? 0);
    for (const k of Object.keys(d.tokens)) d.tokens[k] += (spent.tokens as any)[k] - ((r.inherited?.tokens as any)?.[k] ?? 0);
    d.cost += spent.cost - (r.inherited?.cost ?? 0);
    if (r.endReason === "error") {
      d.errors += 1;
      const n = r.error?.name ?? "(none)";
      d.names[n] = (d.names[n] ?? 0) + 1;
    }
    d.todosTotal += r.todoStats.total;
    d.todosCompleted += r.todoStats.completed;
    expDaily.set(dk, d);
    const net = new Map<string, any>();
    const addModel = (m: any, sign: number) => {
      const mk = `${day}|${m.providerId}|${m.modelId}`;
      const e = net.get(mk) ?? { day, providerId: m.providerId, modelId: m.modelId, messages: 0, tokens: zeroTok(), cost: 0 };
      e.messages += sign * m.messages;
      for (const k of Object.keys(e.tokens)) e.tokens[k] += sign * (m.tokens as any)[k];
      e.cost += sign * m.cost;
      net.set(mk, e);
    };
    for (const m of r.rollup?.models ?? r.models) addModel(m, 1);
    for (const m of r.inherited?.models ?? []) addModel(m, -1);
    for (const [mk, m] of net) {
      if (m.messages <= 0) continue;
      const e = expModels.get(mk) ?? { day, providerId: m.providerId, modelId: m.modelId, sessions: 0, messages: 0, tokens: zeroTok(), cost: 0 };
      e.sessions += 1;
      e.messages += m.messages;
      for (const k of Object.keys(e.tokens)) e.tokens[k] += m.tokens[k];
      e.cost += m.cost;
      expModels.set(mk, e);
    }
  }
  const strip = ({ _id, _creationTime, ...rest }: any) => rest;
  const sortBy = (f: (x: any) => string) => (a: any, b: any) => (f(a) < f(b) ? -1 : f(a) > f(b) ? 1 : 0);
  const gotDaily = daily.map(strip).sort(sortBy((x) => `${x.day}|${x.deviceId}`));
  const wantDaily = [...expDaily.values()]
    .map(({ names, ...d }) => ({
      ...d,
      errorNames: Object.keys(names).sort().map((name) => ({ name, sessions: names[name] })),
    }))
    .sort(sortBy((x) => `${x.day}|${x.deviceId}`));
  expect(roundCosts(gotDaily)).toEqual(roundCosts(wantDaily));
  const gotModels = models.map(strip).sort(sortBy((x) => `${x.day}|${x.providerId}|${x.modelId}`));
  const wantModels = [...expModels.values()].sort(sortBy((x) => `${x.day}|${x.providerId}|${x.modelId}`));
  expect(roundCosts(gotModels)).toEqual(roundCosts(wantModels));
  return rows.length;
}

/** Deterministic PRNG (mulberry32). */
function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

describe("aggregate tables", () => {
  test("equal the sums over the stored sessions after random inserts, updates, stale/unchanged/conflicting records and retention deletes", async () => {
    vi.useFakeTimers();
    vi.setSystemTime(D5 + DAY);
    const { t, ingest } = setup();
    const rand = rng(42);
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
    const models = [model("a", "m1", 1, 10, 1, 0.1), model("a", "m2", 2, 20, 2, 0.3), model("b", "m1", 3, 30, 3, 0.07)];
    const seen = new Map<string, string>();
    const actions = new Set<string>();
    for (let step = 0; step < 60; step++) {
      const batch: SessionRecord[] = [];
      const size = 1 + Math.floor(rand() * 5);
      for (let i = 0; i < size; i++) {
        const id = `ses_r${Math.floor(rand() * 12)}`;
        const dev = seen.get(id) !== undefined && rand() < 0.1 ? DEV_B + "x" : (seen.get(id) ?? pick([DEV_A, DEV_B]));
        const ms = [...models].filter(() => rand() < 0.6);
        if (rand() < 0.2 && ms.length > 0) ms.push(ms[0]); // a model listed twice
        const end = pick(["idle", "error", "deleted"] as const);
        const rec = minimalRecord({
          sessionId: id,
          deviceId: dev,
          createdAt: pick([D1, D2, D5]) - Math.floor(rand() * 40) * DAY + Math.floor(rand() * DAY),
          // After every createdAt and within a day of the (fake) clock, as validate.ts requires.
          updatedAt: D5 + DAY + 1_000 + Math.floor(rand() * 6),
          exportedAt: D5 + DAY + 2_000 + Math.floor(rand() * 3),
          messageCount: Math.floor(rand() * 20),
          cost: Math.floor(rand() * 1000) / 997,
          tokens: { input: Math.floor(rand() * 1e6), output: 7, reasoning: 1, cacheRead: 2, cacheWrite: 3 },
          models: ms,
          endReason: end,
          todoStats: { total: 3, completed: Math.floor(rand() * 4), cancelled: 0, pending: 0, inProgress: 0 },
        });
        if (end === "error" && rand() < 0.7) rec.error = { name: pick(["APIError", "ProviderAuthError"]), message: "m" };
        const shape = rand();
        if (shape < 0.15) rec.parentSessionId = "ses_r0";
        else if (shape < 0.35) {
          // Subagents rolled up: more of everything, and a model the session itself did not use.
          const extra = model("c", "sub", 2, 5, 1, 0.011);
          rec.rollup = {
            sessions: 2,
            messageCount: rec.messageCount + 2,
            tokens: { ...rec.tokens, input: rec.tokens.input + 5 },
            cost: rec.cost + 0.011,
            models: mergeModels([ms, [extra]]),
            tools: [],
            skills: [],
          };
        } else if (shape < 0.5 && ms.length > 0) {
          // A fork: part of its first model's usage was copied (possibly all of it).
          const m = ms[0];
          const copied = { ...m, messages: rand() < 0.5 ? m.messages : 1, cost: m.cost / 2 };
          rec.inherited = { messageCount: copied.messages, tokens: copied.tokens, cost: copied.cost, models: [copied] };
          rec.forkedFrom = "ses_r1";
        }
        if (!seen.has(id)) seen.set(id, dev);
        batch.push(rec);
      }
      for (const r of await ingest(batch)) actions.add(r.action);
      await checkAggregates(t);
      if (step % 20 === 19) {
        process.env.RETENTION_DAYS = String(10 + Math.floor(rand() * 30));
        await t.mutation(internal.retention.purge, {});
        await t.finishAllScheduledFunctions(vi.runAllTimers);
        delete process.env.RETENTION_DAYS;
        await checkAggregates(t);
      }
    }
    // The sequence exercised every upsert outcome.
    // ("rejected": a sessionId stored under another device.)
    expect([...actions].sort()).toEqual(["inserted", "rejected", "stale", "unchanged", "updated"]);
  }, 60_000);
});

describe("retention", () => {
  test("off when RETENTION_DAYS is unset or 0; an invalid value is an error naming the variable", async () => {
    const s = await seeded();
    expect(await s.t.mutation(internal.retention.purge, {})).toEqual({ retentionDays: 0, cutoff: null, deleted: 0, more: false });
    process.env.RETENTION_DAYS = "0";
    expect((await s.t.mutation(internal.retention.purge, {})).deleted).toBe(0);
    for (const bad of ["-1", "abc", "1.5", "30d"]) {
      process.env.RETENTION_DAYS = bad;
      await expect(s.t.mutation(internal.retention.purge, {})).rejects.toThrow(/RETENTION_DAYS must be a whole number/);
    }
    expect(await s.t.run((ctx) => ctx.db.query("sessions").collect())).toHaveLength(RECORDS.length);
  });

  test("deletes sessions created before now - N days in batches of 256, rescheduling itself, and updates the aggregates", async () => {
    vi.useFakeTimers();
    const now = D5 + 12 * 3_600_000;
    // Seed a minute before `now`: convex-test (like Convex) starts a transaction no earlier than
    // the last commit, so seeding at a frozen `now` would put the purge at now + 1 ms.
    vi.setSystemTime(now - 60_000);
    const s = setup();
    // 600 old sessions spread over days before the cutoff, then the seed (all within 5 days of now).
    const old = Array.from({ length: 600 }, (_, i) =>
      minimalRecord({
        sessionId: `ses_old${i}`,
        createdAt: now - 5 * DAY - 1 - i * 3_600_000,
        updatedAt: now - 5 * DAY - i * 3_600_000,
        exportedAt: now - 5 * DAY - i * 3_600_000,
        models: [model("a", "m", 1, 1, 1, 0.5)],
      }),
    );
    for (let i = 0; i < old.length; i += 200) await s.ingest(old.slice(i, i + 200));
    await s.ingest(cloneJson(RECORDS));
    expect(await checkAggregates(s.t)).toBe(600 + RECORDS.length);

    vi.setSystemTime(now);
    process.env.RETENTION_DAYS = "5";
    const first = await s.t.mutation(internal.retention.purge, {});
    expect(first).toEqual({ retentionDays: 5, cutoff: now - 5 * DAY, deleted: 256, more: true });
    expect(await checkAggregates(s.t)).toBe(600 - 256 + RECORDS.length);
    await s.t.finishAllScheduledFunctions(vi.runAllTimers);
    const left = await s.t.run((ctx) => ctx.db.query("sessions").collect());
    expect(left.map((d) => d.sessionId).sort()).toEqual(RECORDS.map((r) => r.sessionId).sort());
    await checkAggregates(s.t);
    expect((await s.t.query(internal.totals.daily, { from: "2026-01-01", to: "2026-03-31" })).total).toEqual(
      expect.objectContaining({ sessions: RECORDS.filter((r) => r.parentSessionId === undefined).length }),
    );
    // Nothing more to delete.
    expect((await s.t.mutation(internal.retention.purge, {})).deleted).toBe(0);
  }, 30_000);
});
