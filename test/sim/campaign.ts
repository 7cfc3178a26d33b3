import type { PlantedBug } from "../../raft/core/types.js";
import { type FaultCounts, Simulation, type SimulationResult } from "./cluster.js";

export interface CampaignOptions {
  readonly firstSeed: number;
  readonly seeds: number;
  readonly events: number;
  /** Cluster sizes to cycle through, seed by seed. */
  readonly nodeCounts: readonly number[];
  readonly plantedBug?: PlantedBug;
  /** Stop at the first failing seed. */
  readonly stopAtFailure: boolean;
}

export interface CampaignResult {
  readonly seedsRun: number;
  readonly eventsRun: number;
  readonly failures: readonly SimulationResult[];
  readonly counts: FaultCounts;
}

export function runSeed(
  seed: number,
  nodeCount: number,
  events: number,
  plantedBug?: PlantedBug,
  traceLines = 0,
): SimulationResult {
  return new Simulation({
    seed,
    nodeCount,
    events,
    traceLines,
    ...(plantedBug === undefined ? {} : { plantedBug }),
  }).run();
}

export function nodeCountForSeed(seed: number, nodeCounts: readonly number[]): number {
  const count = nodeCounts[seed % nodeCounts.length];
  if (count === undefined) throw new Error("no cluster sizes given");
  return count;
}

export function runCampaign(options: CampaignOptions): CampaignResult {
  const failures: SimulationResult[] = [];
  const counts: Partial<FaultCounts> = {};
  let eventsRun = 0;
  let seedsRun = 0;
  for (let seed = options.firstSeed; seed < options.firstSeed + options.seeds; seed++) {
    const result = runSeed(
      seed,
      nodeCountForSeed(seed, options.nodeCounts),
      options.events,
      options.plantedBug,
    );
    seedsRun++;
    eventsRun += result.events;
    for (const [kind, count] of Object.entries(result.counts) as [keyof FaultCounts, number][]) {
      counts[kind] = (counts[kind] ?? 0) + count;
    }
    if (!result.ok) {
      failures.push(result);
      if (options.stopAtFailure) break;
    }
  }
  return { seedsRun, eventsRun, failures, counts: counts as FaultCounts };
}

export function formatCounts(counts: FaultCounts): string {
  return Object.entries(counts)
    .map(([kind, count]) => `${kind}=${count}`)
    .join(" ");
}
