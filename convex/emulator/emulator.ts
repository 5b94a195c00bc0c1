// convex-emu: a loopback HTTP server that speaks the Convex deployment HTTP API
// (POST /api/query, /api/mutation, /api/action, /api/run/{module}/{fn}, /api/function) and, if the
// functions dir has an http.ts, HTTP actions (under /http/... and optionally at the root of a
// second "site" port), executing the REAL functions of ../convex/ against convex-test's in-memory
// backend.
//
// It is a test double for a client (the opencode-telemetry daemon), NOT a Convex backend: see
// ../README.md for what is and isn't faithful. Request/response shapes follow
// get-convex/convex-backend crates/local_backend/src/public_api.rs.
//
// Adapted from the shared convex-emu harness (server/emulator.ts).
import http from "node:http";
import { randomBytes } from "node:crypto";
import { readdirSync, statSync } from "node:fs";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { inspect } from "node:util";
import { convexTest } from "convex-test";
import { makeFunctionReference, type SchemaDefinition } from "convex/server";
import { ConvexError, convexToJson, getDocumentSize, jsonToConvex, type Value } from "convex/values";

type Loader = () => Promise<unknown>;
type UdfType = "query" | "mutation" | "action";

/** The functions dir this emulator belongs to (`convex/convex/`), independent of the cwd. */
export const DEFAULT_CONVEX_DIR = fileURLToPath(new URL("../convex/", import.meta.url));

/** One served request, as handed to `EmulatorOptions.onRequest` (written before the response). */
export interface RequestLogEntry {
  /** Epoch milliseconds when the response was written. */
  ts: number;
  method: string;
  /** URL path without the query string. */
  path: string;
  /** HTTP status of the response. */
  status: number;
  /** The function called ("sessions:get"), when the request got that far (not set for HTTP actions). */
  fn?: string;
  /** "success" | "error" for function calls answered with HTTP 200. */
  outcome?: "success" | "error";
  /** `errorData.code` of a ConvexError, when there is one. */
  errorCode?: string;
}

export interface EmulatorOptions {
  /** Directory holding schema.ts, function modules and _generated/. Default: DEFAULT_CONVEX_DIR. */
  convexDir?: string;
  /** Explicit module map (e.g. from vitest's import.meta.glob). Default: scan convexDir. */
  modules?: Record<string, Loader>;
  schema?: SchemaDefinition<any, boolean>;
  host?: string;
  /** API port (like `.convex.cloud`, local backend 3210). 0 = ephemeral. */
  port?: number;
  /** Optional second port serving HTTP actions at "/" (like `.convex.site`, local backend 3211). */
  sitePort?: number;
  /** Admin key accepted as `Authorization: Convex <adminKey>` (grants internal functions). */
  adminKey?: string;
  /** Max request body, bytes. Real backend: 16 MiB + 2000 (MAX_BACKEND_PUBLIC_API_REQUEST_SIZE). */
  maxBodyBytes?: number;
  /** Simulate production-deployment error redaction ("Server Error" only, no log lines). */
  redactErrors?: boolean;
  log?: (line: string) => void;
  /** Called once per request, synchronously, just before the response is sent. */
  onRequest?: (entry: RequestLogEntry) => void;
}

export interface RunningEmulator {
  url: string;
  siteUrl?: string;
  close(): Promise<void>;
}

/** Poor man's import.meta.glob("convex/**\/*.*s") for running outside Vite/Vitest. */
export function scanModules(convexDir: string): Record<string, Loader> {
  const out: Record<string, Loader> = {};
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      if (statSync(full).isDirectory()) {
        if (name !== "node_modules") walk(full);
      } else if (/\.(ts|js|mts|mjs)$/.test(name) && !name.endsWith(".d.ts")) {
        out[full] = () => import(pathToFileURL(full).href);
      }
    }
  };
  walk(resolve(convexDir));
  return out;
}

class HttpError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

const requestId = () => randomBytes(8).toString("hex");

// ---- Value / document limits (convex-test does not enforce these; the backend does) ----
// Sources: crates/value/src/{array.rs,object.rs}, crates/common/src/document.rs,
// crates/convex/sync_types/src/identifier.rs in get-convex/convex-backend.
const MAX_ARRAY_LEN = 8192;
const MAX_OBJECT_FIELDS = 1024;
const MAX_USER_SIZE = 1 << 20;
const MAX_DOCUMENT_NESTING = 16;
const MAX_IDENTIFIER_LEN = 64;

/** Array length / object field-count limits, applied to every Convex value (args included). */
function checkValueLimits(v: Value): void {
  if (Array.isArray(v)) {
    if (v.length > MAX_ARRAY_LEN) {
      throw new Error(`Array length is too long (${v.length} > maximum length ${MAX_ARRAY_LEN})`);
    }
    v.forEach(checkValueLimits);
  } else if (v !== null && typeof v === "object" && !(v instanceof ArrayBuffer)) {
    const entries = Object.entries(v);
    if (entries.length > MAX_OBJECT_FIELDS) {
      throw new Error(`Object has too many fields (${entries.length} > maximum number ${MAX_OBJECT_FIELDS})`);
    }
    entries.forEach(([, x]) => x !== undefined && checkValueLimits(x as Value));
  }
}

/** Containers count 1 + max(children); scalars 0 (crates/value nesting()). */
function nesting(v: Value): number {
  if (Array.isArray(v)) return 1 + Math.max(0, ...v.map(nesting));
  if (v !== null && typeof v === "object" && !(v instanceof ArrayBuffer)) {
    return 1 + Math.max(0, ...Object.values(v).filter((x) => x !== undefined).map((x) => nesting(x as Value)));
  }
  return 0;
}

const fmtSize = (n: number) =>
  n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(2)} KiB` : `${n} B`;

/** Checks the backend applies to every stored document (after the write is applied). */
function checkDocumentLimits(doc: Record<string, Value>): void {
  const size = getDocumentSize(doc as never);
  if (size > MAX_USER_SIZE) {
    throw new Error(`Value is too large (${fmtSize(size)} > maximum size ${fmtSize(MAX_USER_SIZE)})`);
  }
  const depth = nesting(doc);
  if (depth > MAX_DOCUMENT_NESTING) {
    throw new Error(`Document is too nested (nested ${depth} levels deep > maximum nesting ${MAX_DOCUMENT_NESTING})`);
  }
  for (const k of Object.keys(doc)) {
    if (k === "_id" || k === "_creationTime") continue;
    if (k.startsWith("_")) throw new Error(`System field \`${k}\` cannot be set by user code (top-level fields starting with "_" are reserved)`);
    if (k.length > MAX_IDENTIFIER_LEN || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
      throw new Error(`Invalid top-level field name \`${k}\`: Identifiers must start with a letter and can only contain letters, digits, and underscores (max ${MAX_IDENTIFIER_LEN})`);
    }
  }
  checkValueLimits(doc as Value);
}

// ---- Argument validation (backend-style wording, approximate) ----
type VJson = { type: string; value?: any; tableName?: string; keys?: any; values?: any };

function validatorToString(v: VJson): string {
  switch (v.type) {
    case "number": return "v.float64()";
    case "bigint": return "v.int64()";
    case "object":
      return `v.object({${Object.entries(v.value as Record<string, { fieldType: VJson; optional: boolean }>)
        .map(([k, f]) => `${k}: ${f.optional ? `v.optional(${validatorToString(f.fieldType)})` : validatorToString(f.fieldType)}`)
        .join(", ")}})`;
    case "array": return `v.array(${validatorToString(v.value)})`;
    case "union": return `v.union(${(v.value as VJson[]).map(validatorToString).join(", ")})`;
    case "literal": return `v.literal(${JSON.stringify(v.value)})`;
    case "id": return `v.id("${v.tableName}")`;
    case "record": return `v.record(${validatorToString(v.keys)}, ${validatorToString(v.values.fieldType)})`;
    default: return `v.${v.type}()`;
  }
}

/** Returns null if `x` matches validator `v`, else a message like the backend's ValidationError. */
function checkValidator(v: VJson, x: Value | undefined, path: string): string | null {
  const noMatch = () =>
    `Value does not match validator.\nPath: ${path || "(root)"}\nValue: ${JSON.stringify(convexToJson(x as Value))}\nValidator: ${validatorToString(v)}`;
  const isObj = x !== null && typeof x === "object" && !Array.isArray(x) && !(x instanceof ArrayBuffer);
  switch (v.type) {
    case "any": return null;
    case "null": return x === null ? null : noMatch();
    case "number": return typeof x === "number" ? null : noMatch();
    case "bigint":
    case "commitTs": return typeof x === "bigint" ? null : noMatch();
    case "boolean": return typeof x === "boolean" ? null : noMatch();
    case "string": return typeof x === "string" ? null : noMatch();
    case "bytes": return x instanceof ArrayBuffer ? null : noMatch();
    case "id": return typeof x === "string" ? null : noMatch(); // table check not emulated
    case "literal":
      return JSON.stringify(convexToJson(x as Value)) === JSON.stringify(v.value) ? null : noMatch();
    case "array":
      if (!Array.isArray(x)) return noMatch();
      for (let i = 0; i < x.length; i++) {
        const e = checkValidator(v.value, x[i], `${path}[${i}]`);
        if (e) return e;
      }
      return null;
    case "union":
      return (v.value as VJson[]).some((alt) => checkValidator(alt, x, path) === null) ? null : noMatch();
    case "record": {
      if (!isObj) return noMatch();
      for (const [k, val] of Object.entries(x as Record<string, Value>)) {
        if (checkValidator(v.keys, k, `${path}.${k}`) !== null) return noMatch();
        const e = checkValidator(v.values.fieldType, val, `${path}.${k}`);
        if (e) return e;
      }
      return null;
    }
    case "object": {
      if (!isObj) return noMatch();
      const fields = v.value as Record<string, { fieldType: VJson; optional: boolean }>;
      const obj = x as Record<string, Value | undefined>;
      for (const [k, f] of Object.entries(fields)) {
        if (obj[k] === undefined) {
          if (f.optional) continue;
          return `Object is missing the required field \`${k}\`. Consider wrapping the field validator in \`v.optional(...)\` if this is expected.\nPath: ${path || "(root)"}\nObject: ${JSON.stringify(convexToJson(obj as Value))}\nValidator: ${validatorToString(v)}`;
        }
        const e = checkValidator(f.fieldType, obj[k] as Value, `${path}.${k}`);
        if (e) return e;
      }
      for (const k of Object.keys(obj)) {
        if (obj[k] !== undefined && !(k in fields)) {
          return `Object contains extra field \`${k}\` that is not in the validator.\nPath: ${path || "(root)"}\nObject: ${JSON.stringify(convexToJson(obj as Value))}\nValidator: ${validatorToString(v)}`;
        }
      }
      return null;
    }
    default: return null;
  }
}

/**
 * Wrap convex-test's global `Convex.asyncSyscall` so every insert/patch/replace re-reads the written
 * document and enforces checkDocumentLimits. Throwing inside the syscall fails the mutation and
 * convex-test rolls the transaction back, like the backend would.
 */
function installDocumentLimitChecks(): void {
  const g = globalThis as unknown as { Convex: { syscall: unknown; asyncSyscall: (op: string, a: string) => Promise<string>; jsSyscall: unknown }; __convexEmuLimits?: boolean };
  if (g.__convexEmuLimits) return;
  g.__convexEmuLimits = true;
  const base = g.Convex;
  g.Convex = {
    get syscall() {
      return base.syscall;
    },
    get jsSyscall() {
      return base.jsSyscall;
    },
    get asyncSyscall() {
      const orig = base.asyncSyscall;
      return async (op: string, argsStr: string) => {
        const result = await orig(op, argsStr);
        if (op === "1.0/insert" || op === "1.0/shallowMerge" || op === "1.0/replace") {
          const a = JSON.parse(argsStr);
          const id = op === "1.0/insert" ? JSON.parse(result)._id : a.id;
          const doc = jsonToConvex(JSON.parse(await orig("1.0/get", JSON.stringify({ id, table: a.table })))) as Record<string, Value>;
          if (doc !== null) checkDocumentLimits(doc);
        }
        return result;
      };
    },
  };
}

/** ConvexCleanJSON export ("json" format): int64 -> base-10 string, bytes -> base64, NaN/Inf -> strings. */
function exportClean(v: Value): unknown {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "NaN";
    if (v === Infinity) return "Infinity";
    if (v === -Infinity) return "-Infinity";
    return v;
  }
  if (v instanceof ArrayBuffer) return Buffer.from(v).toString("base64");
  if (Array.isArray(v)) return v.map(exportClean);
  return Object.fromEntries(
    Object.entries(v as Record<string, Value>)
      .filter(([, x]) => x !== undefined)
      .map(([k, x]) => [k, exportClean(x)]),
  );
}

function exportValue(v: Value, format: string): unknown {
  return format === "convex_encoded_json" ? convexToJson(v) : exportClean(v);
}

function parseFormat(f: unknown, fallback: string): string {
  if (f === undefined || f === null) return fallback;
  switch (f) {
    case "json":
    case "convex_clean_json":
      return "json";
    case "convex_encoded_json":
    case "convex_json":
      return "convex_encoded_json";
    default:
      throw new HttpError(400, "BadFormat", `format param must be one of [\`json\`]. Got ${String(f)}`);
  }
}

/** "sessions:upsert" | "sessions.js:upsert" | "dir/mod" (default export) -> [module, export]. */
function parsePath(path: unknown): [string, string] {
  if (typeof path !== "string" || path.length === 0) {
    throw new HttpError(400, "BadJsonBody", "missing field `path`");
  }
  let [mod, fn] = path.split(":", 2);
  fn = fn ?? "default";
  mod = mod.replace(/\.js$/, "");
  if (!/^[A-Za-z0-9_\-./]+$/.test(mod) || !/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(fn) || mod.startsWith("_")) {
    throw new HttpError(
      400,
      "BadConvexFunctionIdentifier",
      `${path} is not a valid path to a Convex function.`,
    );
  }
  return [mod, fn];
}

// Known client names are refused at or below these versions (crates/common/deprecation.json,
// ClientVersion::current_state; `below_threshold` is `<=`, and a non-semver version counts as below).
const UNSUPPORTED_AT_OR_BELOW: Record<string, [number, number, number]> = {
  npm: [0, 19, 1], "npm-cli": [0, 19, 1], actions: [0, 19, 1],
  python: [0, 0, 2], "python-convex": [0, 0, 2],
  rust: [0, 0, 1],
};

function checkClientVersion(header: string): void {
  const parts = header.split("-");
  if (parts.length < 2) {
    throw new HttpError(400, "InvalidClientVersion", `Failed to parse client version string: '${header}'. Expected format is {client_name}-{semver}, e.g. my-esolang-client-0.0.1`);
  }
  // Longest semver suffix from the right, like ClientVersion::from_str.
  let client = parts[0];
  let version: [number, number, number] | null = null;
  for (let n = 1; n < parts.length; n++) {
    const m = /^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$/.exec(parts.slice(n).join("-"));
    if (m) {
      client = parts.slice(0, n).join("-");
      version = [Number(m[1]), Number(m[2]), Number(m[3])];
      break;
    }
  }
  const threshold = UNSUPPORTED_AT_OR_BELOW[client.toLowerCase()];
  if (threshold === undefined) return;
  const cmp = version === null ? -1 : version[0] - threshold[0] || version[1] - threshold[1] || version[2] - threshold[2];
  if (cmp <= 0) {
    throw new HttpError(400, "ClientVersionUnsupported", `The Convex ${client.toLowerCase()} package at version ${version ? version.join(".") : parts.slice(1).join("-")} is no longer supported.`);
  }
}

class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

const LEVELS = ["log", "info", "warn", "error", "debug"] as const;

/** Capture console output of one (serialized) function call as Convex-style log lines. */
async function withLogCapture<T>(fn: () => Promise<T>): Promise<[T | undefined, unknown, string[]]> {
  const lines: string[] = [];
  const saved = LEVELS.map((l) => console[l]);
  LEVELS.forEach((l) => {
    console[l] = (...args: unknown[]) =>
      lines.push(
        `[${l.toUpperCase()}] ` +
          args.map((a) => inspect(a, { depth: 6, breakLength: Infinity })).join(" "),
      );
  });
  try {
    return [await fn(), undefined, lines];
  } catch (e) {
    return [undefined, e ?? new Error("undefined thrown"), lines];
  } finally {
    LEVELS.forEach((l, i) => (console[l] = saved[i]));
  }
}

async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > limit) {
      throw new HttpError(400, "BadJsonBody", "Failed to buffer the request body: length limit exceeded");
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Format a float64 exactly like serde_json (the backend serializes responses with it): integral
 * values get ".0" ("3.0", "1700000000000.0"), exponent form outside 1e-5 <= |x| < 1e16 ("1e+16",
 * "1e-7"). Cross-checked against serde_json 1.x on ~3000 values. A Rust client deserializing a
 * `json`-format number into u32/i64 therefore FAILS on a real backend ("invalid type: floating
 * point `3.0`"); use f64 (or a lenient deserializer) for every Convex `v.number()` field.
 */
export function formatF64LikeSerdeJson(x: number): string {
  if (Object.is(x, -0)) return "-0.0";
  const [mant, expStr] = x.toExponential().split("e");
  const digits = mant.replace("-", "").replace(".", "");
  const n = digits.length;
  const kk = Number(expStr) + 1; // position of the decimal point after the first digit
  const sign = x < 0 ? "-" : "";
  if (n <= kk && kk <= 16) return sign + digits + "0".repeat(kk - n) + ".0";
  if (0 < kk && kk <= 16) return sign + digits.slice(0, kk) + "." + digits.slice(kk);
  if (-5 < kk && kk <= 0) return sign + "0." + "0".repeat(-kk) + digits;
  const m = n === 1 ? digits : digits[0] + "." + digits.slice(1);
  const e = kk - 1;
  return sign + m + "e" + (e >= 0 ? "+" : "") + e;
}

/** JSON.stringify, but numbers rendered the serde_json way (see formatF64LikeSerdeJson). */
export function stringifyLikeBackend(v: unknown): string {
  if (v === null || v === undefined) return "null";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error("non-finite number in response");
    return formatF64LikeSerdeJson(v);
  }
  if (typeof v === "string" || typeof v === "boolean") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(stringifyLikeBackend).join(",")}]`;
  return `{${Object.entries(v as Record<string, unknown>)
    .filter(([, x]) => x !== undefined)
    .map(([k, x]) => `${JSON.stringify(k)}:${stringifyLikeBackend(x)}`)
    .join(",")}}`;
}

/** Per-response details for the request log, filled in while the request is handled. */
const responseMeta = new WeakMap<http.ServerResponse, Partial<RequestLogEntry>>();

function sendJson(res: http.ServerResponse, status: number, body: unknown) {
  const meta = responseMeta.get(res);
  if (meta !== undefined && status === 200 && body !== null && typeof body === "object") {
    const b = body as { status?: unknown; errorData?: { code?: unknown } };
    if (b.status === "success" || b.status === "error") meta.outcome = b.status;
    if (typeof b.errorData?.code === "string") meta.errorCode = b.errorData.code;
  }
  const text = stringifyLikeBackend(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

export async function startEmulator(opts: EmulatorOptions): Promise<RunningEmulator> {
  const convexDir = resolve(opts.convexDir ?? DEFAULT_CONVEX_DIR);
  const modules = opts.modules ?? scanModules(convexDir);
  const schema =
    opts.schema ??
    ((await import(pathToFileURL(join(convexDir, "schema.ts")).href)).default as SchemaDefinition<any, boolean>);
  const adminKey = opts.adminKey ?? "convex-emu|admin-key";
  const maxBody = opts.maxBodyBytes ?? (1 << 24) + 2000;
  const log = opts.log ?? (() => {});
  const host = opts.host ?? "127.0.0.1";

  // One in-memory deployment for the server's lifetime. All calls are serialized, which is a
  // valid (serializable) schedule of what a real deployment would do; OCC never happens here.
  const t = convexTest(schema, modules);
  installDocumentLimitChecks(); // must run after convexTest() installed the global `Convex`
  const lock = new Mutex();

  // Module lookup for visibility/type checks (convex-test itself ignores visibility).
  const byModule = new Map<string, Loader>();
  for (const [k, loader] of Object.entries(modules)) {
    let rel: string;
    if (isAbsolute(k) && k.startsWith(convexDir + sep)) {
      rel = relative(convexDir, k).split(sep).join("/");
    } else {
      // import.meta.glob keys such as "../convex/sessions.ts".
      const i = k.lastIndexOf("/convex/");
      rel = i >= 0 ? k.slice(i + "/convex/".length) : k;
    }
    byModule.set(rel.replace(/\.[^./]+$/, ""), loader);
  }

  type Identity =
    | { kind: "none" }
    | { kind: "admin"; keyOk: boolean; actingAs?: Record<string, unknown> }
    | { kind: "user"; claims: Record<string, unknown> | null };

  // Header *syntax* is checked up front (like ExtractAuthenticationToken); the key/JWT itself is
  // checked later (like `st.api.authenticate`), after the body and path were parsed.
  function parseAuthHeader(header: string | undefined): Identity {
    if (header === undefined) return { kind: "none" };
    if (header.length < 7) throw new HttpError(400, "InvalidHeaderFailure", "Invalid authentication header");
    if (header.slice(0, 7).toLowerCase() === "convex ") {
      let key = header.slice(7);
      // Strip the deploy-key type prefix ("prod:", "dev:"...) like remove_type_prefix_from_admin_key.
      const bar = key.indexOf("|");
      const colon = key.indexOf(":");
      if (colon >= 0 && bar >= 0 && colon < bar) key = key.slice(colon + 1);
      let actingAs: Record<string, unknown> | undefined;
      const sep = key.indexOf(":");
      if (sep >= 0) {
        try {
          actingAs = JSON.parse(Buffer.from(key.slice(sep + 1), "base64").toString("utf8"));
        } catch {
          throw new HttpError(400, "HeaderParseFailure", "Malformed Authorization header.");
        }
        key = key.slice(0, sep);
      }
      return { kind: "admin", keyOk: key === adminKey, actingAs };
    }
    if (header.slice(0, 7).toLowerCase() !== "bearer ") {
      throw new HttpError(400, "InvalidAdminKey", "Invalid admin key");
    }
    // NOTE: the JWT signature is NOT verified; the payload becomes ctx.auth's identity.
    const parts = header.slice(7).trim().split(".");
    try {
      const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
      if (parts.length !== 3 || typeof claims !== "object" || claims === null) throw new Error();
      return { kind: "user", claims };
    } catch {
      return { kind: "user", claims: null };
    }
  }

  function verifyIdentity(id: Identity): void {
    if (id.kind === "admin" && !id.keyOk) {
      throw new HttpError(401, "BadAdminKey", "The provided admin key was invalid for this instance");
    }
    if (id.kind === "user" && id.claims === null) {
      throw new HttpError(401, "InvalidAuthHeader", "Could not decode token. (convex-emu accepts any well-formed JWT without checking its signature)");
    }
  }

  function accessorFor(id: Identity) {
    if (id.kind === "user") {
      const c = id.claims ?? {};
      return t.withIdentity({ ...c, subject: c.sub as string | undefined, issuer: c.iss as string | undefined });
    }
    if (id.kind === "admin" && id.actingAs) return t.withIdentity(id.actingAs as Record<string, string>);
    return t;
  }

  async function callFunction(
    expected: UdfType | "any",
    path: string,
    rawArgs: unknown,
    rawFormat: unknown,
    defaultFormat: string,
    identity: Identity,
    meta: Partial<RequestLogEntry>,
  ): Promise<[number, unknown]> {
    const reqId = requestId();
    const redact = opts.redactErrors === true && identity.kind !== "admin";
    const fail = (message: string, lines: string[] = [], errorData?: unknown) => {
      const body: Record<string, unknown> = {
        status: "error",
        errorMessage: redact ? `[Request ID: ${reqId}] Server Error` : `[Request ID: ${reqId}] Server Error\n${message}`,
      };
      fmt();
      if (errorData !== undefined) body.errorData = errorData;
      if (!redact && lines.length > 0) body.logLines = lines;
      return [200, body] as [number, unknown];
    };

    const [mod, fn] = parsePath(path);
    const canonical = `${mod}:${fn}`;
    meta.fn = canonical;
    verifyIdentity(identity);
    // The backend parses `format` only after running the function (public_api.rs), so a bad
    // format yields 400 even though a mutation already committed. Mimicked: parse lazily.
    let formatMemo: string | undefined;
    const fmt = () => (formatMemo ??= parseFormat(rawFormat, defaultFormat));
    const loader = byModule.get(mod);
    const fnObj = loader ? ((await loader()) as Record<string, Record<string, unknown> | undefined>)[fn] : undefined;
    const isFunction = fnObj !== undefined && (fnObj.isQuery || fnObj.isMutation || fnObj.isAction);
    if (!isFunction || (fnObj!.isInternal && identity.kind !== "admin")) {
      // Internal functions are indistinguishable from missing ones without admin auth.
      return fail(`Could not find public function for '${canonical}'.`);
    }
    const actual: UdfType = fnObj!.isQuery ? "query" : fnObj!.isMutation ? "mutation" : "action";
    if (expected !== "any" && expected !== actual) {
      const cap = (s: string) => s[0].toUpperCase() + s.slice(1);
      return fail(`Trying to execute ${canonical} as ${cap(expected)}, but it is defined as ${cap(actual)}.`);
    }

    // Args: a JSON object (named args) or a legacy positional array [object] (ConvexHttpClient sends this).
    let args: Value;
    try {
      const positional = Array.isArray(rawArgs) ? rawArgs : [rawArgs ?? {}];
      if (positional.length !== 1) throw new Error(`Expected exactly one argument object, got ${positional.length}`);
      args = jsonToConvex(positional[0] as never);
      if (args === null || typeof args !== "object" || Array.isArray(args) || args instanceof ArrayBuffer) {
        throw new Error(`The arguments to a Convex function must be an object. Received: ${JSON.stringify(positional[0])}`);
      }
      checkValueLimits(args);
      const argBytes = Buffer.byteLength(JSON.stringify(positional[0]));
      if (argBytes > 1 << 24) throw new Error(`Arguments for ${canonical} are too large (actual: ${fmtSize(argBytes)}, limit: 16 MiB)`);
    } catch (e) {
      return fail(`Invalid arguments for ${canonical}: ${(e as Error).message}`);
    }

    // Validate args against the function's exported validator, as the backend does before running it.
    const exportArgs = (fnObj as { exportArgs?: () => string }).exportArgs;
    if (typeof exportArgs === "function") {
      const argsValidator = JSON.parse(exportArgs()) as VJson;
      const problem = checkValidator(argsValidator, args, "");
      if (problem !== null) return fail(`ArgumentValidationError: ${problem}`);
    }

    const ref = makeFunctionReference<any>(canonical);
    const accessor = accessorFor(identity);
    const [value, err, lines] = await lock.run(() =>
      withLogCapture(() =>
        actual === "query"
          ? accessor.query(ref, args as never)
          : actual === "mutation"
            ? accessor.mutation(ref, args as never)
            : accessor.action(ref, args as never),
      ),
    );
    if (err !== undefined) {
      const e = err as Error & { data?: Value };
      const isConvexError = e instanceof ConvexError || (e as { name?: string }).name === "ConvexError";
      const msg = `Uncaught ${e.name ?? "Error"}: ${e.message}`;
      return fail(msg, lines, isConvexError && e.data !== undefined ? exportValue(e.data as Value, fmt()) : undefined);
    }
    const body: Record<string, unknown> = {
      status: "success",
      value: exportValue((value ?? null) as Value, fmt()),
    };
    if (!redact && lines.length > 0) body.logLines = lines;
    return [200, body];
  }

  async function handleHttpAction(req: http.IncomingMessage, res: http.ServerResponse, path: string) {
    if (!byModule.has("http")) {
      // No convex/http.ts: the deployment has no HTTP routes.
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("No matching routes found");
      return;
    }
    const body = req.method === "GET" || req.method === "HEAD" ? undefined : await readBody(req, 20 << 20);
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (typeof v === "string") headers.set(k, v);
      else if (Array.isArray(v)) v.forEach((x) => headers.append(k, x));
    }
    const response = await lock.run(() =>
      t.fetch(path, { method: req.method, headers, body: body && body.length > 0 ? new Uint8Array(body) : undefined }),
    );
    const buf = Buffer.from(await response.arrayBuffer());
    const outHeaders: Record<string, string> = {};
    response.headers.forEach((v, k) => (outHeaders[k] = v));
    outHeaders["content-length"] = String(buf.length);
    res.writeHead(response.status, outHeaders);
    res.end(buf);
  }

  async function handleApi(req: http.IncomingMessage, res: http.ServerResponse) {
    const url = new URL(req.url ?? "/", "http://emu");
    const p = url.pathname;

    if (req.method === "GET" && (p === "/" || p === "/version" || p === "/instance_name")) {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(p === "/" ? "This Convex deployment is running. See https://docs.convex.dev/." : p === "/version" ? "convex-emu" : "convex-emu");
      return;
    }
    if (p.startsWith("/http/")) return handleHttpAction(req, res, p.slice("/http".length) + url.search);

    let expected: UdfType | "any";
    let pathFromUrl: string | undefined;
    if (p === "/api/query") expected = "query";
    else if (p === "/api/mutation") expected = "mutation";
    else if (p === "/api/action") expected = "action";
    else if (p === "/api/function") expected = "any";
    else if (p.startsWith("/api/run/")) {
      expected = "any";
      const parts = p.slice("/api/run/".length).split("/").map(decodeURIComponent);
      if (parts.length < 2 || parts.some((x) => x === "")) {
        throw new HttpError(400, "MissingIdentifier", "Path or function name not provided in path, e.g. /api/run/messages/list");
      }
      const fn = parts.pop()!;
      pathFromUrl = `${parts.join("/")}:${fn}`;
    } else {
      res.writeHead(404).end();
      return;
    }
    if (req.method !== "POST") {
      res.writeHead(405).end();
      return;
    }

    // Convex-Client is checked first (a global middleware in the backend: ConvexHttpService).
    const cv = req.headers["convex-client"];
    if (typeof cv === "string") checkClientVersion(cv);
    const identity = parseAuthHeader(req.headers.authorization);
    const ct = req.headers["content-type"] ?? "";
    if (!/^application\/(.+\+)?json/i.test(ct)) {
      throw new HttpError(400, "BadJsonBody", "Expected request with `Content-Type: application/json`");
    }
    const raw = await readBody(req, maxBody);
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw.toString("utf8"));
      if (body === null || typeof body !== "object" || Array.isArray(body)) throw new Error("expected a JSON object");
    } catch (e) {
      throw new HttpError(400, "BadJsonBody", `Failed to deserialize the JSON body into the target type: ${(e as Error).message}`);
    }
    if (!("args" in body)) throw new HttpError(400, "BadJsonBody", "Failed to deserialize the JSON body into the target type: missing field `args`");
    if (p === "/api/function") {
      // UdfPostRequestWithComponent::component_path -> must_be_admin: admin-only endpoint.
      verifyIdentity(identity);
      if (identity.kind !== "admin") {
        throw new HttpError(403, "BadDeployKey", "The provided deploy key was invalid for this deployment. Double check that the environment this key was generated for matches the desired deployment.");
      }
    }
    const meta = responseMeta.get(res) ?? {};
    const [status, out] = await callFunction(expected, pathFromUrl ?? (body.path as string), body.args, body.format, "json", identity, meta);
    sendJson(res, status, out);
  }

  function wrap(handler: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>) {
    return (req: http.IncomingMessage, res: http.ServerResponse) => {
      const started = Date.now();
      const meta: Partial<RequestLogEntry> = {};
      responseMeta.set(res, meta);
      if (opts.onRequest !== undefined) {
        // Report the request synchronously just before the response goes out, so a client that has
        // its response can rely on the entry being there.
        const onRequest = opts.onRequest;
        const end = res.end;
        let reported = false;
        res.end = function (this: http.ServerResponse, ...args: unknown[]) {
          if (!reported) {
            reported = true;
            try {
              onRequest({
                ts: Date.now(),
                method: req.method ?? "",
                path: new URL(req.url ?? "/", "http://emu").pathname,
                status: res.statusCode,
                ...meta,
              });
            } catch (e) {
              log(`request log failed: ${String(e)}`);
            }
          }
          return (end as (...a: unknown[]) => http.ServerResponse).apply(this, args);
        } as typeof res.end;
      }
      handler(req, res)
        .catch((e) => {
          if (e instanceof HttpError) sendJson(res, e.status, { code: e.code, message: e.message });
          else sendJson(res, 500, { code: "InternalServerError", message: String((e as Error)?.stack ?? e) });
        })
        .finally(() => log(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`));
    };
  }

  const listen = (server: http.Server, port: number) =>
    new Promise<number>((ok, bad) => {
      server.once("error", bad);
      server.listen(port, host, () => ok((server.address() as { port: number }).port));
    });

  const api = http.createServer(wrap(handleApi));
  const apiPort = await listen(api, opts.port ?? 3210);
  let site: http.Server | undefined;
  let sitePort: number | undefined;
  if (opts.sitePort !== undefined) {
    site = http.createServer(
      wrap(async (req, res) => {
        const url = new URL(req.url ?? "/", "http://emu");
        await handleHttpAction(req, res, url.pathname + url.search);
      }),
    );
    try {
      sitePort = await listen(site, opts.sitePort);
    } catch (e) {
      await new Promise((r) => api.close(r));
      throw e;
    }
  }
  return {
    url: `http://${host}:${apiPort}`,
    siteUrl: sitePort !== undefined ? `http://${host}:${sitePort}` : undefined,
    close: async () => {
      // closeAllConnections: keep-alive clients (e.g. a reqwest pool) would otherwise hold close() open.
      for (const server of site ? [api, site] : [api]) {
        const closed = new Promise((r) => server.close(r));
        server.closeAllConnections();
        await closed;
      }
    },
  };
}
