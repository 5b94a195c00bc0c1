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

interface Emu {
  url: string;
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
  const url = await new Promise<string>((ok, bad) => {
    const timer = setTimeout(() => bad(new Error(`emulator did not start in time; stderr:\n${err}`)), 15_000);
    const check = () => {
      const m = LISTENING.exec(out);
      if (m) {
        clearTimeout(timer);
        ok(m[1]);
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

const ingest = (emu: Emu, sessions: unknown[], token = TOKEN) =>
  call(emu, "/api/mutation", { path: "sessions:ingest", args: { token, sessions }, format: "json" });
const adminQuery = (emu: Emu, path: string, args: unknown) =>
  call(emu, "/api/query", { path, args, format: "json" }, { authorization: `Convex ${ADMIN_KEY}` });
const ids = (r: { json: any }) => (r.json.value as Array<{ sessionId: string }>).map((d) => d.sessionId);

describe("emulator CLI (cwd = repository root)", () => {
  let emu: Emu;
  let dir: string;
  let logFile: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "convex-emu-test-"));
    logFile = join(dir, "requests.jsonl");
    emu = await startEmu(REPO_ROOT, ["convex/node_modules/.bin/tsx", "convex/emulator/main.ts"], {
      CONVEX_EMU_PORT: "0",
      CONVEX_EMU_ADMIN_KEY: ADMIN_KEY,
      CONVEX_EMU_LOG: logFile,
      INGEST_TOKEN: TOKEN,
    });
  }, 20_000);
  afterAll(async () => {
    await emu?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("ingest over POST /api/mutation: inserted, then unchanged on a retry, then updated", async () => {
    const first = await ingest(emu, [fullRecord()]);
    expect(first.status).toBe(200);
    expect(first.json).toEqual({ status: "success", value: [{ sessionId: FULL.sessionId, action: "inserted" }] });
    expect((await ingest(emu, [fullRecord()])).json).toEqual({
      status: "success",
      value: [{ sessionId: FULL.sessionId, action: "unchanged" }],
    });
    const newer = fullRecord({ updatedAt: FULL.updatedAt + 1 });
    expect((await ingest(emu, [newer])).json.value).toEqual([{ sessionId: FULL.sessionId, action: "updated" }]);
    expect((await ingest(emu, [fullRecord()])).json.value).toEqual([{ sessionId: FULL.sessionId, action: "stale" }]);
  });

  test("the stored document comes back through the internal get with the admin key, numbers as floats", async () => {
    const sessionId = "ses_emu_floats";
    await ingest(emu, [fullRecord({ sessionId })]);
    const r = await adminQuery(emu, "sessions:get", { sessionId });
    expect(r.status).toBe(200);
    expect(r.json.status).toBe("success");
    // serde_json-style output: integral float64 values carry ".0".
    expect(r.text).toContain('"schemaVersion":1.0');
    expect(r.text).toContain('"messageCount":5.0');
    expect(r.text).toContain(`"createdAt":${FULL.createdAt}.0`);
    expect(r.text).toContain('"cost":0.00512');
    expect(r.text).toContain('"incomplete":true');
    const { _id, _creationTime, ...doc } = r.json.value;
    expect(typeof _id).toBe("string");
    expect(typeof _creationTime).toBe("number");
    expect(doc).toEqual({ ...FULL, sessionId });
  });

  test("a wrong token is HTTP 200 with status error and errorData.code UNAUTHORIZED; nothing is written", async () => {
    const r = await ingest(emu, [minimalRecord({ sessionId: "ses_emu_unauth" })], "not-the-token");
    expect(r.status).toBe(200);
    expect(r.json.status).toBe("error");
    expect(r.json.errorData).toMatchObject({ code: "UNAUTHORIZED", message: expect.any(String) });
    expect(r.text).not.toContain("not-the-token");
    expect(r.text).not.toContain(TOKEN);
    expect((await adminQuery(emu, "sessions:get", { sessionId: "ses_emu_unauth" })).json).toEqual({
      status: "success",
      value: null,
    });
  });

  test("internal queries need the admin key", async () => {
    const anon = await call(emu, "/api/query", { path: "sessions:get", args: { sessionId: FULL.sessionId } });
    expect(anon.status).toBe(200);
    expect(anon.json.status).toBe("error");
    expect(anon.json.errorMessage).toMatch(/Could not find public function for 'sessions:get'/);
    const wrongKey = await call(
      emu,
      "/api/query",
      { path: "sessions:list", args: {} },
      { authorization: "Convex convex-emu|admin-key" },
    );
    expect(wrongKey.status).toBe(401);
    expect(wrongKey.json).toMatchObject({ code: "BadAdminKey" });
    const admin = await adminQuery(emu, "sessions:get", { sessionId: FULL.sessionId });
    expect(admin.json.status).toBe("success");
    expect(admin.json.value.sessionId).toBe(FULL.sessionId);
  });

  test("a device conflict is a per-item result", async () => {
    const sessionId = "ses_emu_conflict";
    await ingest(emu, [minimalRecord({ sessionId })]);
    const r = await ingest(emu, [minimalRecord({ sessionId, deviceId: "ffffffffffffffffffffffffffffffff", updatedAt: 1 })]);
    expect(r.json).toEqual({
      status: "success",
      value: [{ sessionId, action: "conflict", storedDeviceId: FULL.deviceId }],
    });
  });

  test("an invalid record is an ArgumentValidationError for the whole batch", async () => {
    const r = await ingest(emu, [
      minimalRecord({ sessionId: "ses_emu_valid" }),
      { ...minimalRecord({ sessionId: "ses_emu_invalid" }), bogus: 1 },
    ]);
    expect(r.status).toBe(200);
    expect(r.json.status).toBe("error");
    expect(r.json.errorMessage).toMatch(/ArgumentValidationError: Object contains extra field `bogus`/);
    expect(r.json.errorData).toBeUndefined();
    expect((await adminQuery(emu, "sessions:get", { sessionId: "ses_emu_valid" })).json.value).toBeNull();
  });

  test("more than 1000 records is BATCH_TOO_LARGE", async () => {
    const many = Array.from({ length: 1001 }, (_, i) => minimalRecord({ sessionId: `ses_emu_big_${i}` }));
    const r = await ingest(emu, many);
    expect(r.json.status).toBe("error");
    expect(r.json.errorData).toMatchObject({ code: "BATCH_TOO_LARGE", limit: 1000.0, got: 1001.0 });
    expect(r.text).toContain('"limit":1000.0');
  });

  test("list and stats through the admin key", async () => {
    const list = await adminQuery(emu, "sessions:list", { deviceId: FULL.deviceId, limit: 100 });
    expect(list.json.status).toBe("success");
    expect(ids(list)).toContain(FULL.sessionId);
    const stats = await adminQuery(emu, "sessions:stats", {});
    expect(stats.json.value.sessions).toBe(ids(await adminQuery(emu, "sessions:list", {})).length);
    expect(stats.text).toMatch(/"sessions":\d+\.0/);
  });

  test("request-level errors are non-200 {code, message}", async () => {
    const r = await fetch(emu.url + "/api/mutation", { method: "POST", body: "{}" });
    expect(r.status).toBe(400);
    expect(await r.json()).toMatchObject({ code: "BadJsonBody", message: expect.any(String) });
  });

  test("CONVEX_EMU_LOG gets one JSON line per request, written before the response", async () => {
    await ingest(emu, [], "wrong");
    const lines = readFileSync(logFile, "utf8").trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(lines.at(-1)).toEqual({
      ts: expect.any(Number),
      method: "POST",
      path: "/api/mutation",
      status: 200,
      fn: "sessions:ingest",
      outcome: "error",
      errorCode: "UNAUTHORIZED",
    });
    expect(lines).toContainEqual(
      expect.objectContaining({ method: "POST", path: "/api/mutation", status: 400 }),
    );
    expect(lines.filter((l) => l.fn === "sessions:ingest" && l.outcome === "success").length).toBeGreaterThanOrEqual(5);
  });

  test("stdout is exactly the listening line; SIGTERM exits 0", async () => {
    expect(emu.stdout()).toMatch(LISTENING);
    expect(await emu.stop()).toEqual({ code: 0, signal: null });
  });
});

describe("emulator CLI from another cwd", () => {
  test("finds its functions from any cwd, with the default admin key; SIGINT exits 0", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "convex-emu-cwd-"));
    const emu = await startEmu(
      cwd,
      [join(REPO_ROOT, "convex/node_modules/.bin/tsx"), join(REPO_ROOT, "convex/emulator/main.ts")],
      { CONVEX_EMU_PORT: "0", INGEST_TOKEN: TOKEN },
    );
    try {
      expect((await ingest(emu, [minimalRecord()])).json.value).toEqual([
        { sessionId: FULL.sessionId, action: "inserted" },
      ]);
      const r = await call(
        emu,
        "/api/query",
        { path: "sessions:get", args: { sessionId: FULL.sessionId } },
        { authorization: "Convex convex-emu|admin-key" },
      );
      expect(r.json.value.hostname).toBe(FULL.hostname);
    } finally {
      expect(await emu.stop("SIGINT")).toEqual({ code: 0, signal: null });
      rmSync(cwd, { recursive: true, force: true });
    }
  }, 20_000);
});
