// Retention: deletes sessions older than RETENTION_DAYS (a deployment environment variable),
// keeping the aggregate tables in step. Run daily by crons.ts.
//
//   npx convex env set RETENTION_DAYS 90     # keep 90 days of sessions (by createdAt)
//   npx convex env remove RETENTION_DAYS     # keep everything (the default; "0" is the same)
import { getDocumentSize } from "convex/values";
import { internal } from "./_generated/api";
import { env, internalMutation } from "./_generated/server";
import { AggregateDelta } from "./aggregates";

/** Most sessions one run deletes before rescheduling itself. */
export const PURGE_BATCH = 256;
/** Most document bytes one run reads (Convex's limit per mutation is 16 MiB). */
export const PURGE_MAX_BYTES = 8 << 20;

/** RETENTION_DAYS as a whole number of days; 0 when unset or empty. Throws naming the variable otherwise. */
export function retentionDays(raw: string | undefined): number {
  const s = (raw ?? "").trim();
  if (s === "") return 0;
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
    throw new Error(
      `RETENTION_DAYS must be a whole number of days (0 = keep everything), got ${JSON.stringify(raw)}; fix it with \`npx convex env set RETENTION_DAYS <days>\``,
    );
  }
  return Number(s);
}

/**
 * Deletes up to PURGE_BATCH sessions whose createdAt is before now - RETENTION_DAYS days
 * (oldest first, index by_createdAt), subtracting them from the aggregates in the same
 * transaction. If more remain, schedules itself to run again at once. Returns
 * `{retentionDays, cutoff, deleted, more}` (`cutoff`: epoch ms, null when retention is off).
 */
export const purge = internalMutation({
  args: {},
  handler: async (ctx) => {
    const days = retentionDays(env.RETENTION_DAYS);
    if (days === 0) return { retentionDays: 0, cutoff: null, deleted: 0, more: false };
    const cutoff = Date.now() - days * 86_400_000;
    // Collect first, then delete: no writes while the index range is being read.
    const doomed = [];
    let bytes = 0;
    let more = false;
    for await (const doc of ctx.db.query("sessions").withIndex("by_createdAt", (q) => q.lt("createdAt", cutoff))) {
      const size = getDocumentSize(doc);
      if (doomed.length >= PURGE_BATCH || (doomed.length > 0 && bytes + size > PURGE_MAX_BYTES)) {
        more = true;
        break;
      }
      bytes += size;
      doomed.push(doc);
    }
    const delta = new AggregateDelta();
    for (const doc of doomed) {
      await ctx.db.delete("sessions", doc._id);
      delta.add(doc, -1);
    }
    const deleted = doomed.length;
    await delta.apply(ctx);
    if (more) await ctx.scheduler.runAfter(0, internal.retention.purge, {});
    return { retentionDays: days, cutoff, deleted, more };
  },
});
