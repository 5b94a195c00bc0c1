// @vitest-environment node
// The HTTP shim (emulator/shim.ts) over real HTTP: Convex's 1 MiB document limit fires at exactly
// 1 MiB, on an insert and on an update (db.replace), with the per-record `rejected` result a
// deployment answers; the shim passes HTTP-action responses through and reads rows back.
import { getDocumentSize } from "convex/values";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { startShim, type Shim } from "../emulator/shim";
import { FULL, minimalRecord } from "./helpers";
import type { SessionRecord } from "../convex/sessions";

const TOKEN = "shim-test-token-3c9d";
const MIB = 1 << 20;

let shim: Shim;
beforeEach(async () => {
  process.env.INGEST_TOKEN = TOKEN; // read by convex/http.ts on every request, as on a deployment
  process.env.ALLOW_LEGACY_INGEST_TOKEN = "1";
  shim = await startShim();
});
afterEach(() => shim.close());

async function ingest(sessions: unknown[], token = TOKEN) {
  const r = await fetch(`${shim.url}/ingest`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ sessions }),
  });
  return { status: r.status, headers: r.headers, json: await r.json() };
}

async function query(path: string, args: unknown) {
  const r = await fetch(`${shim.url}/api/query`, { method: "POST", body: JSON.stringify({ path, args }) });
  expect(r.status).toBe(200);
  return await r.json();
}

const stored = async (sessionId: string) => {
  const r = await query("sessions:get", { sessionId });
  expect(r.status).toBe("success");
  return r.value;
};

/**
 * A record whose stored document (with `_id` and `_creationTime`, estimated by getDocumentSize
 * for a typical 32-character id) is exactly `bytes`: its one message's text is padded to fit.
 */
function recordOfSize(bytes: number, over: Partial<SessionRecord> = {}): SessionRecord {
  const r = minimalRecord({ sessionId: "ses_limit", ...over });
  r.messages = [{ ...FULL.messages![0], text: "" }];
  r.messages[0].text = "x".repeat(bytes - getDocumentSize(r as never));
  expect(getDocumentSize(r as never)).toBe(bytes);
  return r;
}

describe("the 1 MiB document limit", () => {
  test("a document of exactly 1 MiB is stored; one byte more is rejected, its neighbour stored", async () => {
    const atLimit = recordOfSize(MIB);
    const r = await ingest([atLimit]);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ results: [{ sessionId: "ses_limit", action: "inserted" }] });
    const doc = await stored("ses_limit");
    // The estimate was right: the stored document, real system fields included, is 1 MiB.
    expect(getDocumentSize(doc)).toBe(MIB);
    expect(doc.messages[0].text).toBe(atLimit.messages![0].text);

    const over = recordOfSize(MIB + 1, { sessionId: "ses_over" });
    const neighbour = minimalRecord({ sessionId: "ses_neighbour" });
    const r2 = await ingest([over, neighbour]);
    expect(r2.status).toBe(200);
    expect(r2.json).toEqual({
      results: [
        { sessionId: "ses_over", action: "rejected", error: `Value is too large (${MIB + 1} bytes > maximum size ${MIB} bytes)` },
        { sessionId: "ses_neighbour", action: "inserted" },
      ],
    });
    expect(await stored("ses_over")).toBeNull();
    expect((await stored("ses_neighbour")).sessionId).toBe("ses_neighbour");
  });

  test("an update (db.replace) to over 1 MiB is rejected and leaves the stored row as it was", async () => {
    const first = recordOfSize(MIB - 100);
    expect((await ingest([first])).json.results).toEqual([{ sessionId: "ses_limit", action: "inserted" }]);
    const newer = recordOfSize(MIB + 100, { updatedAt: first.updatedAt + 1 });
    const r = await ingest([newer]);
    expect(r.status).toBe(200);
    expect(r.json.results).toEqual([
      { sessionId: "ses_limit", action: "rejected", error: expect.stringMatching(/^Value is too large \(/) },
    ]);
    const doc = await stored("ses_limit");
    expect(doc.updatedAt).toBe(first.updatedAt);
    expect(getDocumentSize(doc)).toBe(MIB - 100);
  });
});

describe("routes", () => {
  test("/api/mutation creates a device whose token then ingests and answers /whoami", async () => {
    const r = await fetch(`${shim.url}/api/mutation`, {
      method: "POST",
      body: JSON.stringify({ path: "devices:create", args: { name: "e2e" } }),
    });
    const created = await r.json();
    expect(created).toEqual({ status: "success", value: { name: "e2e", token: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/) } });
    const token = created.value.token as string;
    const res = await ingest([minimalRecord()], token);
    expect(res.json).toEqual({ results: [{ sessionId: FULL.sessionId, action: "inserted" }] });
    const who = await fetch(`${shim.url}/whoami`, { headers: { authorization: `Bearer ${token}` } });
    expect(await who.json()).toEqual({ device: "e2e", deviceId: FULL.deviceId });
  });

  test("HTTP-action answers pass through unchanged: a wrong token is a 401 with WWW-Authenticate", async () => {
    const r = await ingest([minimalRecord()], "not-the-token");
    expect(r.status).toBe(401);
    expect(r.headers.get("www-authenticate")).toBe("Bearer");
    expect(r.json).toEqual({ code: "UNAUTHORIZED", message: expect.any(String) });
    expect(await stored(FULL.sessionId)).toBeNull();
  });

  test("/api/query runs internal queries and reports a failing one as a function error", async () => {
    await ingest([minimalRecord()]);
    const page = await query("sessions:recent", { paginationOpts: { numItems: 10, cursor: null } });
    expect(page.status).toBe("success");
    expect(page.value.page.map((d: SessionRecord) => d.sessionId)).toEqual([FULL.sessionId]);
    const bad = await query("totals:daily", { from: "2026-13-01", to: "2026-13-02" });
    expect(bad).toEqual({ status: "error", errorMessage: expect.any(String) });
  });
});
