// A loopback HTTP shim over `convexTest(schema, modules)`: it runs the REAL functions of
// ../convex/ on convex-test's in-memory backend, so that the daemon's Rust end-to-end tests
// (tests/integration/convex_e2e.rs) can post to them offline. It is a test double, not a backend.
//
//   node --import tsx emulator/shim.ts    (cwd = convex/, Node >= 20.6; or `npm run --silent shim`)
//
// Routes, all on one port:
//   POST /api/query {"path":"sessions:get","args":{…}}   read-back: runs that query (internal ones
//        too: there is no auth, it listens on loopback only) and answers like Convex's function
//        HTTP API: 200 {"status":"success","value":…} or 200 {"status":"error","errorMessage":…}.
//   POST /api/mutation {"path":"devices:create","args":{"name":"e2e"}}   test set-up: runs that
//        (internal) mutation, answered the same way — e.g. to create a device and get its token,
//        as the owner does with `npx convex run devices:create` on a deployment.
//   anything else: convex/http.ts's HTTP actions through `t.fetch` (POST /ingest, as on
//        https://<name>.convex.site); their response is passed through unchanged.
//
// Environment: SHIM_PORT (default 0 = a free port); SHIM_LOG, a file that gets one JSON line
// {"ts","method","path","status"} per request, written before the response goes out;
// INGEST_TOKEN, ALLOW_LEGACY_INGEST_TOKEN and RETENTION_DAYS are read by the functions, as on a
// deployment.
// stdout: exactly one line, once listening: `convex-shim listening on http://127.0.0.1:<port>`.
// SIGTERM / SIGINT: exit 0. State is in memory and empty at every start.
//
// Document limit: Convex rejects a write whose document (system fields included) is over 1 MiB
// (MAX_USER_SIZE in the backend's crates/common/src/document.rs), failing the mutation with
// "Value is too large (… > maximum size 1 MiB)". convex-test — pinned exactly in package.json —
// does the same check itself on every insert/patch/replace (its `checkDocumentSize`, with
// `getDocumentSize` and the same 1 << 20 limit), so the shim adds nothing: the mutation fails,
// the HTTP action turns that into a per-record `rejected` result, exactly as on a deployment.
// Only the wording of the sizes differs (bytes here); tests/shim.test.ts checks the boundary.
import { appendFileSync, readdirSync } from "node:fs";
import http from "node:http";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import schema from "../convex/schema";

const FUNCTIONS_DIR = fileURLToPath(new URL("../convex/", import.meta.url));

/** The modules map convex-test wants (as `import.meta.glob` would give it) for convex/convex/. */
function functionModules(): Record<string, () => Promise<unknown>> {
  const files = readdirSync(FUNCTIONS_DIR, { recursive: true }) as string[];
  return Object.fromEntries(
    files
      .filter((f) => /\.[mc]?[jt]s$/.test(f) && !f.endsWith(".d.ts"))
      .map((f) => [join(FUNCTIONS_DIR, f), () => import(pathToFileURL(join(FUNCTIONS_DIR, f)).href)]),
  );
}

export interface Shim {
  /** `http://127.0.0.1:<port>`: both the HTTP actions and `/api/query`. */
  url: string;
  close(): Promise<void>;
}

/** Starts the shim on 127.0.0.1:`port` (0 = a free one), with a fresh, empty backend. */
export async function startShim(port = 0, log?: (line: string) => void): Promise<Shim> {
  const t = convexTest(schema, functionModules());

  async function handle(req: http.IncomingMessage): Promise<[number, Record<string, string>, Buffer]> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const path = new URL(req.url ?? "/", "http://shim").pathname;
    if (req.method === "POST" && (path === "/api/query" || path === "/api/mutation")) {
      let out: unknown;
      try {
        const { path: fn, args } = JSON.parse(body.toString("utf8"));
        const value =
          path === "/api/query"
            ? await t.query(makeFunctionReference<"query">(fn), args ?? {})
            : await t.mutation(makeFunctionReference<"mutation">(fn), args ?? {});
        out = { status: "success", value: value ?? null };
      } catch (e) {
        out = { status: "error", errorMessage: e instanceof Error ? e.message : String(e) };
      }
      return [200, { "content-type": "application/json" }, Buffer.from(JSON.stringify(out))];
    }
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) for (const x of [v ?? []].flat()) headers.append(k, x);
    const hasBody = body.length > 0 && req.method !== "GET" && req.method !== "HEAD";
    const resp = await t.fetch(req.url ?? "/", { method: req.method, headers, body: hasBody ? body : undefined });
    return [resp.status, Object.fromEntries(resp.headers), Buffer.from(await resp.arrayBuffer())];
  }

  const server = http.createServer((req, res) => {
    handle(req)
      .catch((e): [number, Record<string, string>, Buffer] => [500, { "content-type": "text/plain" }, Buffer.from(String(e?.stack ?? e))])
      .then(([status, headers, body]) => {
        const path = new URL(req.url ?? "/", "http://shim").pathname;
        log?.(JSON.stringify({ ts: Date.now(), method: req.method, path, status }));
        res.writeHead(status, { ...headers, "content-length": String(body.length) }).end(body);
      });
  });
  await new Promise<void>((ok, bad) => server.once("error", bad).listen(port, "127.0.0.1", ok));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections(); // keep-alive clients would otherwise hold close() open
      }),
  };
}

// Run as a program (not when imported by a test).
if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const logFile = process.env.SHIM_LOG;
  const shim = await startShim(Number(process.env.SHIM_PORT ?? 0), logFile ? (l) => appendFileSync(logFile, l + "\n") : undefined);
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => void shim.close().finally(() => process.exit(0)));
  process.stdout.write(`convex-shim listening on ${shim.url}\n`);
}
