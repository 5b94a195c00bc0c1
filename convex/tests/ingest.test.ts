// The HTTP action POST /ingest (convex/http.ts) and the upsert behind it, on convex-test's
// in-memory backend, through `t.fetch` (the HTTP action runs as it would on the deployment).
/// <reference types="vite/client" />
import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { internal } from "../convex/_generated/api";
import * as http from "../convex/http";
import schema from "../convex/schema";
import * as sessions from "../convex/sessions";
import * as totals from "../convex/totals";
import * as retention from "../convex/retention";
import * as devices from "../convex/devices";
import { FULL, OPTIONAL_FIELDS, TOKEN, fullRecord, minimalRecord, withoutSystemFields } from "./helpers";

const modules = import.meta.glob("../convex/**/*.*s");

// These tests post with the legacy shared INGEST_TOKEN (opted in); tests/devices.test.ts covers
// device tokens.
const saved: Record<string, string | undefined> = {};
beforeEach(() => {
  for (const k of ["INGEST_TOKEN", "ALLOW_LEGACY_INGEST_TOKEN"]) saved[k] = process.env[k];
  process.env.INGEST_TOKEN = TOKEN;
  process.env.ALLOW_LEGACY_INGEST_TOKEN = "1";
});
afterEach(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  json: any;
}

function setup() {
  const t = convexTest(schema, modules);
  const send = async (body: string, headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` }): Promise<Reply> => {
    const r = await t.fetch("/ingest", {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
    const text = await r.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: r.status, headers: r.headers, text, json };
  };
  const post = (records: unknown[], headers?: Record<string, string>) => send(JSON.stringify({ sessions: records }), headers);
  /** POSTs with the right token and returns the results (fails unless 200). */
  const ingest = async (...records: unknown[]) => {
    const r = await post(records);
    expect(r.status, r.text).toBe(200);
    return r.json.results as Array<Record<string, unknown>>;
  };
  return {
    t,
    send,
    post,
    ingest,
    get: (sessionId: string) => t.query(internal.sessions.get, { sessionId }),
    all: () => t.run((ctx) => ctx.db.query("sessions").collect()),
    aggregates: () =>
      t.run(async (ctx) => ({
        daily: await ctx.db.query("dailyTotals").collect(),
        models: await ctx.db.query("modelDailyTotals").collect(),
      })),
  };
}

describe("authentication", () => {
  const cases: Array<[string, Record<string, string>]> = [
    ["no Authorization header", {}],
    ["a wrong token", { authorization: "Bearer wrong" }],
    ["an empty bearer token", { authorization: "Bearer " }],
    ["a prefix of the token", { authorization: `Bearer ${TOKEN.slice(0, -1)}` }],
    ["the token plus a character", { authorization: `Bearer ${TOKEN}0` }],
    ["the token with its last character changed", { authorization: `Bearer ${TOKEN.slice(0, -1)}e` }],
    ["the right token under another scheme", { authorization: `Basic ${TOKEN}` }],
    ["the right token without a scheme", { authorization: TOKEN }],
    ["the right token in another header", { "x-ingest-token": TOKEN }],
  ];
  test.each(cases)("%s: 401 UNAUTHORIZED with WWW-Authenticate, nothing written", async (_name, headers) => {
    const s = setup();
    const r = await s.post([minimalRecord()], headers);
    expect(r.status).toBe(401);
    expect(r.headers.get("www-authenticate")).toBe("Bearer");
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expect(r.json).toEqual({ code: "UNAUTHORIZED", message: expect.any(String) });
    // Neither the expected token nor the one sent is echoed back.
    expect(r.text).not.toContain(TOKEN.slice(0, 16));
    expect(r.text).not.toContain("wrong");
    expect(await s.all()).toHaveLength(0);
    expect(await s.aggregates()).toEqual({ daily: [], models: [] });
  });

  test.each([
    ["unset", undefined],
    ["empty", ""],
  ])("INGEST_TOKEN %s on the deployment: every request is 401 and nothing is written", async (_name, value) => {
    if (value === undefined) delete process.env.INGEST_TOKEN;
    else process.env.INGEST_TOKEN = value;
    const s = setup();
    for (const headers of [{} as Record<string, string>, { authorization: "Bearer " }, { authorization: `Bearer ${TOKEN}` }, { authorization: "Bearer anything" }]) {
      const r = await s.post([minimalRecord()], headers);
      expect(r.status).toBe(401);
      expect(r.json.code).toBe("UNAUTHORIZED");
      expect(r.json.message).toMatch(/not a device token|missing `Authorization|malformed/);
      expect(r.headers.get("www-authenticate")).toBe("Bearer");
    }
    expect(await s.all()).toHaveLength(0);
  });

  test("the right token: 200; the scheme is case-insensitive", async () => {
    const s = setup();
    expect(await s.ingest(minimalRecord())).toEqual([{ sessionId: FULL.sessionId, action: "inserted" }]);
    const r = await s.post([minimalRecord({ sessionId: "ses_2" })], { authorization: `bearer ${TOKEN}` });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ results: [{ sessionId: "ses_2", action: "inserted" }] });
    expect(await s.all()).toHaveLength(2);
  });

  test("authentication comes before the body: a bad body with a wrong token is 401", async () => {
    const s = setup();
    expect((await s.send("not json", { authorization: "Bearer wrong" })).status).toBe(401);
    const many = Array.from({ length: 501 }, (_, i) => minimalRecord({ sessionId: `ses_${i}` }));
    expect((await s.post(many, {})).status).toBe(401);
  });

  test("the token is read on every request, so rotating it takes effect at once", async () => {
    const s = setup();
    await s.ingest(minimalRecord({ sessionId: "ses_1" }));
    process.env.INGEST_TOKEN = "rotated-token";
    expect((await s.post([minimalRecord({ sessionId: "ses_2" })])).status).toBe(401);
    const r = await s.post([minimalRecord({ sessionId: "ses_2" })], { authorization: "Bearer rotated-token" });
    expect(r.json).toEqual({ results: [{ sessionId: "ses_2", action: "inserted" }] });
  });

  test("constantTimeEqual", () => {
    expect(http.constantTimeEqual("abc", "abc")).toBe(true);
    expect(http.constantTimeEqual("", "")).toBe(true);
    for (const [a, b] of [["abc", "abd"], ["abc", "ab"], ["ab", "abc"], ["", "a"], ["abc", "ABC"]]) {
      expect(http.constantTimeEqual(a, b)).toBe(false);
    }
  });
});

describe("request errors", () => {
  test.each([
    ["a body that is not JSON", "{not json", /not JSON/],
    ["an empty body", "", /not JSON/],
    ["a JSON array", "[]", /JSON object/],
    ["a JSON string", '"x"', /JSON object/],
    ["null", "null", /JSON object/],
    ["an object without sessions", '{"records":[]}', /`sessions` is missing/],
    ["sessions not an array", '{"sessions":{}}', /must be an array/],
    ["sessions empty", '{"sessions":[]}', /empty/],
  ])("%s: 400 BAD_REQUEST", async (_name, body, message) => {
    const s = setup();
    const r = await s.send(body);
    expect(r.status).toBe(400);
    expect(r.json).toEqual({ code: "BAD_REQUEST", message: expect.stringMatching(message) });
    expect(await s.all()).toHaveLength(0);
  });

  test("501 records: 413 BATCH_TOO_LARGE with the limit, nothing written; exactly 500 are accepted", async () => {
    const s = setup();
    const many = Array.from({ length: 501 }, (_, i) => minimalRecord({ sessionId: `ses_${i}`, createdAt: FULL.createdAt + i }));
    const r = await s.post(many);
    expect(r.status).toBe(413);
    expect(r.json).toEqual({ code: "BATCH_TOO_LARGE", message: expect.stringContaining("501"), limit: 500 });
    expect(await s.all()).toHaveLength(0);
    const ok = await s.ingest(...many.slice(0, 500));
    expect(ok).toHaveLength(500);
    expect(ok.every((x, i) => x.action === "inserted" && x.sessionId === `ses_${i}`)).toBe(true);
    expect(await s.all()).toHaveLength(500);
  });

  test("GET /ingest is not routed", async () => {
    const s = setup();
    const r = await s.t.fetch("/ingest", { method: "GET", headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(404);
  });
});

describe("upsert through POST /ingest", () => {
  test("insert, retry is unchanged, newer updates, older is stale, equal updatedAt + newer exportedAt updates", async () => {
    const s = setup();
    const base = minimalRecord({ updatedAt: 1_795_240_019_877, exportedAt: 1_795_240_024_901 });

    expect(await s.ingest(base)).toEqual([{ sessionId: base.sessionId, action: "inserted" }]);
    const inserted = await s.get(base.sessionId);
    expect(withoutSystemFields(inserted!)).toEqual(base);

    // The same record again (a retry after a lost response): no write at all.
    expect(await s.ingest(base)).toEqual([{ sessionId: base.sessionId, action: "unchanged" }]);
    expect(await s.get(base.sessionId)).toEqual(inserted);

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

  test("revision orders records when both have one, whatever their clocks said; else (updatedAt, exportedAt)", async () => {
    const s = setup();
    const h = 3_600_000;
    const revision = 1_795_240_024_901;
    const base = minimalRecord({ updatedAt: 1_795_240_019_877, exportedAt: 1_795_240_024_901, revision });
    expect(await s.ingest(base)).toEqual([{ sessionId: base.sessionId, action: "inserted" }]);

    // A deletion built after the clock stepped back an hour: older exportedAt and updatedAt,
    // the next revision. It wins.
    const deleted = {
      ...base,
      endReason: "deleted" as const,
      deletedAt: base.exportedAt - h,
      exportedAt: base.exportedAt - h,
      revision: revision + 1,
    };
    expect(await s.ingest(deleted)).toEqual([{ sessionId: base.sessionId, action: "updated" }]);
    expect(withoutSystemFields((await s.get(base.sessionId))!)).toEqual(deleted);

    // An earlier revision with later times (a record still in flight from before): stale.
    const late = { ...base, updatedAt: base.updatedAt + h, exportedAt: base.exportedAt + h, title: "Late" };
    expect(await s.ingest(late)).toEqual([{ sessionId: base.sessionId, action: "stale" }]);
    // The same revision: unchanged.
    expect(await s.ingest({ ...deleted, title: "Same revision" })).toEqual([
      { sessionId: base.sessionId, action: "unchanged" },
    ]);
    expect(withoutSystemFields((await s.get(base.sessionId))!)).toEqual(deleted);

    // A record without a revision (an older daemon) is ordered by (updatedAt, exportedAt).
    const { revision: _r, ...legacy } = { ...deleted, exportedAt: deleted.exportedAt + 1, title: "Legacy" };
    expect(await s.ingest(legacy)).toEqual([{ sessionId: base.sessionId, action: "updated" }]);
    const legacyOlder = { ...legacy, exportedAt: legacy.exportedAt - 2 };
    expect(await s.ingest(legacyOlder)).toEqual([{ sessionId: base.sessionId, action: "stale" }]);
  });

  test("a re-export with the same contentHash writes nothing; another hash updates", async () => {
    const s = setup();
    // A top-level session (a subagent row adds nothing to the aggregates).
    const { parentSessionId: _parent, ...topLevel } = fullRecord();
    const first = { ...topLevel, contentHash: "0123456789abcdef0123456789abcdef" };
    expect(await s.ingest(first)).toEqual([{ sessionId: first.sessionId, action: "inserted" }]);
    // Every document of every table, system fields included: a replace, or an aggregate row
    // decremented and incremented again, would show (new exportedAt, new _id or _creationTime).
    const everything = () =>
      s.t.run(async (ctx) => ({
        sessions: await ctx.db.query("sessions").collect(),
        dailyTotals: await ctx.db.query("dailyTotals").collect(),
        modelDailyTotals: await ctx.db.query("modelDailyTotals").collect(),
      }));
    const before = await everything();
    expect(before.dailyTotals.length).toBeGreaterThan(0);
    // A re-export gets a later exportedAt and the next revision, as the daemon builds it.
    const reexport = { ...first, exportedAt: first.exportedAt + 60_000, revision: first.revision! + 60_000 };
    expect(await s.ingest(reexport)).toEqual([{ sessionId: first.sessionId, action: "unchanged" }]);
    expect(await everything()).toEqual(before);
    // Without a hash (an older daemon) the same re-export is an update, as before.
    const { contentHash: _h, ...unhashed } = reexport;
    expect(await s.ingest(unhashed)).toEqual([{ sessionId: first.sessionId, action: "updated" }]);
    // A different hash with the same updatedAt and a later exportedAt updates.
    const changed = {
      ...first,
      exportedAt: first.exportedAt + 120_000,
      revision: first.revision! + 120_000,
      contentHash: "f".repeat(32),
      title: "Changed",
    };
    expect(await s.ingest(changed)).toEqual([{ sessionId: first.sessionId, action: "updated" }]);
    expect(withoutSystemFields((await s.get(first.sessionId))!)).toEqual(changed);
  });

  test("an update replaces the whole document: optional fields missing from the newer record are removed", async () => {
    const s = setup();
    const first = { ...fullRecord(), truncated: ["title"] };
    await s.ingest(first);
    const second = minimalRecord({ updatedAt: first.updatedAt + 1 });
    expect(await s.ingest(second)).toEqual([{ sessionId: first.sessionId, action: "updated" }]);
    const doc = (await s.get(first.sessionId))!;
    for (const k of [...OPTIONAL_FIELDS, "truncated"]) expect(doc).not.toHaveProperty(k);
    expect(withoutSystemFields(doc)).toEqual(second);
  });

  test("a different deviceId is rejected without naming the stored deviceId, and nothing is written", async () => {
    const s = setup();
    const mine = minimalRecord();
    await s.ingest(mine);
    const before = await s.get(mine.sessionId);
    const theirs = { ...mine, deviceId: "ffffffffffffffffffffffffffffffff", updatedAt: mine.updatedAt + 10 };
    const res = await s.ingest(theirs);
    expect(res).toEqual([{ sessionId: mine.sessionId, action: "rejected", error: sessions.STORED_UNDER_ANOTHER_DEVICE }]);
    expect(JSON.stringify(res)).not.toContain(mine.deviceId);
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
      minimalRecord({ sessionId: "ses_b", updatedAt: a.updatedAt + 2 }),
    );
    expect(res).toEqual([
      { sessionId: "ses_b", action: "inserted" },
      { sessionId: "ses_a", action: "rejected", error: sessions.STORED_UNDER_ANOTHER_DEVICE },
      { sessionId: "ses_a", action: "unchanged" },
      { sessionId: "ses_a", action: "updated" },
      { sessionId: "ses_a", action: "stale" },
      { sessionId: "ses_b", action: "updated" },
      { sessionId: "ses_b", action: "unchanged" },
    ]);
    expect((await s.all()).map((d) => d.sessionId).sort()).toEqual(["ses_a", "ses_b"]);
    expect((await s.get("ses_a"))!.updatedAt).toBe(a.updatedAt + 1);
    expect((await s.get("ses_b"))!.updatedAt).toBe(a.updatedAt + 2);
  });

  test("a request over Convex's 16 MiB per transaction (18 records of ~0.95 MiB) is written completely", async () => {
    const s = setup();
    const big = Array.from({ length: 18 }, (_, i) => {
      const r = minimalRecord({ sessionId: `ses_big${i}` });
      r.messages = [{ ...FULL.messages![0], text: String.fromCharCode(97 + i).repeat(1_000_000) }];
      return r;
    });
    const res = await s.ingest(...big);
    expect(res).toEqual(big.map((r) => ({ sessionId: r.sessionId, action: "inserted" })));
    expect(await s.all()).toHaveLength(18);
    expect((await s.get("ses_big17"))!.messages![0].text).toHaveLength(1_000_000);
  }, 60_000);

  test("concurrent requests for one new sessionId leave exactly one row", async () => {
    const s = setup();
    const versions = Array.from({ length: 20 }, (_, i) =>
      minimalRecord({ sessionId: "ses_race", updatedAt: FULL.updatedAt + (i % 5), messageCount: i % 5 }),
    );
    const replies = await Promise.all(versions.map((r) => s.post([r])));
    for (const r of replies) expect(r.status).toBe(200);
    const actions = replies.map((r) => r.json.results[0].action as string);
    expect(actions.filter((a) => a === "inserted")).toHaveLength(1);
    const rows = await s.all();
    expect(rows).toHaveLength(1);
    // Whatever the order, the newest version wins.
    expect(rows[0].updatedAt).toBe(FULL.updatedAt + 4);
    expect(rows[0].messageCount).toBe(4);
    const { daily } = await s.aggregates();
    expect(daily).toHaveLength(1);
    expect(daily[0].sessions).toBe(1);
    expect(daily[0].messages).toBe(4);
  });

  test("a record with every optional field, plus truncated, comes back from get unchanged", async () => {
    const s = setup();
    for (const k of OPTIONAL_FIELDS) expect(FULL).toHaveProperty(k);
    const rec = { ...fullRecord(), truncated: ["title", "messages", "todos"] };
    expect(await s.ingest(rec)).toEqual([{ sessionId: FULL.sessionId, action: "inserted" }]);
    const doc = await s.get(FULL.sessionId);
    expect(typeof doc!._id).toBe("string");
    expect(withoutSystemFields(doc!)).toEqual(rec);
    expect(await s.get("ses_missing")).toBeNull();
  });
});

describe("deleted sessions (the daemon's privacy.on_delete)", () => {
  // A top-level session that ended idle, as stored before its deletion.
  const stored = () => {
    const { parentSessionId: _p, deletion: _d, deletedAt: _a, ...r } = fullRecord({ endReason: "idle" });
    return { ...r, revision: FULL.exportedAt };
  };
  // What the daemon sends for it by default: ids, times, counts and names; no title, host name,
  // paths, todos, messages, error message or child titles (daemon/src/export/build.rs
  // `mark_deleted`), written out here field by field.
  const tombstone = (deletion: "tombstone" | "delete", revisionDelta = 1) => {
    const {
      title: _t,
      hostname: _h,
      projectDirectory: _pd,
      projectWorktree: _pw,
      todos: _todos,
      messages: _m,
      redactions: _r,
      ...rest
    } = stored();
    return {
      ...rest,
      error: { name: rest.error!.name },
      children: rest.children!.map(({ title: _ct, error, ...c }) => (error ? { ...c, error: { name: error.name } } : c)),
      truncated: [],
      endReason: "deleted" as const,
      deletedAt: FULL.exportedAt + 5_000,
      exportedAt: FULL.exportedAt + 5_000,
      revision: stored().revision + revisionDelta * 5_000,
      contentHash: "e".repeat(32),
      deletion,
    };
  };

  test("a tombstone replaces the stored content; the totals keep the session's counts", async () => {
    const s = setup();
    const first = stored();
    expect(await s.ingest(first)).toEqual([{ sessionId: first.sessionId, action: "inserted" }]);
    const totalsBefore = await s.aggregates();
    const t = tombstone("tombstone");
    expect(await s.ingest(t)).toEqual([{ sessionId: first.sessionId, action: "updated" }]);
    const doc = withoutSystemFields((await s.get(first.sessionId))!);
    expect(doc).toEqual(t);
    for (const gone of ["title", "hostname", "projectDirectory", "projectWorktree", "todos", "messages"]) {
      expect(doc, gone).not.toHaveProperty(gone);
    }
    expect(JSON.stringify(doc)).not.toContain(FULL.title!);
    const strip = (rows: Array<Record<string, unknown>>) => rows.map(({ _id, _creationTime, ...r }) => r);
    const totalsAfter = await s.aggregates();
    expect(strip(totalsAfter.daily)).toEqual(strip(totalsBefore.daily));
    expect(strip(totalsAfter.models)).toEqual(strip(totalsBefore.models));
  });

  test('"delete" removes the document and its share of the totals; an older one is stale; an unknown one writes nothing', async () => {
    const s = setup();
    const first = stored();
    const other = { ...stored(), sessionId: "ses_e035b4a1effeOtherSession01" };
    await s.ingest(first, other);
    const both = await s.aggregates();
    const s2 = setup();
    await s2.ingest(other);
    const onlyOther = await s2.aggregates();
    expect(both.daily[0].sessions).toBe(2);

    // A delete older than the stored revision is stale: nothing removed.
    const old = tombstone("delete", -1);
    expect(await s.ingest(old)).toEqual([{ sessionId: first.sessionId, action: "stale" }]);
    expect(await s.get(first.sessionId)).not.toBeNull();

    expect(await s.ingest(tombstone("delete"))).toEqual([{ sessionId: first.sessionId, action: "deleted" }]);
    expect(await s.get(first.sessionId)).toBeNull();
    const strip = (rows: Array<Record<string, unknown>>) => rows.map(({ _id, _creationTime, ...r }) => r);
    const after = await s.aggregates();
    // Exactly what a deployment that only ever stored the other session holds.
    expect(strip(after.daily)).toEqual(strip(onlyOther.daily));
    expect(strip(after.models)).toEqual(strip(onlyOther.models));

    // Again (a retry), or for a session never stored: "deleted", nothing inserted.
    expect(await s.ingest(tombstone("delete"))).toEqual([{ sessionId: first.sessionId, action: "deleted" }]);
    expect(await s.all()).toHaveLength(1);
  });
});

describe("malformed records", () => {
  // Each case is the second record of a batch whose first and third records are valid.
  const broken: Array<[string, () => Record<string, unknown>, RegExp]> = [
    ["an extra top-level field", () => ({ ...fullRecord(), bogus: 1 }), /bogus/],
    ["an extra nested field", () => ({ ...fullRecord(), tokens: { ...FULL.tokens, total: 5 } }), /total/],
    ["a string where a number belongs", () => ({ ...fullRecord(), messageCount: "5" }), /number/],
    ["a string in an array item's number field", () => {
      const r = fullRecord();
      return { ...r, tools: [{ ...r.tools[0], calls: "3" }] };
    }, /number/],
    ["an unknown endReason", () => ({ ...fullRecord(), endReason: "crashed" }), /crashed|Validator|match/],
    ["null for an optional field", () => ({ ...fullRecord(), archivedAt: null }), /number|null/],
    ["a missing required field", () => {
      const { opencodeVersion: _v, ...rest } = fullRecord();
      return rest;
    }, /opencodeVersion/],
    ["truncated not an array of strings", () => ({ ...fullRecord(), truncated: "title" }), /array|Validator|match/],
  ];

  test.each(broken)("%s is rejected alone: the other records of the batch are written", async (_name, make, message) => {
    const s = setup();
    const bad = { ...make(), sessionId: "ses_bad" };
    const res = await s.ingest(minimalRecord({ sessionId: "ses_good1" }), bad, minimalRecord({ sessionId: "ses_good2" }));
    expect(res[0]).toEqual({ sessionId: "ses_good1", action: "inserted" });
    expect(res[2]).toEqual({ sessionId: "ses_good2", action: "inserted" });
    expect(res[1]).toEqual({ sessionId: "ses_bad", action: "rejected", error: expect.stringMatching(message) });
    const error = res[1].error as string;
    expect(error).not.toContain("\n");
    expect(error.length).toBeLessThanOrEqual(500);
    expect((await s.all()).map((d) => d.sessionId).sort()).toEqual(["ses_good1", "ses_good2"]);
    expect(await s.get("ses_bad")).toBeNull();
  });

  test("records that are not objects, or lack a string sessionId, are rejected without sessionId", async () => {
    const s = setup();
    const { sessionId: _id, ...noId } = minimalRecord();
    const res = await s.ingest(5, "x", null, [], noId, { ...minimalRecord(), sessionId: 7 }, minimalRecord({ sessionId: "ses_ok" }));
    expect(res.slice(0, 6).map((r) => [r.action, "sessionId" in r])).toEqual(Array(6).fill(["rejected", false]));
    expect(res[6]).toEqual({ sessionId: "ses_ok", action: "inserted" });
    expect(await s.all()).toHaveLength(1);
  });

  test("the internal mutation itself rejects a malformed record and writes nothing of the batch", async () => {
    const s = setup();
    await expect(
      s.t.mutation(internal.sessions.upsertBatch, {
        sessions: [minimalRecord({ sessionId: "ses_ok" }), { ...minimalRecord(), bogus: 1 } as never],
      }),
    ).rejects.toThrow(/bogus/);
    expect(await s.all()).toHaveLength(0);
    expect(await s.aggregates()).toEqual({ daily: [], models: [] });
  });

  test("the table schema rejects a malformed document written directly", async () => {
    const s = setup();
    await expect(
      s.t.run((ctx) => ctx.db.insert("sessions", { ...minimalRecord(), messageCount: "5" } as never)),
    ).rejects.toThrow(/number/);
    await expect(
      s.t.run((ctx) => ctx.db.insert("sessions", { ...minimalRecord(), extra: true } as never)),
    ).rejects.toThrow(/extra/);
    expect(await s.all()).toHaveLength(0);
  });

  test("oneLine and isRecordError", () => {
    const backend =
      "[Request ID: 0123] Server Error\nArgumentValidationError: Object contains extra field `bogus` that is not in the validator.\nPath: .sessions[0]\nObject: {\"secret\":1}\nValidator: v.object({})";
    const line = http.oneLine(new Error(backend));
    expect(line).toBe("ArgumentValidationError: Object contains extra field `bogus` that is not in the validator. Path: .sessions[0]");
    expect(http.isRecordError(line)).toBe(true);
    expect(http.oneLine(new Error("x".repeat(2000)))).toHaveLength(500);
    expect(http.isRecordError("Value is too large (1.20 MiB > maximum size 1 MiB)")).toBe(true);
    expect(http.isRecordError("Array length is too long (8193 > maximum length 8192)")).toBe(true);
    expect(http.isRecordError("Documents read from or written to the \"sessions\" table changed while this mutation was being run")).toBe(false);
    expect(http.isRecordError("TypeError: Cannot read properties of undefined")).toBe(false);
  });
});

describe("visibility (least privilege)", () => {
  const flags = (f: unknown) => {
    const o = f as { isPublic?: boolean; isInternal?: boolean; isQuery?: boolean; isMutation?: boolean; isHttp?: boolean };
    return { internal: o.isInternal === true, public: o.isPublic === true };
  };
  test("every query and mutation is internal; there is no public function", () => {
    const fns = Object.entries({ ...sessions, ...totals, ...retention, ...devices }).filter(
      ([, f]) => typeof f === "function" && ((f as any).isQuery || (f as any).isMutation || (f as any).isAction),
    );
    expect(fns.map(([k]) => k).sort()).toEqual(
      ["byDay", "byDevice", "byProject", "byModel", "byTokenHash", "children", "create", "daily", "failures", "failuresByName", "get", "list", "perDevice", "purge", "recent", "revoke", "todoCompletion", "upsertBatch"].sort(),
    );
    for (const [name, f] of fns) expect([name, flags(f)]).toEqual([name, { internal: true, public: false }]);
  });
});
