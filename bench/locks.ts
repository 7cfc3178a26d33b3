import { AgentCluster } from "../test/integration/agents.js";
import { percentile } from "./stats.js";

/**
 * Lock contention on three real agents (default timings, fsync on): each client has its
 * own session and, for a fixed time, takes the same lock (waiting in the queue), holds it
 * for an instant and releases it. Clients are spread over the three nodes.
 */

const ids = ["n1", "n2", "n3"];
const durationMs = 10_000;

async function post(http: string, path: string, body: unknown): Promise<Response> {
  return fetch(`http://${http}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
}

async function contend(cluster: AgentCluster, clients: number, lock: string) {
  const waits: number[] = [];
  let failures = 0;
  const deadline = performance.now() + durationMs;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, client) => {
      const http = cluster.get(ids[client % ids.length] ?? "n1").http;
      const created = await post(http, "/v1/sessions", { ttl: "30s" });
      const { id: session } = (await created.json()) as { id: string };
      while (performance.now() < deadline) {
        const asked = performance.now();
        const acquired = await post(http, `/v1/locks/${lock}/acquire`, { session, wait: "30s" });
        await acquired.arrayBuffer();
        if (acquired.status !== 200) {
          failures++;
          continue;
        }
        waits.push(performance.now() - asked);
        const released = await post(http, `/v1/locks/${lock}/release`, { session });
        await released.arrayBuffer();
        if (released.status !== 200) failures++;
      }
      await fetch(`http://${http}/v1/sessions/${session}`, { method: "DELETE" });
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return {
    rate: waits.length / seconds,
    p50: percentile(waits, 50),
    p99: percentile(waits, 99),
    failures,
  };
}

export async function runLocksBench(): Promise<void> {
  const cluster = await AgentCluster.create({ defaultTimings: true });
  try {
    await cluster.bootstrap(ids);
    await cluster.leader();
    console.log(
      `Lock contention, three agents, fsync on, ${durationMs / 1000} s per level, clients spread over the nodes`,
    );
    for (const clients of [1, 8, 32]) {
      const result = await contend(cluster, clients, `bench-${clients}`);
      console.log(
        `  ${String(clients).padStart(2)} clients: ${Math.round(result.rate).toLocaleString("en-US")} acquisitions/s, wait p50 ${result.p50.toFixed(1)} ms, p99 ${result.p99.toFixed(1)} ms${result.failures > 0 ? `, ${result.failures} failed requests` : ""}`,
      );
    }
  } finally {
    await cluster.destroy();
  }
}
