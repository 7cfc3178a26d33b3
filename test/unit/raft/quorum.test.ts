import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { RaftInvariantError } from "../../../raft/core/assert.js";
import {
  committedIndex,
  majority,
  type VoteOutcome,
  voteOutcome,
} from "../../../raft/core/quorum.js";

const ids = ["a", "b", "c", "d", "e", "f", "g"];
const voters = fc.subarray(ids, { minLength: 1 });
const matches = fc.array(fc.nat(20), { minLength: ids.length, maxLength: ids.length });
const votes = fc.array(fc.constantFrom(true, false, undefined), {
  minLength: ids.length,
  maxLength: ids.length,
});

/** The largest index that more than half of the voters have reached, by counting. */
function referenceCommittedIndex(
  voterIds: readonly string[],
  matchOf: (id: string) => number,
): number {
  for (let index = Math.max(...voterIds.map(matchOf)); index > 0; index--) {
    const reached = voterIds.filter((id) => matchOf(id) >= index).length;
    if (2 * reached > voterIds.length) return index;
  }
  return 0;
}

/** Won with more than half granted; lost when even every missing vote could not make it. */
function referenceVoteOutcome(
  voterIds: readonly string[],
  ballot: ReadonlyMap<string, boolean>,
): VoteOutcome {
  const granted = voterIds.filter((id) => ballot.get(id) === true).length;
  const missing = voterIds.filter((id) => !ballot.has(id)).length;
  if (2 * granted > voterIds.length) return "won";
  if (2 * (granted + missing) <= voterIds.length) return "lost";
  return "pending";
}

function ballotOf(choices: readonly (boolean | undefined)[]): Map<string, boolean> {
  const ballot = new Map<string, boolean>();
  choices.forEach((choice, position) => {
    const id = ids[position];
    if (choice !== undefined && id !== undefined) ballot.set(id, choice);
  });
  return ballot;
}

describe("quorum: majority", () => {
  it("is more than half of the voters", () => {
    expect([1, 2, 3, 4, 5, 6, 7].map(majority)).toEqual([1, 2, 2, 3, 3, 4, 4]);
  });

  it("refuses an empty configuration", () => {
    expect(() => majority(0)).toThrow(RaftInvariantError);
  });
});

describe("quorum: committedIndex against a counting reference", () => {
  it("agrees on thousands of random configurations and match indexes", () => {
    fc.assert(
      fc.property(voters, matches, (voterIds, matchList) => {
        const matchOf = (id: string) => matchList[ids.indexOf(id)] ?? 0;
        expect(committedIndex(voterIds, matchOf)).toBe(referenceCommittedIndex(voterIds, matchOf));
      }),
      { numRuns: 5000, seed: 42 },
    );
  });

  it("ignores the match of a non-voter", () => {
    const matchOf = (id: string) => ({ a: 5, b: 5, c: 3, d: 3, learner: 9 })[id] ?? 0;
    expect(committedIndex(["a", "b", "c", "d"], matchOf)).toBe(3);
    expect(committedIndex(["a", "b", "c"], matchOf)).toBe(5);
  });
});

describe("quorum: voteOutcome against a counting reference", () => {
  it("agrees on thousands of random configurations and ballots, with votes from non-voters", () => {
    fc.assert(
      fc.property(voters, votes, (voterIds, choices) => {
        const ballot = ballotOf(choices);
        expect(voteOutcome(voterIds, ballot)).toBe(referenceVoteOutcome(voterIds, ballot));
      }),
      { numRuns: 5000, seed: 42 },
    );
  });

  it("with four voters, two grants are pending until a third grant or rejection", () => {
    const fourVoters = ["a", "b", "c", "d"];
    const twoGranted = new Map([
      ["a", true],
      ["b", true],
    ]);
    expect(voteOutcome(fourVoters, twoGranted)).toBe("pending");
    expect(voteOutcome(fourVoters, new Map([...twoGranted, ["c", true]]))).toBe("won");
    expect(voteOutcome(fourVoters, new Map([...twoGranted, ["c", false], ["d", false]]))).toBe(
      "lost",
    );
    expect(voteOutcome(fourVoters, new Map([...twoGranted, ["x", true], ["y", true]]))).toBe(
      "pending",
    );
  });
});
