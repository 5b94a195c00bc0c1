// Scheduled jobs: the daily retention run (does nothing unless RETENTION_DAYS is set).
import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";

const crons = cronJobs();

crons.daily("delete sessions older than RETENTION_DAYS", { hourUTC: 3, minuteUTC: 17 }, internal.retention.purge, {});

export default crons;
