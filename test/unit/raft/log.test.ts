import { describe, expect, it } from "vitest";
import { RaftInvariantError } from "../../../raft/core/assert.js";
import { emptySnapshot, RaftLog } from "../../../raft/core/log.js";
import type { Entry, Snapshot } from "../../../raft/core/types.js";

const config = { voters: ["n1"], learners: [] };

function entry(index: number, term: number): Entry {
  return { type: "normal", index, term, data: new Uint8Array([index]) };
}

/** A log whose entry at index i + 1 has term terms[i]. */
function logOfTerms(terms: readonly number[], commit = 0): RaftLog {
  return new RaftLog(
    emptySnapshot,
    terms.map((term, position) => entry(position + 1, term)),
    commit,
  );
}

function termsOf(log: RaftLog): (number | undefined)[] {
  const terms: (number | undefined)[] = [];
  for (let index = log.firstIndex(); index <= log.lastIndex(); index++) terms.push(log.term(index));
  return terms;
}

/** Hand every committed entry to the application and acknowledge it. */
function applyAll(log: RaftLog): void {
  const handed = log.takeCommitted(log.commit);
  const last = handed.at(-1);
  if (last !== undefined) log.appliedTo(last.index);
}

describe("RaftLog.maybeAppend (the follower side of AppendEntries)", () => {
  it("truncates a conflicting suffix above the commit index and appends the leader's entries", () => {
    const log = logOfTerms([1, 1, 2, 2, 3], 3);
    expect(log.maybeAppend(3, 2, [entry(4, 4), entry(5, 4), entry(6, 4)])).toBe(6);
    expect(termsOf(log)).toEqual([1, 1, 2, 4, 4, 4]);
    expect(log.stableIndex).toBe(3);
    expect(log.takeUnstable().map((e) => e.index)).toEqual([4, 5, 6]);
  });

  it("keeps entries that already match, and those after them: a stale append truncates nothing", () => {
    const log = logOfTerms([1, 1, 2, 2, 3], 1);
    expect(log.maybeAppend(1, 1, [entry(2, 1), entry(3, 2)])).toBe(3);
    expect(termsOf(log)).toEqual([1, 1, 2, 2, 3]);
    expect(log.hasUnstable()).toBe(false);
  });

  it("rejects entries whose previous index and term it does not hold", () => {
    const log = logOfTerms([1, 1, 2, 2, 3], 1);
    expect(log.maybeAppend(4, 3, [entry(5, 3)])).toBeNull();
    expect(log.maybeAppend(7, 3, [])).toBeNull();
    expect(termsOf(log)).toEqual([1, 1, 2, 2, 3]);
  });

  it("refuses to touch entries at or below the commit index", () => {
    const log = logOfTerms([1, 1, 2, 2, 3], 3);
    expect(() => log.maybeAppend(2, 1, [entry(3, 5)])).toThrow(RaftInvariantError);
    expect(termsOf(log)).toEqual([1, 1, 2, 2, 3]);
  });
});

describe("RaftLog.findConflictByTerm (fast backtracking)", () => {
  const log = logOfTerms([1, 1, 2, 2, 2, 5, 5]);

  it.each([
    { index: 7, term: 5, expected: { index: 7, term: 5 } },
    { index: 7, term: 4, expected: { index: 5, term: 2 } },
    { index: 5, term: 2, expected: { index: 5, term: 2 } },
    { index: 4, term: 1, expected: { index: 2, term: 1 } },
    { index: 2, term: 9, expected: { index: 2, term: 1 } },
    { index: 7, term: 0, expected: { index: 0, term: 0 } },
    { index: 10, term: 5, expected: { index: 7, term: 5 } },
  ])(
    "finds the last index at or below $index with a term at most $term",
    ({ index, term, expected }) => {
      expect(log.findConflictByTerm(index, term)).toEqual(expected);
    },
  );

  it("stops at the snapshot when every later entry has a larger term", () => {
    const snapshot: Snapshot = { index: 3, term: 2, config, data: new Uint8Array() };
    const compacted = new RaftLog(snapshot, [entry(4, 2), entry(5, 5)], 3);
    expect(compacted.findConflictByTerm(5, 1)).toEqual({ index: 3, term: 2 });
    expect(compacted.findConflictByTerm(5, 3)).toEqual({ index: 4, term: 2 });
  });
});

describe("RaftLog.isUpToDate (§5.4.1)", () => {
  const log = logOfTerms([1, 2, 2]);
  it.each([
    { lastIndex: 9, lastTerm: 1, expected: false },
    { lastIndex: 2, lastTerm: 2, expected: false },
    { lastIndex: 3, lastTerm: 2, expected: true },
    { lastIndex: 1, lastTerm: 3, expected: true },
  ])("a log ending at ($lastIndex, term $lastTerm) is up to date: $expected", (row) => {
    expect(log.isUpToDate(row.lastIndex, row.lastTerm)).toBe(row.expected);
  });
});

describe("RaftLog: commit, persistence and application pointers", () => {
  it("never moves the commit index back, nor past the last entry", () => {
    const log = logOfTerms([1, 1, 1], 2);
    log.commitTo(1);
    expect(log.commit).toBe(2);
    expect(() => log.commitTo(4)).toThrow(RaftInvariantError);
  });

  it("hands each committed entry out once, and refuses an acknowledgement beyond them", () => {
    const log = logOfTerms([1, 1, 1, 1], 2);
    expect(log.takeCommitted(log.commit).map((e) => e.index)).toEqual([1, 2]);
    expect(log.takeCommitted(log.commit)).toEqual([]);
    expect(() => log.appliedTo(3)).toThrow(RaftInvariantError);
    log.commitTo(4);
    expect(log.takeCommitted(log.commit).map((e) => e.index)).toEqual([3, 4]);
  });

  it("records persistence only for the handed-out entries the log still holds", () => {
    const log = logOfTerms([1, 1], 2);
    log.append([entry(3, 2), entry(4, 2), entry(5, 2)]);
    const handed = log.takeUnstable();
    expect(handed.map((e) => e.index)).toEqual([3, 4, 5]);
    // A new leader overwrites 4.. while the batch is being persisted.
    expect(log.maybeAppend(3, 2, [entry(4, 3)])).toBe(4);
    log.stableTo(handed);
    expect(log.stableIndex).toBe(3);
    const next = log.takeUnstable();
    expect(next.map((e) => [e.index, e.term])).toEqual([[4, 3]]);
    log.stableTo(next);
    expect(log.stableIndex).toBe(4);
  });

  it("slices up to a payload size, but always at least one entry", () => {
    const big = (index: number): Entry => ({
      type: "normal",
      index,
      term: 1,
      data: new Uint8Array(100),
    });
    const log = new RaftLog(emptySnapshot, [1, 2, 3, 4, 5].map(big), 0);
    expect(log.slice(1, 5, 10, 250).map((e) => e.index)).toEqual([1, 2]);
    expect(log.slice(3, 5, 10, 10).map((e) => e.index)).toEqual([3]);
  });

  it("slices at most maxCount entries and refuses indexes outside the log", () => {
    const log = logOfTerms([1, 1, 1, 1, 1]);
    expect(log.slice(2, 5, 2).map((e) => e.index)).toEqual([2, 3]);
    expect(() => log.slice(2, 6, 10)).toThrow(RaftInvariantError);
  });

  it("refuses an append that does not follow the last entry", () => {
    const log = logOfTerms([1, 1]);
    expect(() => log.append([entry(4, 1)])).toThrow(RaftInvariantError);
  });
});

describe("RaftLog: compaction and snapshots", () => {
  it("compacts applied, persisted entries and keeps the term of the last one", () => {
    const log = logOfTerms([1, 1, 2, 2], 4);
    applyAll(log);
    log.compact(3, 2, config, new Uint8Array([7]));
    expect(log.firstIndex()).toBe(4);
    expect(log.entry(3)).toBeUndefined();
    expect(log.term(3)).toBe(2);
    expect(log.term(2)).toBeUndefined();
    expect(() => log.slice(3, 4, 10)).toThrow(RaftInvariantError);
    expect(log.snapshot).toMatchObject({ index: 3, term: 2 });
  });

  it("refuses to compact what is not applied, not persisted, or with the wrong term", () => {
    const unapplied = logOfTerms([1, 1, 2], 3);
    expect(() => unapplied.compact(2, 1, config, new Uint8Array())).toThrow(RaftInvariantError);

    const unpersisted = logOfTerms([1, 1], 2);
    unpersisted.append([entry(3, 1)]);
    unpersisted.commitTo(3);
    applyAll(unpersisted);
    expect(() => unpersisted.compact(3, 1, config, new Uint8Array())).toThrow(RaftInvariantError);

    const wrongTerm = logOfTerms([1, 1, 2], 3);
    applyAll(wrongTerm);
    expect(() => wrongTerm.compact(3, 1, config, new Uint8Array())).toThrow(RaftInvariantError);
  });

  it("restores from a leader's snapshot, handing it out once, but never behind the commit index", () => {
    const log = logOfTerms([1, 1, 2], 2);
    const snapshot: Snapshot = { index: 9, term: 3, config, data: new Uint8Array() };
    log.restore(snapshot);
    expect({ first: log.firstIndex(), last: log.lastIndex(), commit: log.commit }).toEqual({
      first: 10,
      last: 9,
      commit: 9,
    });
    expect(log.takeUnhandedSnapshot()).toBe(snapshot);
    expect(log.takeUnhandedSnapshot()).toBeNull();
    expect(() => log.restore({ ...snapshot, index: 5 })).toThrow(RaftInvariantError);
  });
});
