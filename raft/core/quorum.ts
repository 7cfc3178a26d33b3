import { assert } from "./assert.js";
import type { NodeId } from "./types.js";

/** Size of a majority of `voterCount` voters. */
export function majority(voterCount: number): number {
  assert(voterCount > 0, "a configuration needs at least one voter");
  return Math.floor(voterCount / 2) + 1;
}

/** The largest index that a majority of voters have matched. */
export function committedIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  const matches = voters.map(matchOf).sort((a, b) => b - a);
  const index = matches[majority(voters.length) - 1];
  assert(index !== undefined, "quorum index out of range");
  return index;
}

export type VoteOutcome = "won" | "lost" | "pending";

/** Tally of an election among `voters`. Votes from non-voters are ignored. */
export function voteOutcome(
  voters: readonly NodeId[],
  votes: ReadonlyMap<NodeId, boolean>,
): VoteOutcome {
  let granted = 0;
  let rejected = 0;
  for (const voter of voters) {
    const vote = votes.get(voter);
    if (vote === true) granted++;
    else if (vote === false) rejected++;
  }
  const needed = majority(voters.length);
  if (granted >= needed) return "won";
  if (voters.length - rejected < needed) return "lost";
  return "pending";
}
