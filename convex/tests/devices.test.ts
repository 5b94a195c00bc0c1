// Device credentials (convex/devices.ts) and the server-side content rules (convex/validate.ts)
// through POST /ingest and GET /whoami on convex-test's backend: each device token writes only
// its own rows; a revoked token is 401 with nothing written; the legacy INGEST_TOKEN only when
// opted in; every invalid value is rejected per record while its neighbours are stored; the
// aggregate tables stay finite under any sequence.
/// <reference types="vite/client" />
import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { internal } from "../convex/_generated/api";
import schema from "../convex/schema";
import { NOT_THIS_DEVICE, STORED_UNDER_ANOTHER_DEVICE } from "../convex/sessions";
import { FULL, TOKEN, fullRecord, minimalRecord } from "./helpers";

const modules = import.meta.glob("../convex/**/*.*s");

const saved: Record<string, string | undefined> = {};
beforeEach(() => {
  for (const k of ["INGEST_TOKEN", "ALLOW_LEGACY_INGEST_TOKEN"]) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
});
afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

const DEV_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DEV_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

function setup() {
  const t = convexTest(schema, modules);
  const post = async (token: string, records: unknown[]) => {
    const r = await t.fetch("/ingest", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ sessions: records }),
    });
    const text = await r.text();
    return { status: r.status, text, json: JSON.parse(text) };
  };
  /** POSTs raw JSON text (to send numbers JSON.stringify cannot write, like 1e999). */
  const postText = async (token: string, body: string) => {
    const r = await t.fetch("/ingest", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body,
    });
    const text = await r.text();
    return { status: r.status, text, json: JSON.parse(text) };
  };
  const ingest = async (token: string, ...records: unknown[]) => {
    const r = await post(token, records);
    expect(r.status, r.text).toBe(200);
    return r.json.results as Array<Record<string, unknown>>;
  };
  const create = (name: string, deviceId?: string) => t.mutation(internal.devices.create, { name, deviceId });
  return {
    t,
    post,
    postText,
    ingest,
    create,
    get: (sessionId: string) => t.query(internal.sessions.get, { sessionId }),
    all: () => t.run((ctx) => ctx.db.query("sessions").collect()),
    aggregates: () =>
      t.run(async (ctx) => ({
        daily: await ctx.db.query("dailyTotals").collect(),
        models: await ctx.db.query("modelDailyTotals").collect(),
      })),
    whoami: async (token: string) => {
      const r = await t.fetch("/whoami", { method: "GET", headers: { authorization: `Bearer ${token}` } });
      return { status: r.status, json: await r.json() };
    },
  };
}

/** A valid top-level record of `deviceId` (counts in the aggregates). */
function rec(sessionId: string, deviceId: string, over: Record<string, unknown> = {}) {
  const { parentSessionId: _p, ...r } = fullRecord({ sessionId, deviceId });
  return { ...r, ...over };
}

describe("device tokens", () => {
  test("create returns a 43-character url-safe token once; only its SHA-256 is stored; list shows no hash", async () => {
    const s = setup();
    const { name, token } = await s.create("work-laptop");
    expect(name).toBe("work-laptop");
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const rows = await s.t.run((ctx) => ctx.db.query("devices").collect());
    expect(rows).toHaveLength(1);
    expect(JSON.stringify(rows)).not.toContain(token);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token)));
    expect(rows[0].tokenHash).toBe([...digest].map((b) => b.toString(16).padStart(2, "0")).join(""));
    const listed = await s.t.query(internal.devices.list, {});
    expect(listed).toEqual([{ name: "work-laptop", deviceId: null, createdAt: expect.any(Number), lastSeenAt: null, revokedAt: null }]);
    expect(JSON.stringify(listed)).not.toContain(rows[0].tokenHash);
    // Two tokens differ; names are unique; a bad name is refused.
    const other = await s.create("home");
    expect(other.token).not.toBe(token);
    await expect(s.create("home")).rejects.toThrow(/NAME_TAKEN|exists already/);
    await expect(s.create("has space")).rejects.toThrow(/BAD_NAME|device name/);
  });

  test("two devices: each token writes only its own rows; A cannot overwrite, pin or learn B's", async () => {
    const s = setup();
    const a = await s.create("a");
    const b = await s.create("b");
    expect(await s.ingest(a.token, rec("ses_a", DEV_A))).toEqual([{ sessionId: "ses_a", action: "inserted" }]);
    expect(await s.ingest(b.token, rec("ses_b", DEV_B))).toEqual([{ sessionId: "ses_b", action: "inserted" }]);
    // First records bound each device to its deviceId.
    const listed = await s.t.query(internal.devices.list, {});
    expect(listed.map((d) => [d.name, d.deviceId, typeof d.lastSeenAt])).toEqual([
      ["a", DEV_A, "number"],
      ["b", DEV_B, "number"],
    ]);
    const bBefore = await s.get("ses_b");

    // A claims B's deviceId (to overwrite B's session, or to pin it with a huge updatedAt).
    const overwrite = rec("ses_b", DEV_B, { updatedAt: FULL.updatedAt + 1, title: "pwned" });
    const pin = rec("ses_b", DEV_B, { updatedAt: Date.now(), revision: Date.now() });
    // A writes B's sessionId under its own deviceId.
    const underMine = rec("ses_b", DEV_A, { updatedAt: FULL.updatedAt + 2 });
    // A creates a new session claiming B's device.
    const newForB = rec("ses_new", DEV_B);
    const res = await s.ingest(a.token, overwrite, pin, underMine, newForB, rec("ses_a2", DEV_A));
    expect(res).toEqual([
      { sessionId: "ses_b", action: "rejected", error: NOT_THIS_DEVICE },
      { sessionId: "ses_b", action: "rejected", error: NOT_THIS_DEVICE },
      { sessionId: "ses_b", action: "rejected", error: STORED_UNDER_ANOTHER_DEVICE },
      { sessionId: "ses_new", action: "rejected", error: NOT_THIS_DEVICE },
      { sessionId: "ses_a2", action: "inserted" },
    ]);
    // Nothing of B's changed and the answer never names B's deviceId.
    expect(await s.get("ses_b")).toEqual(bBefore);
    expect(await s.get("ses_new")).toBeNull();
    expect(JSON.stringify(res)).not.toContain(DEV_B.slice(0, 8));
    // B's own updates still land (nothing pinned it).
    expect(await s.ingest(b.token, rec("ses_b", DEV_B, { updatedAt: FULL.updatedAt + 5, revision: FULL.revision! + 5, contentHash: "f".repeat(32) }))).toEqual([
      { sessionId: "ses_b", action: "updated" },
    ]);
    // A third device cannot bind itself to an id another device holds.
    const c = await s.create("c");
    expect(await s.ingest(c.token, rec("ses_c", DEV_A))).toEqual([{ sessionId: "ses_c", action: "rejected", error: NOT_THIS_DEVICE }]);
    expect((await s.t.query(internal.devices.list, {})).find((d) => d.name === "c")!.deviceId).toBeNull();
  });

  test("a device created with a deviceId is bound to it at once", async () => {
    const s = setup();
    const a = await s.create("a", DEV_A);
    expect(await s.ingest(a.token, rec("ses_x", DEV_B))).toEqual([{ sessionId: "ses_x", action: "rejected", error: NOT_THIS_DEVICE }]);
    expect(await s.ingest(a.token, rec("ses_x", DEV_A))).toEqual([{ sessionId: "ses_x", action: "inserted" }]);
    await expect(s.create("a2", DEV_A)).rejects.toThrow(/ID_TAKEN|another device/);
  });

  test("a revoked token gets 401 at once and nothing is written; its rows stay", async () => {
    const s = setup();
    const a = await s.create("a");
    await s.ingest(a.token, rec("ses_a", DEV_A));
    const before = await s.t.run(async (ctx) => ({
      sessions: await ctx.db.query("sessions").collect(),
      daily: await ctx.db.query("dailyTotals").collect(),
    }));
    const { revokedAt } = await s.t.mutation(internal.devices.revoke, { name: "a" });
    expect(revokedAt).toEqual(expect.any(Number));
    expect((await s.t.mutation(internal.devices.revoke, { name: "a" })).revokedAt).toBe(revokedAt);
    const r = await s.post(a.token, [rec("ses_a", DEV_A, { updatedAt: FULL.updatedAt + 1 }), rec("ses_a3", DEV_A)]);
    expect(r.status).toBe(401);
    expect(r.json).toEqual({ code: "UNAUTHORIZED", message: expect.stringMatching(/revoked/) });
    expect((await s.whoami(a.token)).status).toBe(401);
    expect(
      await s.t.run(async (ctx) => ({
        sessions: await ctx.db.query("sessions").collect(),
        daily: await ctx.db.query("dailyTotals").collect(),
      })),
    ).toEqual(before);
    // A replacement bound to the same id (a lost token) updates the kept rows.
    const a2 = await s.create("a2", DEV_A);
    expect(
      await s.ingest(a2.token, rec("ses_a", DEV_A, { updatedAt: FULL.updatedAt + 9, revision: FULL.revision! + 9, contentHash: "d".repeat(32) })),
    ).toEqual([{ sessionId: "ses_a", action: "updated" }]);
    await expect(s.t.mutation(internal.devices.revoke, { name: "nope" })).rejects.toThrow(/NO_SUCH_DEVICE|no device/);
    // The mutation itself refuses a revoked device, should the revocation land mid-request.
    const id = (await s.t.run((ctx) => ctx.db.query("devices").first()))!._id;
    await expect(
      s.t.mutation(internal.sessions.upsertBatch, { sessions: [rec("ses_z", DEV_A)], device: id }),
    ).rejects.toThrow(/REVOKED|revoked/);
    expect(await s.get("ses_z")).toBeNull();
  });

  test("the legacy INGEST_TOKEN is refused unless ALLOW_LEGACY_INGEST_TOKEN=1", async () => {
    const s = setup();
    process.env.INGEST_TOKEN = TOKEN;
    for (const allow of [undefined, "", "0", "true"]) {
      if (allow === undefined) delete process.env.ALLOW_LEGACY_INGEST_TOKEN;
      else process.env.ALLOW_LEGACY_INGEST_TOKEN = allow;
      const r = await s.post(TOKEN, [rec("ses_l", DEV_A)]);
      expect(r.status).toBe(401);
      expect(r.text).not.toContain(TOKEN.slice(0, 16));
    }
    expect(await s.all()).toHaveLength(0);
    process.env.ALLOW_LEGACY_INGEST_TOKEN = "1";
    expect(await s.ingest(TOKEN, rec("ses_l", DEV_A))).toEqual([{ sessionId: "ses_l", action: "inserted" }]);
    expect(await s.whoami(TOKEN)).toEqual({ status: 200, json: { device: null, legacy: true } });
    // Migration: a device bound to the legacy rows' deviceId keeps updating them.
    const a = await s.create("a");
    expect(await s.ingest(a.token, rec("ses_l", DEV_A, { updatedAt: FULL.updatedAt + 1, revision: FULL.revision! + 1, contentHash: "e".repeat(32) }))).toEqual([
      { sessionId: "ses_l", action: "updated" },
    ]);
  });

  test("session summaries and per-device totals carry the device names", async () => {
    const s = setup();
    const a = await s.create("work-laptop");
    const b = await s.create("home");
    await s.ingest(a.token, rec("ses_a", DEV_A, { cost: 2 }));
    await s.ingest(b.token, rec("ses_b", DEV_B, { cost: 1 }));
    const page = await s.t.query(internal.sessions.recent, { paginationOpts: { numItems: 10, cursor: null } });
    expect(page.page.map((d) => [d.sessionId, d.deviceName]).sort()).toEqual([
      ["ses_a", "work-laptop"],
      ["ses_b", "home"],
    ]);
    const day = new Date(FULL.createdAt).toISOString().slice(0, 10);
    const per = await s.t.query(internal.totals.perDevice, { from: day, to: day });
    expect(per.map((d) => [d.deviceId, d.deviceName, d.sessions])).toEqual([
      [DEV_A, "work-laptop", 1],
      [DEV_B, "home", 1],
    ]);
  });

  test("GET /whoami names the device and the deviceId it is bound to; an unknown token is 401", async () => {
    const s = setup();
    const a = await s.create("work-laptop");
    expect(await s.whoami(a.token)).toEqual({ status: 200, json: { device: "work-laptop", deviceId: null } });
    await s.ingest(a.token, rec("ses_who", DEV_A));
    expect(await s.whoami(a.token)).toEqual({ status: 200, json: { device: "work-laptop", deviceId: DEV_A } });
    const b = await s.create("home", DEV_B);
    expect(await s.whoami(b.token)).toEqual({ status: 200, json: { device: "home", deviceId: DEV_B } });
    expect((await s.whoami("nope")).status).toBe(401);
  });
});

describe("content rules, per record", () => {
  const now = Date.now();
  // [name, patch of a valid record, reason pattern]
  const cases: Array<[string, (r: Record<string, any>) => void, RegExp]> = [
    ["a huge cost", (r) => (r.cost = 1e300), /cost is over/],
    ["a negative token count", (r) => (r.tokens.input = -5), /tokens\.input is negative/],
    ["a negative model cost", (r) => (r.models[0].cost = -0.1), /models\[0\]\.cost is negative/],
    ["a count over 2^53", (r) => (r.messageCount = 2 ** 60), /messageCount is over/],
    ["updatedAt pinned at 2^53 - 1", (r) => (r.updatedAt = 9007199254740991), /updatedAt .* more than a day after/],
    ["a revision far in the future", (r) => (r.revision = now + 3 * 86_400_000), /revision .* more than a day after/],
    ["createdAt 0", (r) => (r.createdAt = 0), /createdAt \(0\) is before 2000-01-01/],
    ["createdAt outside JavaScript's date range", (r) => (r.createdAt = 8.64e15 + 1), /createdAt .* more than a day after/],
    ["updatedAt before createdAt", (r) => (r.updatedAt = r.createdAt - 1), /updatedAt .* is before createdAt/],
    ["a message timestamp before 2000", (r) => (r.messages[0].createdAt = 5), /messages\[0\]\.createdAt .* before 2000/],
    ["a title over 4096 characters", (r) => (r.title = "t".repeat(5000)), /title is longer than 4096/],
    ["an id over 1024 characters", (r) => (r.hostname = "h".repeat(2000)), /hostname is longer than 1024/],
    ["an array of over 4096 items", (r) => (r.agentsUsed = Array(4097).fill("a")), /agentsUsed has more than 4096/],
  ];

  test.each(cases)("%s is rejected with a one-line reason; its neighbours are stored", async (_name, patch, reason) => {
    const s = setup();
    const { token } = await s.create("a");
    const bad = rec("ses_bad", DEV_A);
    patch(bad);
    const res = await s.ingest(token, rec("ses_1", DEV_A), bad, rec("ses_2", DEV_A));
    expect(res[0]).toEqual({ sessionId: "ses_1", action: "inserted" });
    expect(res[2]).toEqual({ sessionId: "ses_2", action: "inserted" });
    expect(res[1]).toEqual({ sessionId: "ses_bad", action: "rejected", error: expect.stringMatching(reason) });
    expect(res[1].error as string).not.toContain("\n");
    expect(await s.get("ses_bad")).toBeNull();
  });

  test("1e999 (Infinity once parsed) is rejected, never a 500; totals stay finite", async () => {
    const s = setup();
    const { token } = await s.create("a");
    const body = JSON.stringify({ sessions: [rec("ses_inf", DEV_A), rec("ses_ok", DEV_A)] }).replace(
      `"cost":${FULL.cost}`,
      `"cost":1e999`,
    );
    expect(body).toContain("1e999");
    const r = await s.postText(token, body);
    expect(r.status, r.text).toBe(200);
    expect(r.json.results).toEqual([
      { sessionId: "ses_inf", action: "rejected", error: expect.stringMatching(/cost is not a finite number/) },
      { sessionId: "ses_ok", action: "inserted" },
    ]);
    const { daily } = await s.aggregates();
    expect(daily.every((d) => Number.isFinite(d.cost))).toBe(true);
  });

  test("the aggregates stay finite under any sequence of hostile and valid records", async () => {
    const s = setup();
    const { token } = await s.create("a");
    const hostile = [1e300, 1e308, -1e308, Number.MAX_VALUE, 2 ** 53, 1e9 + 1, -1, 0.5, 1e9];
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let step = 0; step < 30; step++) {
      const batch = Array.from({ length: 3 }, (_, i) => {
        const r = rec(`ses_${Math.floor(rand() * 4)}`, DEV_A, {
          updatedAt: FULL.updatedAt + step * 10 + i,
          revision: FULL.revision! + step * 10 + i,
        });
        const v = hostile[Math.floor(rand() * hostile.length)];
        const field = Math.floor(rand() * 3);
        if (field === 0) r.cost = v;
        else if (field === 1) r.tokens.output = v;
        else r.models[0].cost = v;
        return r;
      });
      const out = await s.post(token, batch);
      expect(out.status, out.text).toBe(200);
      const { daily, models } = await s.aggregates();
      for (const row of [...daily, ...models]) {
        for (const x of [row.cost, row.messages, row.sessions, ...Object.values(row.tokens)]) expect(Number.isFinite(x)).toBe(true);
      }
    }
    const day = new Date(FULL.createdAt).toISOString().slice(0, 10);
    const total = await s.t.query(internal.totals.daily, { from: day, to: day });
    expect(total.total.sessions).toBeGreaterThan(0);
    expect(Number.isFinite(total.total.cost)).toBe(true);
  });
});
