import { testElectionTimeoutMs } from "../integration/agents.js";
import type { FaultCluster } from "./fault-cluster.js";
import { nodeIds } from "./fault-cluster.js";
import type { Random } from "./random.js";
import { checkpointIntervalMs } from "./ttl-workload.js";

const lockName = "guarded";
export const sessionTtlMs = 3000;
export const lockDelayMs = 1000;
const requestTimeoutMs = 2000;

/** A grant as the winner saw it. */
export interface Grant {
  readonly worker: number;
  readonly token: number;
  /** When the acquire was sent and when its answer arrived. */
  readonly requested: number;
  readonly granted: number;
}

/** A check of a token at the lock, answered current or not. */
export interface Check {
  readonly token: number;
  readonly call: number;
  readonly return: number;
  readonly current: boolean;
}

/** A holder that stopped renewing: its session must expire before anyone else gets the lock. */
export interface Abandon {
  readonly token: number;
  readonly lastRenewalSent: number;
}

export interface LockResult {
  readonly grants: number;
  readonly acceptedWrites: number;
  readonly rejectedWrites: number;
  readonly abandoned: number;
  /** Every violation found; empty when the locks behaved. */
  readonly violations: string[];
}

async function post(address: string, path: string, body: unknown) {
  const response = await fetch(`http://${address}${path}`, {
    method: path.endsWith("/renew") ? "PUT" : "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(requestTimeoutMs + 6000),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/**
 * Workers that take one lock and write to a resource guarded by its fencing token: the
 * resource asks the lock (a linearizable check) before it accepts a write and refuses any
 * token older than the newest it accepted. Some holders stop renewing and vanish, so that
 * the lock changes hands by session expiry and lockDelay. The checks afterwards:
 * tokens are unique and grow with real time, a check never calls a superseded token
 * current, and nobody gets the lock sooner than TTL + lockDelay after a holder vanished.
 */
export async function runLockWorkload(
  cluster: FaultCluster,
  random: Random,
  options: { workers: number; signal: AbortSignal },
): Promise<LockResult> {
  const grants: Grant[] = [];
  const checks: Check[] = [];
  const abandoned: Abandon[] = [];
  let newestAccepted = 0;
  let acceptedWrites = 0;
  let rejectedWrites = 0;
  const node = () => cluster.agents.get(random.pick(nodeIds)).http;

  const worker = async (id: number) => {
    while (!options.signal.aborted) {
      // The session's TTL starts when its creation applies, which is after this.
      const createSent = performance.now();
      const created = await post(node(), "/v1/sessions", {
        ttl: `${sessionTtlMs}ms`,
        lockDelay: `${lockDelayMs}ms`,
      }).catch(() => null);
      if (created?.status !== 200) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        continue;
      }
      const session = String(created.body.id);
      let lastRenewalSent = createSent;
      const requested = performance.now();
      const acquired = await post(node(), `/v1/locks/${lockName}/acquire`, {
        session,
        value: `worker ${id}`,
        wait: "2s",
      }).catch(() => null);
      if (acquired?.status !== 200) {
        await fetch(`http://${node()}/v1/sessions/${session}`, { method: "DELETE" }).catch(
          () => null,
        );
        continue;
      }
      const token = Number(acquired.body.token);
      grants.push({ worker: id, token, requested, granted: performance.now() });
      // Hold it for a few writes, renewing the session; sometimes vanish without a word.
      const vanish = random.next() < 0.25;
      const writes = random.between(1, 4);
      for (let write = 0; write < writes && !options.signal.aborted; write++) {
        const call = performance.now();
        const check = await post(node(), `/v1/locks/${lockName}/check`, { token }).catch(
          () => null,
        );
        if (check !== null && (check.status === 200 || check.status === 409)) {
          const current = check.status === 200;
          checks.push({ token, call, return: performance.now(), current });
          if (current && token >= newestAccepted) {
            newestAccepted = token;
            acceptedWrites += 1;
          } else rejectedWrites += 1;
        }
        await new Promise((resolve) => setTimeout(resolve, random.between(50, 250)));
        if (!vanish) {
          const sent = performance.now();
          const renewed = await post(node(), `/v1/sessions/${session}/renew`, {}).catch(() => null);
          if (renewed?.status === 200) lastRenewalSent = sent;
        }
      }
      if (vanish) {
        abandoned.push({ token, lastRenewalSent });
        continue;
      }
      await post(node(), `/v1/locks/${lockName}/release`, { session }).catch(() => null);
      await fetch(`http://${node()}/v1/sessions/${session}`, {
        method: "DELETE",
        signal: AbortSignal.timeout(requestTimeoutMs),
      }).catch(() => null);
    }
  };
  await Promise.all(Array.from({ length: options.workers }, (_, i) => worker(i)));
  return {
    grants: grants.length,
    acceptedWrites,
    rejectedWrites,
    abandoned: abandoned.length,
    violations: checkLocks(grants, checks, abandoned),
  };
}

/** A holder that vanished after the faults, and when another worker got its lock. */
export interface Handover {
  /** From the holder's last renewal to the next grant. */
  readonly takeoverMs: number | null;
  /** DESIGN.md's worst case: session TTL + checkpoint interval + election timeout + lockDelay. */
  readonly boundMs: number;
}

/**
 * After the faults, on the recovered cluster: a holder stops renewing without a word while
 * another worker waits for the lock. Its session must run out and the lock pass on within
 * the bound of DESIGN.md, and not before the TTL and lockDelay.
 */
export async function probeHandover(cluster: FaultCluster): Promise<Handover> {
  const boundMs = sessionTtlMs + checkpointIntervalMs + testElectionTimeoutMs + lockDelayMs;
  const address = cluster.agents.get(nodeIds[0]).http;
  const session = async () => {
    const created = await post(address, "/v1/sessions", {
      ttl: `${sessionTtlMs}ms`,
      lockDelay: `${lockDelayMs}ms`,
    });
    if (created.status !== 200) throw new Error(`session: ${created.status}`);
    return String(created.body.id);
  };
  const acquire = (holder: string, wait: string) =>
    post(address, "/v1/locks/handover/acquire", { session: holder, value: holder, wait });
  // The session's TTL starts when its creation applies, after this: so takeoverMs errs long,
  // and falls below TTL + lockDelay only when the handover surely came early.
  const lastRenewal = performance.now();
  const holder = await session();
  const held = await acquire(holder, "0s");
  if (held.status !== 200) throw new Error(`handover lock: ${held.status}`);
  const waiter = await session();
  const deadline = lastRenewal + 3 * boundMs;
  while (performance.now() < deadline) {
    // The waiter keeps its own session alive while it waits.
    await post(address, `/v1/sessions/${waiter}/renew`, {});
    const answer = await acquire(waiter, "1s");
    if (answer.status === 200) return { takeoverMs: performance.now() - lastRenewal, boundMs };
  }
  return { takeoverMs: null, boundMs };
}

export function checkLocks(
  grants: readonly Grant[],
  checks: readonly Check[],
  abandoned: readonly Abandon[],
): string[] {
  const violations: string[] = [];
  const byToken = new Map<number, Grant>();
  for (const grant of grants) {
    if (byToken.has(grant.token)) violations.push(`token ${grant.token} granted twice`);
    byToken.set(grant.token, grant);
  }
  const ordered = [...grants].sort((a, b) => a.granted - b.granted);
  for (const later of ordered) {
    for (const earlier of ordered) {
      // A grant seen before another was even asked for has the smaller token.
      if (earlier.granted < later.requested && earlier.token >= later.token)
        violations.push(`token ${later.token} granted after token ${earlier.token}`);
    }
  }
  for (const check of checks) {
    if (!check.current) continue;
    const newer = grants.find((grant) => grant.token > check.token && grant.granted < check.call);
    if (newer !== undefined)
      violations.push(
        `token ${check.token} checked current after token ${newer.token} was granted`,
      );
  }
  for (const gone of abandoned) {
    const next = grants
      .filter((grant) => grant.token > gone.token)
      .sort((a, b) => a.token - b.token)[0];
    const earliest = gone.lastRenewalSent + sessionTtlMs + lockDelayMs;
    if (next !== undefined && next.granted < earliest)
      violations.push(
        `token ${next.token} granted ${Math.round(earliest - next.granted)} ms before the vanished holder's TTL and lockDelay ran out`,
      );
  }
  return violations;
}
