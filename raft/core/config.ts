import { assert } from "./assert.js";
import type { ConfChange, ConfigState, NodeId } from "./types.js";

export const emptyConfig: ConfigState = { voters: [], learners: [] };

export function isVoter(config: ConfigState, id: NodeId): boolean {
  return config.voters.includes(id);
}

export function isMember(config: ConfigState, id: NodeId): boolean {
  return config.voters.includes(id) || config.learners.includes(id);
}

export function members(config: ConfigState): NodeId[] {
  return [...config.voters, ...config.learners];
}

/** Why a change cannot apply to `config`, or null when it can. */
export function changeError(config: ConfigState, change: ConfChange): string | null {
  switch (change.kind) {
    case "bootstrap":
      return config.voters.length === 0 && change.voters.length > 0 ? null : "already bootstrapped";
    case "add-learner":
      return isMember(config, change.node) ? `${change.node} is already a member` : null;
    case "promote":
      return config.learners.includes(change.node) ? null : `${change.node} is not a learner`;
    case "remove":
      if (!isMember(config, change.node)) return `${change.node} is not a member`;
      return config.voters.length === 1 && isVoter(config, change.node)
        ? "cannot remove the last voter"
        : null;
  }
}

/** The configuration after `change`; a change that does not apply leaves it as it is. */
export function applyChange(config: ConfigState, change: ConfChange): ConfigState {
  if (changeError(config, change) !== null) return config;
  const next = nextConfig(config, change);
  assert(next.voters.length > 0, "a configuration must keep a voter");
  assert(
    !next.voters.some((id) => next.learners.includes(id)),
    "a node is voter and learner at once",
  );
  return next;
}

function nextConfig(config: ConfigState, change: ConfChange): ConfigState {
  const sorted = (ids: NodeId[]) => [...new Set(ids)].sort();
  switch (change.kind) {
    case "bootstrap":
      return { voters: sorted([...change.voters]), learners: [] };
    case "add-learner":
      return { voters: config.voters, learners: sorted([...config.learners, change.node]) };
    case "promote":
      return {
        voters: sorted([...config.voters, change.node]),
        learners: config.learners.filter((id) => id !== change.node),
      };
    case "remove":
      return {
        voters: config.voters.filter((id) => id !== change.node),
        learners: config.learners.filter((id) => id !== change.node),
      };
  }
}
