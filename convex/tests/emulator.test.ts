// @vitest-environment node
// Starts the emulator through its real CLI entry point, as the Rust integration tests do
// (`node convex/node_modules/.bin/tsx convex/emulator/main.ts`, cwd = repository root), and talks
// to it over HTTP with raw fetch: the wire contract the daemon relies on.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { FULL, fullRecord, minimalRecord } from "./helpers";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const TOKEN = "emu-test-token-5b1f0e9c";
const ADMIN_KEY = "emu-test|admin-key";
const LISTENING = /^convex-emu listening on (http:\/\/127\.0\.0\.1:(\d+))\n$/;
const LISTENING_WITH_SITE =
  /^convex-emu listening on (http:\/\/127\.0\.0\.1:(\d+))\nconvex-emu site on (http:\/\/127\.0\.0\.1:(\d+))\n$/;

interface Emu {
  url: string;
  /** The site port's origin (HTTP actions at "/"), when CONVEX_EMU_SITE_PORT was set. */
  site?: string;
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Sends `signal` (once) unless the process already exited, and resolves with how it exited. */
  stop: (signal?: NodeJS.Signals) => Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startEmu(cwd: string, args: string[], env: Record<string, string>): Promise<Emu> {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env };
  for (const k of ["INGEST_TOKEN", "CONVEX_EMU_HOST", "CONVEX_EMU_SITE_PORT", "CONVEX_EMU_REDACT"]) {
    if (!(k in env)) delete childEnv[k];
  }
  const proc = spawn(process.execPath, args, { cwd, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  let stopping = false;
  proc.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  proc.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) =>
    proc.once("exit", (code, signal) => ok({ code, signal })),
  );
  const withSite = "CONVEX_EMU_SITE_PORT" in env;
  const [url, site] = await new Promise<[string, string | undefined]>((ok, bad) => {
    const timer = setTimeout(() => bad(new Error(`emulator did not start in time; stderr:\n${err}`)), 15_000);
    const check = () => {
      const m = (withSite ? LISTENING_WITH_SITE : LISTENING).exec(out);
      if (m) {
        clearTimeout(timer);
        ok([m[1], withSite ? m[3] : undefined]);
      }
    };
    proc.stdout!.on("data", check);
    void exited.then((r) => {
      clearTimeout(timer);
      bad(new Error(`emulator exited early (${JSON.stringify(r)}); stderr:\n${err}`));
    });
  });
  return {
    url,
    site,
    proc,
    stdout: () => out,
    stderr: () => err,
    stop: async (signal = "SIGTERM") => {
      if (!stopping && proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      stopping = true;
      return await exited;
    },
  };
}

async function call(
  emu: Emu,
  endpoint: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; json: any }> {
  const r = await fetch(emu.url + endpoint, {
    method: "POST",
    headers: { "content-type": "application/json", "convex-client": "opencode-telemetry-0.1.0", ...headers },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, text, json: JSON.parse(text) };
}

/** POST <origin>/ingest with a raw body; `token` null = no Authorization header. */
async function postIngest(
  origin: string,
  body: string,
  token: string | null = TOKEN,
): Promise<{ status: number; headers: Headers; text: string; json: any }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${origin}/ingest`, { method: "POST", headers, body });
  const text = await r.text();
  return { status: r.status, headers: r.headers, text, json: JSON.parse(text) };
}

const ingest = (emu: Emu, sessions: unknown[], token: string | null = TOKEN) =>
  postIngest(emu.site!, JSON.stringify({ sessions }), token);
const adminQuery = (emu: Emu, path: string, args: unknown) =>
  call(emu, "/api/query", { path, args, format: "json" }, { authorization: `Convex ${ADMIN_KEY}` });
const stored = async (emu: Emu, sessionId: string) => {
  const r = await adminQuery(emu, "sessions:get", { sessionId });
  expect(r.json.status).toBe("success");
  return r.json.value;
};

describe("emulator CLI with a site port (cwd = repository root)", () => {
  let emu: Emu;
  let dir: string;
  let logFile: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "convex-emu-test-"));
    logFile = join(dir, "requests.jsonl");
    emu = await startEmu(REPO_ROOT, ["convex/node_modules/.bin/tsx", "convex/emulator/main.ts"], {
      CONVEX_EMU_PORT: "0",
      CONVEX_EMU_SITE_PORT: "0",
      CONVEX_EMU_ADMIN_KEY: ADMIN_KEY,
      CONVEX_EMU_LOG: logFile,
      INGEST_TOKEN: TOKEN,
    });
  }, 20_000);
  afterAll(async () => {
    await emu?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("stdout is exactly the two lines, API then site, on two different ports", () => {
    const m = LISTENING_WITH_SITE.exec(emu.stdout());
    expect(m).not.toBeNull();
    expect(m![2]).not.toBe(m![4]);
  });

  test("no token and a wrong token: 401 with WWW-Authenticate, nothing written", async () => {
    for (const token of [null, "not-the-token"]) {
      const r = await ingest(emu, [minimalRecord({ sessionId: "ses_emu_unauth" })], token);
      expect(r.status).toBe(401);
      expect(r.headers.get("www-authenticate")).toBe("Bearer");
      expect(r.json).toEqual({ code: "UNAUTHORIZED", message: expect.any(String) });
      expect(r.text).not.toContain("not-the-token");
      expect(r.text).not.toContain(TOKEN);
    }
    expect(await stored(emu, "ses_emu_unauth")).toBeNull();
  });

  test("the right token: inserted, unchanged on a retry, updated, stale; stored numbers come back as floats", async () => {
    const first = await ingest(emu, [fullRecord()]);
    expect(first.status).toBe(200);
    expect(first.json).toEqual({ results: [{ sessionId: FULL.sessionId, action: "inserted" }] });
    expect((await ingest(emu, [fullRecord()])).json.results).toEqual([{ sessionId: FULL.sessionId, action: "unchanged" }]);
    const newer = fullRecord({ updatedAt: FULL.updatedAt + 1 });
    expect((await ingest(emu, [newer])).json.results).toEqual([{ sessionId: FULL.sessionId, action: "updated" }]);
    expect((await ingest(emu, [fullRecord()])).json.results).toEqual([{ sessionId: FULL.sessionId, action: "stale" }]);

    const r = await adminQuery(emu, "sessions:get", { sessionId: FULL.sessionId });
    // serde_json-style output of the function API: integral float64 values carry ".0".
    expect(r.text).toContain('"schemaVersion":1.0');
    expect(r.text).toContain(`"updatedAt":${FULL.updatedAt + 1}.0`);
    const { _id, _creationTime, ...doc } = r.json.value;
    expect(typeof _id).toBe("string");
    expect(doc).toEqual(newer);
  });

  test("a batch, with a schema-invalid and an oversized record rejected and the others written", async () => {
    const big = minimalRecord({ sessionId: "ses_emu_big" });
    big.messages = [{ ...FULL.messages![0], text: "x".repeat(1_100_000) }];
    const r = await ingest(emu, [
      minimalRecord({ sessionId: "ses_emu_b1" }),
      { ...minimalRecord({ sessionId: "ses_emu_bogus" }), bogus: 1 },
      big,
      minimalRecord({ sessionId: "ses_emu_b2" }),
      minimalRecord({ sessionId: "ses_emu_conflict", deviceId: "ffffffffffffffffffffffffffffffff" }),
    ]);
    expect(r.status).toBe(200);
    expect(r.json.results).toEqual([
      { sessionId: "ses_emu_b1", action: "inserted" },
      { sessionId: "ses_emu_bogus", action: "rejected", error: expect.stringMatching(/bogus/) },
      { sessionId: "ses_emu_big", action: "rejected", error: expect.stringMatching(/Value is too large/) },
      { sessionId: "ses_emu_b2", action: "inserted" },
      { sessionId: "ses_emu_conflict", action: "inserted" },
    ]);
    for (const x of r.json.results.filter((x: any) => x.action === "rejected")) {
      expect(x.error).not.toContain("\n");
      expect(x.error.length).toBeLessThanOrEqual(500);
    }
    expect((await stored(emu, "ses_emu_b1")).sessionId).toBe("ses_emu_b1");
    expect((await stored(emu, "ses_emu_b2")).sessionId).toBe("ses_emu_b2");
    expect(await stored(emu, "ses_emu_bogus")).toBeNull();
    expect(await stored(emu, "ses_emu_big")).toBeNull();
    // The same session from another device: a per-record conflict.
    const c = await ingest(emu, [minimalRecord({ sessionId: "ses_emu_conflict", updatedAt: FULL.updatedAt + 5 })]);
    expect(c.json.results).toEqual([
      { sessionId: "ses_emu_conflict", action: "conflict", storedDeviceId: "ffffffffffffffffffffffffffffffff" },
    ]);
  });

  test("400 for a body that is not a batch, 413 over 500 records; nothing written", async () => {
    for (const body of ["{", "[]", '{"sessions":[]}', '{"sessions":5}', "{}"]) {
      const r = await postIngest(emu.site!, body);
      expect(r.status).toBe(400);
      expect(r.json).toEqual({ code: "BAD_REQUEST", message: expect.any(String) });
    }
    const many = Array.from({ length: 501 }, (_, i) => minimalRecord({ sessionId: `ses_emu_many_${i}` }));
    const r = await ingest(emu, many);
    expect(r.status).toBe(413);
    expect(r.json).toEqual({ code: "BATCH_TOO_LARGE", message: expect.any(String), limit: 500 });
    expect(await stored(emu, "ses_emu_many_0")).toBeNull();
  });

  test("the HTTP action is also served under /http/ on the API port", async () => {
    const r = await postIngest(`${emu.url}/http`, JSON.stringify({ sessions: [minimalRecord({ sessionId: "ses_emu_http" })] }));
    expect(r.json).toEqual({ results: [{ sessionId: "ses_emu_http", action: "inserted" }] });
  });

  test("there is no public mutation any more; internal functions need the admin key", async () => {
    const pub = await call(emu, "/api/mutation", { path: "sessions:upsertBatch", args: { sessions: [] } });
    expect(pub.json.status).toBe("error");
    expect(pub.json.errorMessage).toMatch(/Could not find public function for 'sessions:upsertBatch'/);
    const old = await call(emu, "/api/mutation", { path: "sessions:ingest", args: { token: TOKEN, sessions: [] } });
    expect(old.json.errorMessage).toMatch(/Could not find public function/);
    const anon = await call(emu, "/api/query", { path: "sessions:get", args: { sessionId: FULL.sessionId } });
    expect(anon.json.errorMessage).toMatch(/Could not find public function for 'sessions:get'/);
    const wrongKey = await call(emu, "/api/query", { path: "sessions:get", args: { sessionId: "x" } }, { authorization: "Convex convex-emu|admin-key" });
    expect(wrongKey.status).toBe(401);
    expect(wrongKey.json).toMatchObject({ code: "BadAdminKey" });
  });

  test("queries through the admin key: a paginated list and the daily totals", async () => {
    const list = await adminQuery(emu, "sessions:byDevice", { deviceId: FULL.deviceId, paginationOpts: { numItems: 100, cursor: null } });
    expect(list.json.status).toBe("success");
    const ids = (list.json.value.page as Array<{ sessionId: string }>).map((d) => d.sessionId);
    expect(ids).toContain(FULL.sessionId);
    expect(ids).not.toContain("ses_emu_conflict");
    const day = new Date(FULL.createdAt).toISOString().slice(0, 10);
    const totals = await adminQuery(emu, "totals:daily", { from: day, to: day, deviceId: FULL.deviceId });
    expect(totals.json.status).toBe("success");
    expect(totals.json.value.total.sessions).toBe(ids.length);
    expect(totals.text).toMatch(/"sessions":\d+\.0/);
  });

  test("CONVEX_EMU_LOG gets one JSON line per request, HTTP actions included", async () => {
    await ingest(emu, [minimalRecord()], "wrong");
    const lines = readFileSync(logFile, "utf8").trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(lines.at(-1)).toEqual({ ts: expect.any(Number), method: "POST", path: "/ingest", status: 401 });
    expect(lines).toContainEqual(expect.objectContaining({ method: "POST", path: "/ingest", status: 413 }));
    expect(lines).toContainEqual(expect.objectContaining({ method: "POST", path: "/api/query", status: 200, fn: "sessions:get", outcome: "success" }));
  });

  test("SIGTERM exits 0", async () => {
    expect(await emu.stop()).toEqual({ code: 0, signal: null });
  });
});

describe("emulator CLI without a site port, from another cwd", () => {
  test("stdout is the one listening line; HTTP actions under /http/; default admin key; SIGINT exits 0", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "convex-emu-cwd-"));
    const emu = await startEmu(
      cwd,
      [join(REPO_ROOT, "convex/node_modules/.bin/tsx"), join(REPO_ROOT, "convex/emulator/main.ts")],
      { CONVEX_EMU_PORT: "0", INGEST_TOKEN: TOKEN },
    );
    try {
      expect(emu.stdout()).toMatch(LISTENING);
      const r = await postIngest(`${emu.url}/http`, JSON.stringify({ sessions: [minimalRecord()] }));
      expect(r.json).toEqual({ results: [{ sessionId: FULL.sessionId, action: "inserted" }] });
      const got = await call(
        emu,
        "/api/query",
        { path: "sessions:get", args: { sessionId: FULL.sessionId } },
        { authorization: "Convex convex-emu|admin-key" },
      );
      expect(got.json.value.hostname).toBe(FULL.hostname);
    } finally {
      expect(await emu.stop("SIGINT")).toEqual({ code: 0, signal: null });
      rmSync(cwd, { recursive: true, force: true });
    }
  }, 20_000);
});
