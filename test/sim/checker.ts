import type { Entry, NodeId, Snapshot } from "../../raft/core/types.js";

/** What the checker needs to know of one log: its end, and whether it holds an entry. */
export interface LogView {
  readonly lastIndex: number;
  readonly lastTerm: number;
  holds(index: number, term: number): boolean;
}

/** A property of Raft that the simulation saw broken. */
export class InvariantViolation extends Error {
  override readonly name = "InvariantViolation";
}

/** Healed, the cluster failed to elect a leader and commit within the bound. */
export class LivenessViolation extends Error {
  override readonly name = "LivenessViolation";
}

function violated(message: string): never {
  throw new InvariantViolation(message);
}

/** A stable text form of an entry's payload, equal on every node for the same entry. */
export function entryKey(entry: Entry): string {
  switch (entry.type) {
    case "normal":
      return `d:${new TextDecoder().decode(entry.data)}`;
    case "config":
      return `c:${JSON.stringify(entry.change)}`;
    case "noop":
      return "noop";
  }
}

/** The simulated application: a hash chain over every applied entry. */
export interface AppState {
  readonly index: number;
  readonly hash: number;
}

export function applyToApp(state: AppState, entry: Entry): AppState {
  let hash = state.hash ^ entry.index;
  const key = `${entry.term}/${entryKey(entry)}`;
  for (let i = 0; i < key.length; i++) hash = Math.imul(hash ^ key.charCodeAt(i), 16777619) >>> 0;
  return { index: entry.index, hash };
}

export function encodeApp(state: AppState): Uint8Array {
  return new TextEncoder().encode(`${state.index}:${state.hash}`);
}

export function decodeApp(data: Uint8Array): AppState {
  const [index, hash] = new TextDecoder().decode(data).split(":").map(Number);
  if (index === undefined || hash === undefined) violated("undecodable snapshot data");
  return { index, hash };
}

/**
 * Checks the Raft safety properties over the whole run:
 * election safety, log matching, leader completeness, state machine safety,
 * monotonic commit, and that every linearizable read saw every earlier commit.
 */
export class SafetyChecker {
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** "index/term" -> payload key and the previous entry's term, for log matching. */
  private readonly entryAt = new Map<string, { key: string; prevTerm: number }>();
  /** index -> entry known committed there. */
  private readonly committed = new Map<number, { term: number; key: string }>();
  /** index -> application state after applying it. */
  private readonly appliedState = new Map<number, number>();
  private readonly commitSeen = new Map<NodeId, number>();
  private readonly durableSeen = new Map<NodeId, { term: number; commit: number }>();
  /** The highest commit index any node has ever reported: a lower bound for reads. */
  maxCommit = 0;

  /** A leader was observed; at most one per term. */
  leader(term: number, id: NodeId): boolean {
    const known = this.leaderOfTerm.get(term);
    if (known === undefined) {
      this.leaderOfTerm.set(term, id);
      return true;
    }
    if (known !== id) violated(`election safety: ${known} and ${id} both lead term ${term}`);
    return false;
  }

  /** Log matching: the same (index, term) holds the same entry after the same history. */
  appended(node: NodeId, entries: readonly Entry[], prevTermOfFirst: number): void {
    let prevTerm = prevTermOfFirst;
    for (const entry of entries) {
      const position = `${entry.index}/${entry.term}`;
      const key = entryKey(entry);
      const known = this.entryAt.get(position);
      if (known === undefined) {
        this.entryAt.set(position, { key, prevTerm });
      } else if (known.key !== key || known.prevTerm !== prevTerm) {
        violated(`log matching: ${node} holds a different entry at ${position}`);
      }
      if (entry.term < prevTerm)
        violated(`log matching: terms go down at ${node} index ${entry.index}`);
      prevTerm = entry.term;
    }
  }

  /**
   * Commit indexes never go back while a node runs, and committed entries never change.
   * Returns whether the node's commit index moved.
   */
  commitAdvanced(
    node: NodeId,
    commit: number,
    entryAt: (index: number) => Entry | undefined,
  ): boolean {
    const seen = this.commitSeen.get(node) ?? 0;
    if (commit < seen) violated(`commit index of ${node} went back from ${seen} to ${commit}`);
    for (let index = seen + 1; index <= commit; index++) {
      const entry = entryAt(index);
      if (entry === undefined) continue;
      const key = entryKey(entry);
      const known = this.committed.get(index);
      if (known === undefined) this.committed.set(index, { term: entry.term, key });
      else if (known.key !== key || known.term !== entry.term) {
        violated(`committed entry at ${index} differs on ${node}`);
      }
    }
    this.commitSeen.set(node, commit);
    this.maxCommit = Math.max(this.maxCommit, commit);
    return commit > seen;
  }

  /**
   * Commit safety: once an entry is committed, no voter whose log lacks it can win an
   * election, because a majority's durable logs are more up to date than its log. Checked
   * the moment a leader commits, this catches unsafe commits before any entry is lost.
   */
  commitIsSafe(
    leader: NodeId,
    index: number,
    term: number,
    voters: readonly NodeId[],
    logsOf: (id: NodeId) => { readonly durable: LogView; readonly current: LogView | null },
  ): void {
    const durableLasts = voters.map((id) => logsOf(id).durable);
    for (const candidate of voters) {
      const { durable, current } = logsOf(candidate);
      for (const log of current === null ? [durable] : [durable, current]) {
        if (log.holds(index, term)) continue;
        const grants = durableLasts.filter(
          (voter) =>
            voter.lastTerm < log.lastTerm ||
            (voter.lastTerm === log.lastTerm && voter.lastIndex <= log.lastIndex),
        ).length;
        if (grants > voters.length / 2) {
          violated(
            `commit safety: ${leader} committed ${index}/${term}, yet ${candidate} (log ending ${log.lastIndex}/${log.lastTerm}) lacks it and could win a majority`,
          );
        }
      }
    }
  }

  committedTerm(index: number): number | undefined {
    return this.committed.get(index)?.term;
  }

  restarted(node: NodeId, commit: number): void {
    this.commitSeen.set(node, commit);
  }

  durable(node: NodeId, term: number, commit: number): void {
    const seen = this.durableSeen.get(node);
    if (seen !== undefined && (term < seen.term || commit < seen.commit)) {
      violated(`durable hard state of ${node} went back`);
    }
    this.durableSeen.set(node, { term, commit });
  }

  /** Leader completeness: a new leader holds every entry committed before it. */
  newLeader(node: NodeId, firstIndex: number, entryAt: (index: number) => Entry | undefined): void {
    for (const [index, committed] of this.committed) {
      if (index < firstIndex) continue;
      const entry = entryAt(index);
      if (
        entry === undefined ||
        entry.term !== committed.term ||
        entryKey(entry) !== committed.key
      ) {
        violated(`leader completeness: new leader ${node} lacks committed entry ${index}`);
      }
    }
  }

  /** State machine safety: every node applies the same entry at each index. */
  applied(node: NodeId, entry: Entry, state: AppState): void {
    const committed = this.committed.get(entry.index);
    if (
      committed !== undefined &&
      (committed.term !== entry.term || committed.key !== entryKey(entry))
    ) {
      violated(
        `state machine safety: ${node} applied an entry at ${entry.index} that is not the committed one`,
      );
    }
    this.sameState(node, state);
  }

  installedSnapshot(node: NodeId, snapshot: Snapshot): void {
    this.sameState(node, decodeApp(snapshot.data));
  }

  private sameState(node: NodeId, state: AppState): void {
    const known = this.appliedState.get(state.index);
    if (known === undefined) this.appliedState.set(state.index, state.hash);
    else if (known !== state.hash)
      violated(`state machine safety: ${node} diverged at index ${state.index}`);
  }

  /** Linearizable reads: a read index covers every commit seen before the read began. */
  readServed(node: NodeId, index: number, lowerBound: number): void {
    if (index < lowerBound) {
      violated(
        `stale read on ${node}: read index ${index} below ${lowerBound}, committed before it was asked`,
      );
    }
  }
}
