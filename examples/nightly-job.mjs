// A job that must run once at a time across all its replicas: it runs under a muster lock and
// hands the fencing token to what it writes, so a stale holder's writes can be rejected.
//   node examples/nightly-job.mjs            (start several at once: they take turns)
import { setTimeout as sleep } from "node:timers/promises";
import { MusterClient } from "@muster/client";

const endpoints = (
  process.env.MUSTER_ENDPOINTS ?? "127.0.0.1:7700,127.0.0.1:7710,127.0.0.1:7720"
).split(",");
const workMs = Number(process.env.JOB_WORK_MS ?? "3000");

const client = new MusterClient({ endpoints });
await client.withLock(
  "jobs/nightly-report",
  async ({ token, signal }) => {
    console.log(`pid ${process.pid} holds the lock with fencing token ${token}`);
    // Stop at once if the lock is lost (the session could not be renewed).
    await sleep(workMs, undefined, { signal });
    console.log(`pid ${process.pid} finished the report (token ${token})`);
  },
  { value: `pid ${process.pid}`, sessionOptions: { ttl: "10s" } },
);
await client.close();
