// Unit tests of convex/sessions.ts on convex-test's in-memory backend.
/// <reference types="vite/client" />
import { convexTest } from "convex-test";
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { api, internal } from "../convex/_generated/api";
import schema from "../convex/schema";
import { get, ingest, list, stats, type SessionRecord } from "../convex/sessions";
import { FULL, OPTIONAL_FIELDS, fullRecord, minimalRecord, withoutSystemFields } from "./helpers";

const modules = import.meta.glob("../convex/**/*.*s");
const TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

let savedToken: string | undefined;
beforeEach(() => {
  savedToken = process.env.INGEST_TOKEN;
  process.env.INGEST_TOKEN = TOKEN;
});
afterEach(() => {
  if (savedToken === undefined) delete process.env.INGEST_TOKEN;
  else process.env.INGEST_TOKEN = savedToken;
});

function setup() {
  const t = convexTest(schema, modules);
  const ingestAs = (token: string, sessions: SessionRecord[]) =>
    t.mutation(api.sessions.ingest, { token, sessions });
  return {
    t,
    ingest: (...sessions: SessionRecord[]) => ingestAs(TOKEN, sessions),
    ingestAs,
    get: (sessionId: string) => t.query(internal.sessions.get, { sessionId }),
    all: () => t.run((ctx) => ctx.db.query("sessions").collect()),
  };
}

/** The `data` of the ConvexError `p` rejects with (fails the test if it resolves or throws something else). */
async function convexErrorData(p: Promise<unknown>): Promise<Record<string, unknown>> {
  const e = await p.then(
    () => {
      throw new Error("expected a ConvexError, but the call succeeded");
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ConvexError);
  return (e as ConvexError<any>).data as Record<string, unknown>;
}

describe("sessions:ingest upsert", () => {
  test("insert, retry is unchanged, newer updates, older is stale, equal updatedAt + newer exportedAt updates", async () => {
    const s = setup();
    const base = minimalRecord({ updatedAt: 1_795_240_019_877, exportedAt: 1_795_240_024_901 });

    expect(await s.ingest(base)).toEqual([{ sessionId: base.sessionId, action: "inserted" }]);
    const inserted = await s.get(base.sessionId);
    expect(inserted).not.toBeNull();
    expect(withoutSystemFields(inserted!)).toEqual(base);

    // The same record again (a retry after a lost response): no write at all.
    expect(await s.ingest(base)).toEqual([{ sessionId: base.sessionId, action: "unchanged" }]);
    expect(await s.all()).toHaveLength(1);
    expect(await s.get(base.sessionId)).toEqual(inserted);

    // Newer updatedAt: replaced in place.
    const newer = { ...base, updatedAt: base.updatedAt + 1_000, messageCount: 9, title: "Renamed" };
    expect(await s.ingest(newer)).toEqual([{ sessionId: base.sessionId, action: "updated" }]);
    const updated = await s.get(base.sessionId);
    expect(updated!._id).toBe(inserted!._id);
    expect(withoutSystemFields(updated!)).toEqual(newer);

    // Older updatedAt, even with a later exportedAt: stale, stored document untouched.
    const older = { ...base, exportedAt: base.exportedAt + 60_000, messageCount: 1, title: "Old" };
    expect(await s.ingest(older)).toEqual([{ sessionId: base.sessionId, action: "stale" }]);
    expect(await s.get(base.sessionId)).toEqual(updated);

    // Same updatedAt, older exportedAt: stale.
    const olderExport = { ...newer, exportedAt: newer.exportedAt - 1, title: "Older export" };
    expect(await s.ingest(olderExport)).toEqual([{ sessionId: base.sessionId, action: "stale" }]);
    expect(await s.get(base.sessionId)).toEqual(updated);

    // Same updatedAt, newer exportedAt: updated.
    const reexport = { ...newer, exportedAt: newer.exportedAt + 5, endReason: "error" as const };
    expect(await s.ingest(reexport)).toEqual([{ sessionId: base.sessionId, action: "updated" }]);
    expect(withoutSystemFields((await s.get(base.sessionId))!)).toEqual(reexport);
    expect(await s.all()).toHaveLength(1);
  });

  test("an update replaces the whole document: optional fields missing from the newer record are removed", async () => {
    const s = setup();
    const first = fullRecord();
    await s.ingest(first);
    const second = minimalRecord({ updatedAt: first.updatedAt + 1 });
    expect(await s.ingest(second)).toEqual([{ sessionId: first.sessionId, action: "updated" }]);
    const doc = (await s.get(first.sessionId))!;
    for (const k of OPTIONAL_FIELDS) expect(doc).not.toHaveProperty(k);
    expect(withoutSystemFields(doc)).toEqual(second);
  });

  test("a different deviceId is a conflict carrying the stored deviceId, and nothing is written", async () => {
    const s = setup();
    const mine = minimalRecord();
    await s.ingest(mine);
    const before = await s.get(mine.sessionId);
    const theirs = { ...mine, deviceId: "ffffffffffffffffffffffffffffffff", updatedAt: mine.updatedAt + 10 };
    expect(await s.ingest(theirs)).toEqual([
      { sessionId: mine.sessionId, action: "conflict", storedDeviceId: mine.deviceId },
    ]);
    expect(await s.get(mine.sessionId)).toEqual(before);
    expect(await s.all()).toHaveLength(1);
  });

  test("a batch: results in input order, repeated sessionIds see the earlier item's write", async () => {
    const s = setup();
    const a = minimalRecord({ sessionId: "ses_a" });
    await s.ingest(a);
    const res = await s.ingest(
      minimalRecord({ sessionId: "ses_b" }),
      { ...a, deviceId: "ffffffffffffffffffffffffffffffff", updatedAt: a.updatedAt + 1 },
      a,
      { ...a, updatedAt: a.updatedAt + 1 },
      { ...a, updatedAt: a.updatedAt - 1 },
      minimalRecord({ sessionId: "ses_b", updatedAt: a.updatedAt + 2 }),
    );
    expect(res).toEqual([
      { sessionId: "ses_b", action: "inserted" },
      { sessionId: "ses_a", action: "conflict", storedDeviceId: a.deviceId },
      { sessionId: "ses_a", action: "unchanged" },
      { sessionId: "ses_a", action: "updated" },
      { sessionId: "ses_a", action: "stale" },
      { sessionId: "ses_b", action: "updated" },
    ]);
    expect((await s.all()).map((d) => d.sessionId).sort()).toEqual(["ses_a", "ses_b"]);
    expect((await s.get("ses_b"))!.updatedAt).toBe(a.updatedAt + 2);
    expect(await s.ingest()).toEqual([]);
  });

  // That exactly 1000 are accepted is checked by the `list` limit test below (it reuses the rows).
  test("more than 1000 records is BATCH_TOO_LARGE and nothing is written", async () => {
    const s = setup();
    const many = (n: number, prefix: string) =>
      Array.from({ length: n }, (_, i) => minimalRecord({ sessionId: `${prefix}${i}` }));
    const data = await convexErrorData(s.ingestAs(TOKEN, many(1001, "ses_x")));
    expect(data).toMatchObject({ code: "BATCH_TOO_LARGE", limit: 1000, got: 1001 });
    expect(await s.all()).toHaveLength(0);
  });
});

describe("sessions:ingest token check", () => {
  test.each([
    ["a wrong token", "wrong"],
    ["an empty token", ""],
    ["a prefix of the token", TOKEN.slice(0, -1)],
    ["the token plus a character", `${TOKEN}0`],
    ["the token with one character changed", `${TOKEN.slice(0, -1)}e`],
  ])("%s is UNAUTHORIZED and nothing is written", async (_name, token) => {
    const s = setup();
    const data = await convexErrorData(s.ingestAs(token, [minimalRecord()]));
    expect(data.code).toBe("UNAUTHORIZED");
    expect(typeof data.message).toBe("string");
    // Neither the token sent nor the expected one is echoed back.
    expect(JSON.stringify(data)).not.toContain(TOKEN.slice(0, 16));
    if (token.length >= 4) expect(JSON.stringify(data)).not.toContain(token);
    expect(await s.all()).toHaveLength(0);
  });

  test("the token is checked before the batch size", async () => {
    const s = setup();
    const many = Array.from({ length: 1001 }, (_, i) => minimalRecord({ sessionId: `ses_${i}` }));
    expect((await convexErrorData(s.ingestAs("wrong", many))).code).toBe("UNAUTHORIZED");
  });

  test.each([
    ["unset", undefined],
    ["empty", ""],
  ])("INGEST_TOKEN %s on the deployment: every token is UNAUTHORIZED", async (_name, value) => {
    if (value === undefined) delete process.env.INGEST_TOKEN;
    else process.env.INGEST_TOKEN = value;
    const s = setup();
    for (const token of ["", TOKEN, "anything"]) {
      const data = await convexErrorData(s.ingestAs(token, [minimalRecord()]));
      expect(data.code).toBe("UNAUTHORIZED");
      expect(String(data.message)).toMatch(/INGEST_TOKEN is not set/);
    }
    expect(await s.all()).toHaveLength(0);
  });

  test("the token is read on every call, so rotating it takes effect immediately", async () => {
    const s = setup();
    await s.ingest(minimalRecord({ sessionId: "ses_1" }));
    process.env.INGEST_TOKEN = "rotated-token";
    expect((await convexErrorData(s.ingestAs(TOKEN, [minimalRecord({ sessionId: "ses_2" })]))).code).toBe(
      "UNAUTHORIZED",
    );
    expect(await s.ingestAs("rotated-token", [minimalRecord({ sessionId: "ses_2" })])).toEqual([
      { sessionId: "ses_2", action: "inserted" },
    ]);
  });
});

describe("sessions:ingest argument validation", () => {
  // Each case breaks the SECOND record of a batch whose first record is valid: the whole call must
  // be rejected before anything is written.
  const broken: Array<[string, () => Record<string, unknown>, RegExp]> = [
    ["an extra top-level field", () => ({ ...fullRecord(), bogus: 1 }), /Unexpected field `bogus`/],
    [
      "an extra nested field",
      () => ({ ...fullRecord(), tokens: { ...FULL.tokens, total: 5 } }),
      /Unexpected field `total`/,
    ],
    ["a string where a number belongs", () => ({ ...fullRecord(), messageCount: "5" }), /Expected `number`/],
    ["an integer field as a string in an array item", () => {
      const r = fullRecord();
      return { ...r, tools: [{ ...r.tools[0], calls: "3" }] };
    }, /Expected `number`/],
    ["an unknown endReason", () => ({ ...fullRecord(), endReason: "crashed" }), /Validator error/],
    ["null for an optional field (the daemon omits it instead)", () => ({ ...fullRecord(), archivedAt: null }), /Expected `number`/],
    ["a missing required field", () => {
      const { hostname: _h, ...rest } = fullRecord();
      return rest;
    }, /Missing required field `hostname`/],
    ["incomplete as a number", () => ({ ...fullRecord(), incomplete: 1 }), /Expected `boolean`/],
  ];

  test.each(broken)("%s rejects the whole batch", async (_name, make, message) => {
    const s = setup();
    const bad = { ...make(), sessionId: "ses_bad" } as unknown as SessionRecord;
    await expect(s.ingest(minimalRecord({ sessionId: "ses_good" }), bad)).rejects.toThrow(message);
    expect(await s.all()).toHaveLength(0);
  });

  test("an unknown top-level argument is rejected", async () => {
    const s = setup();
    await expect(
      s.t.mutation(api.sessions.ingest, { token: TOKEN, sessions: [], extra: true } as never),
    ).rejects.toThrow(/Unexpected field `extra`/);
  });
});

describe("round trip", () => {
  test("a record with every optional field present comes back from get unchanged", async () => {
    const s = setup();
    for (const k of OPTIONAL_FIELDS) expect(FULL).toHaveProperty(k);
    expect(FULL.children![0]).toHaveProperty("agent");
    expect(FULL.children![0]).toHaveProperty("error");
    expect(FULL.messages!.some((m) => m.completedAt !== undefined && m.finish !== undefined)).toBe(true);
    expect(FULL.messages!.some((m) => m.error !== undefined)).toBe(true);

    expect(await s.ingest(fullRecord())).toEqual([{ sessionId: FULL.sessionId, action: "inserted" }]);
    const doc = await s.get(FULL.sessionId);
    expect(doc).not.toBeNull();
    expect(typeof doc!._id).toBe("string");
    expect(typeof doc!._creationTime).toBe("number");
    expect(withoutSystemFields(doc!)).toEqual(FULL);
  });

  test("get of an unknown session is null", async () => {
    expect(await setup().get("ses_missing")).toBeNull();
  });
});

describe("visibility", () => {
  test("ingest is a public mutation; get, list and stats are internal queries", () => {
    const flags = (f: unknown) => {
      const o = f as { isPublic?: boolean; isInternal?: boolean; isQuery?: boolean; isMutation?: boolean };
      return { public: o.isPublic === true, internal: o.isInternal === true, query: o.isQuery === true, mutation: o.isMutation === true };
    };
    expect(flags(ingest)).toEqual({ public: true, internal: false, query: false, mutation: true });
    for (const q of [get, list, stats]) {
      expect(flags(q)).toEqual({ public: false, internal: true, query: true, mutation: false });
    }
  });
});

describe("list and stats", () => {
  const DEV_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  const DEV_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
  // Inserted in an order unrelated to createdAt, so index order is what gets tested.
  const rows = [
    { sessionId: "ses_3", deviceId: DEV_A, projectId: "p1", createdAt: 3_000, cost: 0.25, messageCount: 3, endReason: "idle" },
    { sessionId: "ses_1", deviceId: DEV_B, projectId: "p1", createdAt: 1_000, cost: 0.5, messageCount: 10, endReason: "error" },
    { sessionId: "ses_5", deviceId: DEV_A, projectId: "p2", createdAt: 5_000, cost: 1, messageCount: 7, endReason: "deleted" },
    { sessionId: "ses_2", deviceId: DEV_A, projectId: "p1", createdAt: 2_000, cost: 0.125, messageCount: 1, endReason: "idle" },
    { sessionId: "ses_4", deviceId: DEV_B, projectId: "p2", createdAt: 4_000, cost: 2, messageCount: 4, endReason: "idle" },
  ] as const;

  async function seeded() {
    const s = setup();
    // One batch per device, in the order above.
    for (const dev of [DEV_A, DEV_B]) {
      await s.ingest(
        ...rows
          .filter((r) => r.deviceId === dev)
          .map((r) => minimalRecord({ ...r, updatedAt: r.createdAt + 10, exportedAt: r.createdAt + 20 })),
      );
    }
    const list = async (args: { deviceId?: string; projectId?: string; limit?: number }) =>
      (await s.t.query(internal.sessions.list, args)).map((d) => d.sessionId);
    return { s, list };
  }

  test("list: newest createdAt first, with device and project filters and a limit", async () => {
    const { list } = await seeded();
    expect(await list({})).toEqual(["ses_5", "ses_4", "ses_3", "ses_2", "ses_1"]);
    expect(await list({ limit: 2 })).toEqual(["ses_5", "ses_4"]);
    expect(await list({ limit: 2.9 })).toEqual(["ses_5", "ses_4"]);
    expect(await list({ deviceId: DEV_A })).toEqual(["ses_5", "ses_3", "ses_2"]);
    expect(await list({ deviceId: DEV_B, limit: 1 })).toEqual(["ses_4"]);
    expect(await list({ projectId: "p1" })).toEqual(["ses_3", "ses_2", "ses_1"]);
    expect(await list({ projectId: "p1", limit: 2 })).toEqual(["ses_3", "ses_2"]);
    expect(await list({ deviceId: DEV_A, projectId: "p1" })).toEqual(["ses_3", "ses_2"]);
    expect(await list({ deviceId: "nobody" })).toEqual([]);
    expect(await list({ projectId: "nope" })).toEqual([]);
  });

  test("a batch of exactly 1000 is accepted; list limit defaults to 100 and is capped at 1000; a limit below 1 is an error", async () => {
    const s = setup();
    const batch = Array.from({ length: 1001 }, (_, i) => minimalRecord({ sessionId: `ses_${i}`, createdAt: i }));
    const res = await s.ingestAs(TOKEN, batch.slice(0, 1000));
    expect(res).toHaveLength(1000);
    expect(res.every((r, i) => r.action === "inserted" && r.sessionId === `ses_${i}`)).toBe(true);
    await s.ingestAs(TOKEN, batch.slice(1000));
    expect(await s.all()).toHaveLength(1001);
    const def = await s.t.query(internal.sessions.list, {});
    expect(def).toHaveLength(100);
    expect(def[0].sessionId).toBe("ses_1000");
    expect(await s.t.query(internal.sessions.list, { limit: 5000 })).toHaveLength(1000);
    const data = await convexErrorData(s.t.query(internal.sessions.list, { limit: 0 }));
    expect(data.code).toBe("BAD_LIMIT");
  });

  test("stats: totals overall and per device", async () => {
    const { s } = await seeded();
    expect(await s.t.query(internal.sessions.stats, {})).toEqual({
      sessions: 5,
      cost: 3.875,
      messageCount: 25,
      byEndReason: { idle: 3, error: 1, deleted: 1 },
    });
    expect(await s.t.query(internal.sessions.stats, { deviceId: DEV_A })).toEqual({
      sessions: 3,
      cost: 1.375,
      messageCount: 11,
      byEndReason: { idle: 2, error: 0, deleted: 1 },
    });
    expect(await s.t.query(internal.sessions.stats, { deviceId: "nobody" })).toEqual({
      sessions: 0,
      cost: 0,
      messageCount: 0,
      byEndReason: { idle: 0, error: 0, deleted: 0 },
    });
  });
});
