// Devices: one credential per machine that sends session records (see "Trust model" in the
// top-level README). All functions are internal: the owner runs them with an admin key,
//
//   npx convex run devices:create '{"name":"work-laptop"}'   # prints the token ONCE
//   npx convex run devices:revoke '{"name":"work-laptop"}'   # its writes stop at once, rows stay
//   npx convex run devices:list                              # names, created, last seen, revoked
//
// A device row keeps the SHA-256 (hex) of its token, never the token. The ingest action
// (http.ts) hashes the bearer token and looks the hash up by index (`by_tokenHash`): the lookup
// is by a hash of a 256-bit random secret, so neither its timing nor a database read reveals the
// token.
//
// `deviceId`: the daemon's pseudonymous device id (daemon/src/identity.rs) the device's records
// carry. A device created without one is bound to the `deviceId` of the first record it sends
// (trust on first use; refused when another device already holds that id), so an install that
// used the legacy INGEST_TOKEN keeps its rows: the new device binds to the id its rows are stored
// under. From then on the ingest action stores every record of that token under that id and
// rejects a record claiming another.
import { ConvexError, v } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, internalQuery, type QueryCtx } from "./_generated/server";

/** Longest device name, in characters. */
export const MAX_NAME_CHARS = 64;

/** Hex SHA-256 of a string's UTF-8 bytes. */
export async function sha256Hex(s: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A new device token: 32 random bytes, base64url without padding (43 characters). */
export function newToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function checkName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name) || name.length > MAX_NAME_CHARS) {
    throw new ConvexError({
      code: "BAD_NAME",
      message: `a device name is 1..${MAX_NAME_CHARS} letters, digits, '.', '_' or '-' (starting with a letter or digit), got ${JSON.stringify(name)}`,
    });
  }
}

export async function deviceByName(ctx: QueryCtx, name: string): Promise<Doc<"devices"> | null> {
  return await ctx.db
    .query("devices")
    .withIndex("by_name", (q) => q.eq("name", name))
    .unique();
}

/**
 * The unrevoked device bound to a record `deviceId`, or null. (A revoked device's id may be
 * bound again: that is how a lost token is replaced, the rows staying with the id.)
 */
export async function deviceById(ctx: QueryCtx, deviceId: string): Promise<Doc<"devices"> | null> {
  const bound = await ctx.db
    .query("devices")
    .withIndex("by_deviceId", (q) => q.eq("deviceId", deviceId))
    .collect();
  return bound.find((d) => d.revokedAt === undefined) ?? null;
}

/**
 * Creates a device and returns `{name, token}`: the token is shown this once (only its hash is
 * stored). `deviceId` (optional) binds the device to that record id at once instead of on first
 * use. ConvexError BAD_NAME, NAME_TAKEN (names are unique, revoked ones included), ID_TAKEN.
 */
export const create = internalMutation({
  args: { name: v.string(), deviceId: v.optional(v.string()) },
  returns: v.object({ name: v.string(), token: v.string() }),
  handler: async (ctx, { name, deviceId }) => {
    checkName(name);
    if ((await deviceByName(ctx, name)) !== null) {
      throw new ConvexError({ code: "NAME_TAKEN", message: `a device named ${JSON.stringify(name)} exists already` });
    }
    if (deviceId !== undefined && (await deviceById(ctx, deviceId)) !== null) {
      throw new ConvexError({ code: "ID_TAKEN", message: "another device is bound to that deviceId" });
    }
    const token = newToken();
    await ctx.db.insert("devices", { name, tokenHash: await sha256Hex(token), createdAt: Date.now(), deviceId });
    return { name, token };
  },
});

/**
 * Revokes a device: from the next request on, its token gets 401 and writes nothing. Its
 * session rows stay. Revoking twice keeps the first time. Returns `{name, revokedAt}`;
 * ConvexError NO_SUCH_DEVICE.
 */
export const revoke = internalMutation({
  args: { name: v.string() },
  returns: v.object({ name: v.string(), revokedAt: v.number() }),
  handler: async (ctx, { name }) => {
    const d = await deviceByName(ctx, name);
    if (d === null) throw new ConvexError({ code: "NO_SUCH_DEVICE", message: `no device named ${JSON.stringify(name)}` });
    const revokedAt = d.revokedAt ?? Date.now();
    if (d.revokedAt === undefined) await ctx.db.patch("devices", d._id, { revokedAt });
    return { name, revokedAt };
  },
});

const listedDevice = v.object({
  name: v.string(),
  deviceId: v.union(v.string(), v.null()),
  createdAt: v.number(),
  lastSeenAt: v.union(v.number(), v.null()),
  revokedAt: v.union(v.number(), v.null()),
});

/** Every device, oldest first: name, bound deviceId, created/last seen/revoked (epoch ms or null). Never a hash. */
export const list = internalQuery({
  args: {},
  returns: v.array(listedDevice),
  handler: async (ctx) =>
    (await ctx.db.query("devices").collect()).map((d) => ({
      name: d.name,
      deviceId: d.deviceId ?? null,
      createdAt: d.createdAt,
      lastSeenAt: d.lastSeenAt ?? null,
      revokedAt: d.revokedAt ?? null,
    })),
});

/** The device row of a token hash (http.ts's lookup), or null. */
export const byTokenHash = internalQuery({
  args: { tokenHash: v.string() },
  handler: async (ctx, { tokenHash }) =>
    await ctx.db
      .query("devices")
      .withIndex("by_tokenHash", (q) => q.eq("tokenHash", tokenHash))
      .unique(),
});

/** Device names by bound deviceId, for the queries' `deviceName` fields. */
export async function deviceNames(ctx: QueryCtx): Promise<Map<string, string>> {
  const m = new Map<string, string>();
  // Unrevoked devices last, so their name wins over a revoked one bound to the same id.
  const all = await ctx.db.query("devices").collect();
  all.sort((a, b) => Number(a.revokedAt === undefined) - Number(b.revokedAt === undefined));
  for (const d of all) if (d.deviceId !== undefined) m.set(d.deviceId, d.name);
  return m;
}
