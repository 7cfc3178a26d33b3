import { assert } from "./assert.js";
import type { ConfigState, Entry, Snapshot } from "./types.js";

export const emptySnapshot: Snapshot = {
  index: 0,
  term: 0,
  config: { voters: [], learners: [] },
  data: new Uint8Array(0),
};

/**
 * The in-memory Raft log: a snapshot followed by entries, with the pointers that say
 * what has been persisted, committed and applied.
 * Invariants: snapshot.index <= applied <= applying <= commit <= lastIndex (applying may
 * pass commit only under a planted bug); stableIndex <= inProgressIndex <= lastIndex.
 */
export class RaftLog {
  private snapshotValue: Snapshot;
  private entriesAfterSnapshot: Entry[];
  /** A snapshot received from the leader that the runtime has not been handed yet. */
  private unhandedSnapshot: Snapshot | null = null;
  commit: number;
  /** Highest index the runtime has applied (acknowledged through advance). */
  applied: number;
  /** Highest index handed to the runtime to apply. */
  applying: number;
  /** Highest index known to be persisted. */
  stableIndex: number;
  /** Highest index handed to the runtime to persist. */
  inProgressIndex: number;

  constructor(snapshot: Snapshot, entries: readonly Entry[], commit: number) {
    this.snapshotValue = snapshot;
    this.entriesAfterSnapshot = [...entries];
    entries.forEach((entry, offset) => {
      assert(entry.index === snapshot.index + 1 + offset, `log gap at index ${entry.index}`);
    });
    this.commit = Math.max(commit, snapshot.index);
    assert(this.commit <= this.lastIndex(), `commit ${this.commit} beyond last index`);
    this.applied = snapshot.index;
    this.applying = snapshot.index;
    this.stableIndex = this.lastIndex();
    this.inProgressIndex = this.lastIndex();
  }

  get snapshot(): Snapshot {
    return this.snapshotValue;
  }

  firstIndex(): number {
    return this.snapshotValue.index + 1;
  }

  lastIndex(): number {
    return this.snapshotValue.index + this.entriesAfterSnapshot.length;
  }

  lastTerm(): number {
    const term = this.term(this.lastIndex());
    assert(term !== undefined, "last entry has no term");
    return term;
  }

  /** The term of the entry at `index`, or undefined when it is compacted or absent. */
  term(index: number): number | undefined {
    if (index === this.snapshotValue.index) return this.snapshotValue.term;
    return this.entry(index)?.term;
  }

  entry(index: number): Entry | undefined {
    return this.entriesAfterSnapshot[index - this.snapshotValue.index - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /**
   * Entries [from, to] inclusive, at most `maxCount` of them and, past the first, no more
   * than `maxBytes` of payload in all.
   */
  slice(from: number, to: number, maxCount: number, maxBytes = Number.POSITIVE_INFINITY): Entry[] {
    assert(from >= this.firstIndex(), `slice from compacted index ${from}`);
    assert(to <= this.lastIndex(), `slice beyond last index ${to}`);
    const start = from - this.snapshotValue.index - 1;
    let end = Math.min(to - this.snapshotValue.index, start + maxCount);
    if (maxBytes !== Number.POSITIVE_INFINITY) {
      let bytes = 0;
      for (let at = start; at < end; at++) {
        const entry = this.entriesAfterSnapshot[at] as Entry;
        bytes += entry.type === "normal" ? entry.data.length : 64;
        if (bytes > maxBytes && at > start) {
          end = at;
          break;
        }
      }
    }
    return this.entriesAfterSnapshot.slice(start, end);
  }

  /** Section 5.4.1: a candidate's log is at least as up-to-date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * The largest index at or below `index` whose term is at most `term`, with that term.
   * Used by both sides of fast log backtracking.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let at = Math.min(index, this.lastIndex());
    while (at > this.snapshotValue.index) {
      const entryTerm = this.term(at);
      assert(entryTerm !== undefined, `missing entry ${at}`);
      if (entryTerm <= term) return { index: at, term: entryTerm };
      at--;
    }
    return { index: this.snapshotValue.index, term: this.snapshotValue.term };
  }

  /** Leader side: append new entries at the end of the log. */
  append(entries: readonly Entry[]): void {
    for (const entry of entries) {
      assert(entry.index === this.lastIndex() + 1, `append out of order at ${entry.index}`);
      this.entriesAfterSnapshot.push(entry);
    }
  }

  /**
   * Follower side: accept entries that follow (prevIndex, prevTerm), truncating a
   * conflicting suffix. Returns the index of the last entry now known to match the
   * leader, or null when prevIndex/prevTerm does not match.
   */
  maybeAppend(prevIndex: number, prevTerm: number, entries: readonly Entry[]): number | null {
    assert(prevIndex >= this.commit, `append below the commit index at ${prevIndex}`);
    if (!this.matchTerm(prevIndex, prevTerm)) return null;
    const conflict = entries.findIndex((entry) => this.term(entry.index) !== entry.term);
    if (conflict >= 0) {
      const first = entries[conflict];
      assert(first !== undefined, "conflicting entry vanished");
      if (first.index <= this.lastIndex()) this.truncateFrom(first.index);
      this.append(entries.slice(conflict));
    }
    return prevIndex + entries.length;
  }

  private truncateFrom(index: number): void {
    assert(index > this.commit, `truncating committed entry ${index} (commit ${this.commit})`);
    assert(index > this.snapshotValue.index, `truncating into snapshot at ${index}`);
    this.entriesAfterSnapshot.length = index - this.snapshotValue.index - 1;
    this.stableIndex = Math.min(this.stableIndex, index - 1);
    this.inProgressIndex = Math.min(this.inProgressIndex, index - 1);
  }

  commitTo(index: number): void {
    if (index <= this.commit) return;
    assert(index <= this.lastIndex(), `commit ${index} beyond last index ${this.lastIndex()}`);
    this.commit = index;
  }

  /** Replace the whole log with a snapshot received from the leader. */
  restore(snapshot: Snapshot): void {
    assert(snapshot.index > this.commit, "restoring a snapshot behind the commit index");
    this.snapshotValue = snapshot;
    this.entriesAfterSnapshot = [];
    this.unhandedSnapshot = snapshot;
    this.commit = snapshot.index;
    this.applied = snapshot.index;
    this.applying = snapshot.index;
    this.stableIndex = snapshot.index;
    this.inProgressIndex = snapshot.index;
  }

  /** The application took a snapshot at `index`: drop the entries it covers. */
  compact(index: number, term: number, config: ConfigState, data: Uint8Array): void {
    assert(index <= this.applied, `compacting unapplied index ${index}`);
    assert(index <= this.stableIndex, `compacting unpersisted index ${index}`);
    if (index <= this.snapshotValue.index) return;
    assert(this.term(index) === term, `compaction term mismatch at ${index}`);
    this.entriesAfterSnapshot = this.entriesAfterSnapshot.slice(index - this.snapshotValue.index);
    this.snapshotValue = { index, term, config, data };
  }

  takeUnhandedSnapshot(): Snapshot | null {
    const snapshot = this.unhandedSnapshot;
    this.unhandedSnapshot = null;
    return snapshot;
  }

  hasUnhandedSnapshot(): boolean {
    return this.unhandedSnapshot !== null;
  }

  /** Entries not yet handed out for persistence; marks them handed out. */
  takeUnstable(): Entry[] {
    if (this.inProgressIndex >= this.lastIndex()) return [];
    const entries = this.slice(this.inProgressIndex + 1, this.lastIndex(), Number.MAX_SAFE_INTEGER);
    this.inProgressIndex = this.lastIndex();
    return entries;
  }

  hasUnstable(): boolean {
    return this.inProgressIndex < this.lastIndex();
  }

  /**
   * The runtime persisted `entries`. A suffix may have been truncated meanwhile: only the
   * entries our log still holds count, and never beyond what is handed out now.
   */
  stableTo(entries: readonly Entry[]): void {
    for (let at = entries.length - 1; at >= 0; at--) {
      const entry = entries[at] as Entry;
      if (entry.index <= this.inProgressIndex && this.matchTerm(entry.index, entry.term)) {
        this.stableIndex = Math.max(this.stableIndex, entry.index);
        return;
      }
    }
  }

  /** Committed entries not yet handed out to apply; marks them handed out. */
  takeCommitted(upTo: number): Entry[] {
    const to = Math.min(upTo, this.lastIndex());
    if (to <= this.applying) return [];
    const entries = this.slice(this.applying + 1, to, Number.MAX_SAFE_INTEGER);
    this.applying = to;
    return entries;
  }

  appliedTo(index: number): void {
    assert(index <= this.applying, `applied ${index} beyond handed out ${this.applying}`);
    this.applied = Math.max(this.applied, index);
  }
}
