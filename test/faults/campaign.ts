import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { FaultCluster, nodeIds } from "./fault-cluster.js";
import { type CheckResult, checkOperations, registerModel } from "./linearizability.js";
import {
  type Handover,
  type LockResult,
  lockDelayMs,
  probeHandover,
  runLockWorkload,
  sessionTtlMs,
} from "./lock-workload.js";
import { type FaultKind, injectFault } from "./nemesis.js";
import { Random } from "./random.js";
import { latestBeyondStalls, runTtlWorkload, type TtlResult, ttlArgs } from "./ttl-workload.js";
import {
  checkStaleMonotonic,
  observedValue,
  type RegistryOp,
  runRegistryWorkload,
} from "./workload.js";

/** The longest a fault is held before it is undone. */
const maxHoldMs = 3000;

export interface CampaignOptions {
  readonly seed: number;
  /** How long faults are injected while the workload runs. */
  readonly durationMs: number;
  readonly faults: readonly FaultKind[];
  readonly clients?: number;
  readonly keys?: number;
  /** Lock workers running beside the registry workload (default 0). */
  readonly lockWorkers?: number;
  /** Instances kept alive through the faults by the SDK, beside silent ones (default 0). */
  readonly liveInstances?: number;
  readonly log?: (line: string) => void;
  /** Keep the agents' data and logs when a check fails (default true). */
  readonly keepFailed?: boolean;
  /** Environment of the agents (MUSTER_PLANTED_BUG to check that the checkers catch it). */
  readonly env?: Readonly<Record<string, string>>;
}

export interface CampaignReport {
  readonly seed: number;
  /** Where the agents' data and logs were kept because a check failed; null when all held. */
  readonly logs: string | null;
  readonly operations: number;
  readonly counts: Record<string, number>;
  readonly faults: Partial<Record<FaultKind, number>>;
  readonly linearizability: CheckResult;
  /** How long the linearizability check took, against its 60 s budget. */
  readonly checkMs: number;
  /** A stale read that went back in time on one node, or null. */
  readonly staleViolation: string | null;
  readonly converged: { appliedIndex: number; hash: string };
  readonly locks: (LockResult & { readonly handover: Handover | null }) | null;
  readonly ttl:
    | (Pick<TtlResult, "live" | "silent" | "latestMs" | "violations"> & {
        readonly latestBeyondStallsMs: number;
        /** The latest eviction's timeline, to set beside the faults when it was too late. */
        readonly latestDetail: string;
      })
    | null;
}

/** Linearizable reads of every key through every node once the cluster has recovered. */
async function finalReads(cluster: FaultCluster, keys: number): Promise<RegistryOp[]> {
  const reads: RegistryOp[] = [];
  for (let k = 0; k < keys; k++) {
    for (const node of nodeIds) {
      const call = performance.now();
      const answer = await cluster.agents.request(
        node,
        "GET",
        `/v1/services/lin-k${k}?consistency=linearizable`,
      );
      if (answer.status !== 200 && answer.status !== 404)
        throw new Error(`final read through ${node} answered ${answer.status}`);
      reads.push({
        client: 1000 + reads.length,
        input: { op: "read", key: `k${k}` },
        output: { value: observedValue(answer) },
        call,
        return: performance.now(),
      });
    }
  }
  return reads;
}

/**
 * What an eviction may take beyond its bound once stalls are taken out: the lessor's tick,
 * the commits, the polling and the 500 ms clock-skew allowance (0.3-0.8 s seen).
 */
export const evictionSlackMs = 2000;

/** Time for a lock grant's answer to come back, beyond the handover bound itself. */
export const answerSlackMs = 500;

/** Whether every check of a run held (the test checks each on its own, for its message). */
export function campaignPassed(report: CampaignReport): boolean {
  const handover = report.locks?.handover;
  return (
    report.linearizability.result === "ok" &&
    report.staleViolation === null &&
    (report.locks?.violations.length ?? 0) === 0 &&
    (handover === null ||
      handover === undefined ||
      ((handover.takeoverMs ?? Number.POSITIVE_INFINITY) <= handover.boundMs + answerSlackMs &&
        (handover.takeoverMs ?? 0) >= sessionTtlMs + lockDelayMs)) &&
    (report.ttl?.violations.length ?? 0) === 0 &&
    (report.ttl?.latestBeyondStallsMs ?? 0) <= evictionSlackMs
  );
}

/**
 * One run: a registry workload against three real agents while a seeded nemesis injects
 * faults; then recovery, convergence, and the checks. The fault schedule (kinds, victims,
 * durations) replays from the seed; process timing does not.
 */
export async function runCampaign(options: CampaignOptions): Promise<CampaignReport> {
  const log = options.log ?? (() => undefined);
  const keys = options.keys ?? 4;
  const nemesisRandom = new Random(options.seed);
  const workloadRandom = new Random(options.seed ^ 0x9e3779b9);
  const liveInstances = options.liveInstances ?? 0;
  const lockWorkers = options.lockWorkers ?? 0;
  const cluster = await FaultCluster.start(
    options.env,
    liveInstances > 0 || lockWorkers > 0 ? ttlArgs : [],
  );
  const faults: Partial<Record<FaultKind, number>> = {};
  const resumed: number[] = [];
  // A run that fails keeps its agents' data and logs, to trace the failure.
  let keep = true;
  try {
    const stop = new AbortController();
    const workload = runRegistryWorkload(cluster, workloadRandom, {
      clients: options.clients ?? 6,
      keys,
      signal: stop.signal,
      incarnation: (id) => cluster.incarnation(id),
    });
    const locks =
      lockWorkers > 0
        ? runLockWorkload(cluster, new Random(options.seed ^ 0x85ebca6b), {
            workers: lockWorkers,
            signal: stop.signal,
          })
        : Promise.resolve(null);
    const ttl =
      liveInstances > 0
        ? runTtlWorkload(cluster, {
            live: liveInstances,
            signal: stop.signal,
          })
        : Promise.resolve(null);
    const end = performance.now() + options.durationMs;
    while (performance.now() < end) {
      const kind = nemesisRandom.pick(options.faults);
      const holdMs = nemesisRandom.between(800, maxHoldMs);
      const done = await injectFault(cluster, nemesisRandom, kind, holdMs);
      if (kind === "pause") resumed.push(performance.now());
      log(`${kind}: ${done} (${holdMs} ms)`);
      faults[kind] = (faults[kind] ?? 0) + 1;
      await new Promise((resolve) => setTimeout(resolve, nemesisRandom.between(300, 1500)));
    }
    stop.abort();
    const { history, staleReads, counts } = await workload;
    const lockResult = await locks;
    const ttlResult = await ttl;
    const converged = await cluster.recover();
    const handover = lockWorkers > 0 ? await probeHandover(cluster) : null;
    history.push(...(await finalReads(cluster, keys)));
    const checkStarted = performance.now();
    const linearizability = checkOperations(registerModel, history, { timeoutMs: 60_000 });
    const checkMs = Math.round(performance.now() - checkStarted);
    const report: CampaignReport = {
      seed: options.seed,
      logs: null,
      operations: history.length + staleReads.length,
      counts,
      faults,
      linearizability,
      checkMs,
      staleViolation: checkStaleMonotonic(staleReads),
      converged,
      locks: lockResult === null ? null : { ...lockResult, handover },
      ttl:
        ttlResult === null
          ? null
          : {
              live: ttlResult.live,
              silent: ttlResult.silent,
              latestMs: ttlResult.latestMs,
              ...latestBeyondStalls(
                ttlResult,
                history
                  .filter((op) => op.input.op !== "read" && Number.isFinite(op.return))
                  .map((op) => op.return),
                resumed,
              ),
              violations: ttlResult.violations,
            },
    };
    keep = (options.keepFailed ?? true) && !campaignPassed(report);
    if (keep) {
      // The history replays through the checker offline; an unknown return is written as null.
      writeFileSync(join(cluster.agents.root, "history.json"), JSON.stringify(history));
    }
    return keep ? { ...report, logs: cluster.agents.root } : report;
  } catch (error) {
    throw new Error(`the run stopped; the agents' data and logs are in ${cluster.agents.root}`, {
      cause: error,
    });
  } finally {
    await cluster.destroy(keep);
  }
}
