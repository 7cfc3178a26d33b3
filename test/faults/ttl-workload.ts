import { type Instance, MusterClient, type Registration } from "../../client-sdk/src/index.js";
import type { FaultCluster } from "./fault-cluster.js";
import { nodeIds } from "./fault-cluster.js";

export const ttlMs = 3000;
export const checkpointIntervalMs = 1000;
/** The agents' settings for the TTL and lock workloads (see FaultCluster.start). */
export const ttlArgs = [
  `--ttl-checkpoint-interval=${checkpointIntervalMs}ms`,
  "--deregister-after=2s",
  // Most instances here are silent on purpose: self-preservation would rightly stop evictions.
  "--self-preservation-min-instances=100000",
];
const deregisterAfterMs = 2000;
/** What a new leader waits before it expires anything: at most TTL / 2. */
const graceMs = ttlMs / 2;
/** After the last fault: restarted nodes start and catch up, one more election may happen. */
const recoveryMs = 8000;

export interface TtlResult {
  readonly live: number;
  readonly silent: number;
  /**
   * How much later than the no-lag bound (see evictionDeadline), counted from the
   * registration's acknowledgement, the latest eviction was seen; includes time without a
   * quorum.
   */
  readonly latestMs: number;
  /**
   * Each silent instance: when its registration was acknowledged, when it was first seen
   * critical (or gone, if never seen critical) and when first seen gone.
   */
  readonly evictions: readonly Eviction[];
  /** When a leader of a new term was first seen. */
  readonly takeovers: readonly number[];
  readonly violations: string[];
}

export interface Eviction {
  readonly acknowledged: number;
  readonly critical: number;
  readonly gone: number;
}

/** Acknowledgements further apart than this mean the cluster could not commit meanwhile. */
const stallAfterMs = 300;

/**
 * How much later than the no-lag bound the latest eviction was seen, not counting time when
 * the cluster could commit nothing (no quorum: nodes killed or paused, a member replaced),
 * which no bound covers. `acknowledged`: when writes of another workload, which runs as long
 * as the faults do, were acknowledged; a pause between two of them longer than stallAfterMs
 * counts as such a time. After the last of them nothing is taken out.
 */
export function latestBeyondStalls(
  result: TtlResult,
  acknowledged: readonly number[],
  /** When paused nodes resumed: a leader back from a pause grants the same grace as a new one. */
  resumed: readonly number[],
): { latestBeyondStallsMs: number; latestDetail: string } {
  const takeovers = [...result.takeovers, ...resumed].sort((a, b) => a - b);
  const acks = [...acknowledged].sort((a, b) => a - b);
  const stalled = (from: number, to: number) => {
    let total = 0;
    for (let i = 1; i < acks.length; i++) {
      const start = Math.max(acks[i - 1] as number, from);
      const end = Math.min(acks[i] as number, to);
      if ((acks[i] as number) - (acks[i - 1] as number) > stallAfterMs && end > start)
        total += end - start;
    }
    return total;
  };
  let latest = { ms: 0, detail: "" };
  for (const eviction of result.evictions) {
    const deadline = evictionDeadline(eviction, takeovers);
    const stall = stalled(eviction.acknowledged, eviction.gone);
    const late = eviction.gone - deadline - stall;
    if (late > latest.ms)
      latest = {
        ms: late,
        detail:
          `acknowledged ${Math.round(eviction.acknowledged)}, critical seen +${Math.round(eviction.critical - eviction.acknowledged)}, ` +
          `gone seen +${Math.round(eviction.gone - eviction.acknowledged)}, deadline +${Math.round(deadline - eviction.acknowledged)}, ` +
          `stalled ${Math.round(stall)} ms; takeovers and resumptions at [${takeovers
            .map((t) => Math.round(t - eviction.acknowledged))
            .filter((t) => t > -graceMs && t < eviction.gone - eviction.acknowledged)
            .join(", ")}]`,
      };
  }
  return { latestBeyondStallsMs: Math.round(latest.ms), latestDetail: latest.detail };
}

/**
 * When a silent instance is gone if every new leader was up to date: critical by the later
 * of its TTL and, for each takeover before the instance was marked critical, the takeover
 * plus the new leader's grace (it resumes the countdowns and waits before expiring anything,
 * since it cannot tell whether a heartbeat reached the old leader after the last checkpoint);
 * then removed deregisterAfter later, which no takeover extends (it counts from the
 * committed expiry).
 */
function evictionDeadline(eviction: Eviction, takeovers: readonly number[]): number {
  const critical = takeovers.reduce(
    (due, takeover) =>
      takeover <= Math.max(due, eviction.critical) ? Math.max(due, takeover + graceMs) : due,
    eviction.acknowledged + ttlMs,
  );
  return critical + deregisterAfterMs;
}

/**
 * Notes when each silent instance is first seen critical and first seen gone, polling every
 * node at once. Only a read sent after its registration was acknowledged can say it is gone.
 */
async function pollEvictions(
  cluster: FaultCluster,
  acknowledgedAt: ReadonlyMap<string, number>,
  seen: { readonly critical: Map<string, number>; readonly gone: Map<string, number> },
  signal: AbortSignal,
): Promise<void> {
  const poll = async (id: string) => {
    const sent = performance.now();
    const response = await fetch(
      `http://${cluster.agents.get(id).http}/v1/services/ttl-silent?consistency=default`,
      { signal: AbortSignal.timeout(500) },
    ).catch(() => null);
    if (response === null || (response.status !== 200 && response.status !== 404)) return;
    const body = (await response.json().catch(() => ({}))) as {
      instances?: { id: string; status: string }[];
    };
    const instances = body.instances ?? [];
    const present = new Set(instances.map((instance) => instance.id));
    const at = performance.now();
    for (const instance of instances)
      if (instance.status === "critical" && !seen.critical.has(instance.id))
        seen.critical.set(instance.id, at);
    for (const [instance, acknowledged] of acknowledgedAt)
      if (acknowledged < sent && !present.has(instance) && !seen.gone.has(instance))
        seen.gone.set(instance, at);
  };
  while (!signal.aborted) {
    await Promise.all(nodeIds.filter((id) => cluster.running(id)).map(poll));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** When a leader of a new term was first seen, polled through any node. */
async function watchTakeovers(cluster: FaultCluster, signal: AbortSignal): Promise<number[]> {
  const takeovers: number[] = [];
  let term = 0;
  // Every node at once, with short limits: a node cut off must not hide a new leader.
  const poll = async (id: string) => {
    const response = await fetch(`http://${cluster.agents.get(id).http}/v1/cluster/leader`, {
      signal: AbortSignal.timeout(500),
    }).catch(() => null);
    const body = (await response?.json().catch(() => null)) as
      | { leader: unknown; term: number }
      | null
      | undefined;
    if (body !== null && body !== undefined && body.leader !== null && body.term > term) {
      term = body.term;
      takeovers.push(performance.now());
    }
  };
  while (!signal.aborted) {
    await Promise.all(nodeIds.filter((id) => cluster.running(id)).map(poll));
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return takeovers;
}

/**
 * Live instances kept up by the SDK's heartbeats through every fault must never be seen
 * critical nor evicted. Silent ones must never go before their TTL and deregisterAfter, and
 * all must be gone one TTL round after the faults end; how late each went beyond the no-lag
 * bound is reported.
 */
export async function runTtlWorkload(
  cluster: FaultCluster,
  options: { live: number; signal: AbortSignal },
): Promise<TtlResult> {
  const violations: string[] = [];
  const client = new MusterClient({
    endpoints: nodeIds.map((id) => cluster.agents.get(id).http),
    timeoutMs: 1000,
  });
  const registrations: Registration[] = [];
  // Short blocking reads: a view parked on a cut-off node must not miss an eviction for long.
  const liveView = client.discover("ttl-live", { healthy: false, wait: "1s" });
  const registeredAt = new Map<string, number>();
  const acknowledgedAt = new Map<string, number>();
  const criticalAt = new Map<string, number>();
  const goneAt = new Map<string, number>();
  liveView.on("change", (instances: readonly Instance[]) => {
    for (const instance of instances)
      if (instance.status === "critical")
        violations.push(
          `live ${instance.id} was seen critical at ${new Date().toISOString()} (${instance.output || "no output"}, last heartbeat ${instance.lastHeartbeatAt})`,
        );
  });
  const stopWatching = new AbortController();
  const takeovers = watchTakeovers(cluster, stopWatching.signal);
  const polling = pollEvictions(
    cluster,
    acknowledgedAt,
    { critical: criticalAt, gone: goneAt },
    stopWatching.signal,
  );
  try {
    for (let i = 0; i < options.live; i++) {
      const registration = await client.register({
        service: "ttl-live",
        id: `live-${i}`,
        address: "127.0.0.1",
        port: 10_000 + i,
        ttl: `${ttlMs}ms`,
        handleSignals: false,
        drainDelay: 0,
      });
      registration.on("registered", (instance: Instance) =>
        // Registering again means the registry had forgotten a live instance.
        violations.push(
          `live ${instance.id} was evicted and registered again at ${new Date().toISOString()}`,
        ),
      );
      registrations.push(registration);
    }
    let silent = 0;
    while (!options.signal.aborted) {
      const id = `silent-${silent++}`;
      const sent = performance.now();
      const answer = await client
        .call("PUT", `/v1/services/ttl-silent/instances/${id}`, {
          address: "127.0.0.1",
          port: 1,
          ttl: `${ttlMs}ms`,
        })
        .catch(() => null);
      if (answer !== null) {
        registeredAt.set(id, sent);
        acknowledgedAt.set(id, performance.now());
      }
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
    // The faults are over: every silent instance must now go within one more round.
    const faultsEnded = performance.now();
    const settled = faultsEnded + ttlMs + graceMs + deregisterAfterMs + recoveryMs;
    while (performance.now() < settled && goneAt.size < registeredAt.size)
      await new Promise((resolve) => setTimeout(resolve, 100));
    stopWatching.abort();
    const elected = await takeovers;
    await polling;
    let latestMs = 0;
    const evictions: Eviction[] = [];
    for (const [id, at] of registeredAt) {
      const gone = goneAt.get(id);
      if (gone === undefined) {
        violations.push(
          `silent ${id} still registered ${Math.round(performance.now() - faultsEnded)} ms after the faults ended`,
        );
        continue;
      }
      // Never early: an eviction is observed after it happened, a registration sent before.
      const critical = criticalAt.get(id) ?? gone;
      if (critical - at < ttlMs)
        violations.push(
          `silent ${id} marked critical ${Math.round(critical - at)} ms after registration, before its TTL`,
        );
      if (gone - at < ttlMs + deregisterAfterMs)
        violations.push(
          `silent ${id} evicted ${Math.round(gone - at)} ms after registration, before its TTL and deregisterAfter`,
        );
      // Late or not is judged from the acknowledgement: the client may have retried for a
      // while, and the registration took effect no later than it was acknowledged.
      const eviction = { acknowledged: acknowledgedAt.get(id) ?? at, critical, gone };
      latestMs = Math.max(latestMs, gone - evictionDeadline(eviction, elected));
      evictions.push(eviction);
    }
    return {
      live: options.live,
      silent: registeredAt.size,
      latestMs: Math.round(latestMs),
      evictions,
      takeovers: elected,
      violations,
    };
  } finally {
    stopWatching.abort();
    for (const registration of registrations) await registration.close();
    await client.close();
  }
}
