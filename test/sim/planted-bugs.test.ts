import { describe, expect, it } from "vitest";
import type { PlantedBug } from "../../raft/core/types.js";
import { nodeCountForSeed, runSeed } from "./campaign.js";

const maxSeeds = 1000;
const eventsPerSeed = 5000;

/** The first seed (from 1) whose run fails with `bug` planted, or null within maxSeeds. */
function firstCatch(bug: PlantedBug): { seed: number; failure: string } | null {
  for (let seed = 1; seed <= maxSeeds; seed++) {
    const result = runSeed(seed, nodeCountForSeed(seed, [3, 5]), eventsPerSeed, bug);
    if (!result.ok) return { seed, failure: result.failure ?? "" };
  }
  return null;
}

describe("the simulator has teeth: each planted bug is caught within 1,000 seeds", () => {
  it.each<[PlantedBug, RegExp]>([
    [
      "commit-previous-term",
      /commit safety|leader completeness|state machine safety|committed entry/,
    ],
    ["vote-without-log-check", /leader completeness|commit safety|state machine safety/],
    ["vote-before-persist", /election safety|two leaders/],
    ["apply-before-commit", /state machine safety|committed entry/],
    ["read-before-term-commit", /stale read/],
  ])("%s", (bug, expected) => {
    const caught = firstCatch(bug);
    expect(caught, `${bug} survived ${maxSeeds} seeds`).not.toBeNull();
    expect(caught?.failure).toMatch(expected);
  });
});
