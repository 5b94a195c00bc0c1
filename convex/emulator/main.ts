// CLI entry point of the Convex HTTP API emulator.
//
//   node convex/node_modules/.bin/tsx convex/emulator/main.ts     (cwd = repository root)
//   npm run emu                                                   (cwd = convex/)
//
// Environment:
//   CONVEX_EMU_PORT       API port, default 3210; 0 = pick a free port
//   CONVEX_EMU_HOST       listen address, default 127.0.0.1
//   CONVEX_EMU_ADMIN_KEY  key accepted as `Authorization: Convex <key>`, default convex-emu|admin-key
//   CONVEX_EMU_SITE_PORT  port serving HTTP actions at "/" (like https://<name>.convex.site), e.g.
//                         POST /ingest; 0 = pick a free port; default none (off). HTTP actions are
//                         also served under /http/ on the API port.
//   CONVEX_EMU_REDACT     1 = production-style error redaction
//   CONVEX_EMU_LOG        file to append one JSON line per request: {ts, method, path, status, …}
//   INGEST_TOKEN          read by the functions (the HTTP action POST /ingest) through `env`
//   RETENTION_DAYS        read by retention:purge (not run on a schedule here: crons are not emulated)
//
// stdout gets exactly one line once the API port is listening:
//   convex-emu listening on http://127.0.0.1:<port>
// and, with CONVEX_EMU_SITE_PORT set, a second one once both ports listen (the two lines are
// written together, in this order):
//   convex-emu site on http://127.0.0.1:<sitePort>
// Everything else (request log, function console output outside a call) goes to stderr.
// SIGTERM / SIGINT: close and exit 0; the same when the parent process dies. Bad configuration:
// exit 2. Cannot listen: exit 1.
import { appendFileSync } from "node:fs";
import { format } from "node:util";
import { startEmulator, type RequestLogEntry } from "./emulator";

// Keep stdout for the "listening" / "site" lines.
for (const level of ["log", "info", "debug", "warn", "error"] as const) {
  console[level] = (...args: unknown[]) => void process.stderr.write(format(...args) + "\n");
}

function fail(code: number, message: string): never {
  process.stderr.write(`convex-emu: ${message}\n`);
  process.exit(code);
}

function portFromEnv(name: string, fallback: string): number | undefined {
  const raw = (process.env[name] ?? "").trim() || fallback;
  if (raw === "none") return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) > 65535) fail(2, `${name} must be a port number (0 = any free port) or "none", got ${JSON.stringify(raw)}`);
  return Number(raw);
}

const port = portFromEnv("CONVEX_EMU_PORT", "3210");
if (port === undefined) fail(2, "CONVEX_EMU_PORT cannot be none");
const sitePort = portFromEnv("CONVEX_EMU_SITE_PORT", "none");
const host = process.env.CONVEX_EMU_HOST || "127.0.0.1";
const adminKey = process.env.CONVEX_EMU_ADMIN_KEY || "convex-emu|admin-key";
const logFile = process.env.CONVEX_EMU_LOG || undefined;

let onRequest: ((e: RequestLogEntry) => void) | undefined;
if (logFile !== undefined) {
  try {
    appendFileSync(logFile, "");
  } catch (e) {
    fail(2, `cannot write CONVEX_EMU_LOG ${logFile}: ${(e as Error).message}`);
  }
  onRequest = (e) => appendFileSync(logFile, JSON.stringify(e) + "\n");
}

let emu: Awaited<ReturnType<typeof startEmulator>> | undefined;
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  if (emu === undefined) process.exit(0);
  const force = setTimeout(() => process.exit(0), 2000);
  force.unref();
  emu.close().finally(() => process.exit(0));
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

// `tsx main.ts` runs this file in a child process of the tsx CLI. tsx forwards SIGTERM/SIGINT,
// but if it is killed outright (SIGKILL, e.g. Rust's `Child::kill`), this process would be left
// listening forever. Exit when the parent goes away. (`process.ppid` is fixed at startup in Node
// 20, so probe the parent with signal 0 instead.)
const parentPid = process.ppid;
setInterval(() => {
  try {
    process.kill(parentPid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") stop();
  }
}, 250).unref();

try {
  emu = await startEmulator({
    host,
    port,
    sitePort,
    adminKey,
    redactErrors: process.env.CONVEX_EMU_REDACT === "1",
    log: (line) => process.stderr.write(`[convex-emu] ${line}\n`),
    onRequest,
  });
} catch (e) {
  fail(1, `cannot start: ${(e as Error)?.stack ?? String(e)}`);
}
if (stopping) {
  await emu.close();
  process.exit(0);
}

process.stdout.write(
  `convex-emu listening on ${emu.url}\n` + (emu.siteUrl !== undefined ? `convex-emu site on ${emu.siteUrl}\n` : ""),
);
