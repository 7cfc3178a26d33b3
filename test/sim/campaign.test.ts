import { describe, expect, it } from "vitest";
import { formatCounts, runCampaign, runSeed } from "./campaign.js";

const seeds = 500;
const eventsPerSeed = 5000;

describe("deterministic simulation of 3- and 5-node clusters", () => {
  it(`keeps every safety property and stays live over ${seeds} seeds of ${eventsPerSeed} events`, () => {
    const result = runCampaign({
      firstSeed: 1,
      seeds,
      events: eventsPerSeed,
      nodeCounts: [3, 5],
      stopAtFailure: false,
    });
    const failures = result.failures.map(
      (failure) =>
        `seed ${failure.seed} (${failure.nodeCount} nodes): ${failure.failure}; replay: npm run sim -- --seed ${failure.seed}`,
    );
    expect(failures).toEqual([]);
    expect(result.seedsRun).toBe(seeds);
    expect(result.eventsRun).toBeGreaterThanOrEqual(seeds * eventsPerSeed);
    // A campaign that silently stopped injecting a fault would prove nothing about it.
    for (const [kind, count] of Object.entries(result.counts)) {
      expect(count, `${kind} never happened: ${formatCounts(result.counts)}`).toBeGreaterThan(0);
    }
  });

  it("replays a seed exactly", () => {
    const first = runSeed(7, 5, 2000, undefined, 50);
    const second = runSeed(7, 5, 2000, undefined, 50);
    expect(second.events).toBe(first.events);
    expect(second.counts).toEqual(first.counts);
    expect(second.profile).toEqual(first.profile);
  });
});
