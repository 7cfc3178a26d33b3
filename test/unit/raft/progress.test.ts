import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { RaftInvariantError } from "../../../raft/core/assert.js";
import { Progress } from "../../../raft/core/progress.js";

/** A peer in replicate state that has matched up to `match`. */
function replicating(match: number, maxInflightAppends = 3): Progress {
  const progress = new Progress(match + 1, maxInflightAppends);
  progress.maybeUpdate(match);
  progress.becomeReplicate();
  return progress;
}

describe("Progress in probe state", () => {
  it("sends one append at a time until it is answered", () => {
    const progress = new Progress(5, 3);
    expect(progress).toMatchObject({ state: "probe", match: 0, next: 5 });
    expect(progress.isPaused()).toBe(false);
    progress.sentEntries(6, 2);
    expect(progress.isPaused()).toBe(true);
    expect(progress.next).toBe(5);
    progress.maybeUpdate(6);
    expect(progress).toMatchObject({ match: 6, next: 7 });
    expect(progress.isPaused()).toBe(false);
  });

  it("lets a stalled probe go again when the peer answers a heartbeat", () => {
    const progress = new Progress(5, 3);
    progress.sentEntries(4, 0);
    progress.ticksSinceHeard = 7;
    progress.heardFrom();
    expect(progress.isPaused()).toBe(false);
    expect(progress.ticksSinceHeard).toBe(0);
  });

  it("on a rejection of the probe, moves next back to the hint but never to or below match", () => {
    const progress = new Progress(10, 3);
    progress.maybeUpdate(2);
    progress.sentEntries(10, 1);
    expect(progress.maybeDecrement(9, 5)).toBe(true);
    expect(progress).toMatchObject({ next: 5, probeSent: false });
    expect(progress.maybeDecrement(4, 1)).toBe(true);
    expect(progress.next).toBe(3);
  });

  it("ignores a rejection that is not of the append it last sent", () => {
    const progress = new Progress(10, 3);
    expect(progress.maybeDecrement(7, 2)).toBe(false);
    expect(progress.next).toBe(10);
  });
});

describe("Progress in replicate state", () => {
  it("becoming replicate resumes right after match", () => {
    const progress = new Progress(20, 3);
    progress.maybeUpdate(12);
    progress.becomeReplicate();
    expect(progress).toMatchObject({ state: "replicate", next: 13 });
  });

  it("pipelines appends optimistically up to maxInflightAppends, then pauses", () => {
    const progress = replicating(5);
    progress.sentEntries(6, 1);
    progress.sentEntries(8, 2);
    expect(progress.isPaused()).toBe(false);
    progress.sentEntries(9, 1);
    expect(progress).toMatchObject({ next: 10, match: 5 });
    expect(progress.isPaused()).toBe(true);
    expect(() => progress.sentEntries(10, 1)).toThrow(RaftInvariantError);
  });

  it("an empty append (commit only) takes no slot in the pipeline", () => {
    const progress = replicating(5, 1);
    progress.sentEntries(5, 0);
    expect(progress.isPaused()).toBe(false);
  });

  it("an acknowledgement frees every append it covers", () => {
    const progress = replicating(5);
    progress.sentEntries(6, 1);
    progress.sentEntries(7, 1);
    progress.sentEntries(8, 1);
    expect(progress.maybeUpdate(7)).toBe(true);
    expect(progress.isPaused()).toBe(false);
    expect(progress).toMatchObject({ match: 7, next: 9 });
    expect(progress.maybeUpdate(6)).toBe(false);
  });

  it("a heartbeat answer frees one slot of a full pipeline whose acknowledgements were lost", () => {
    const progress = replicating(5, 2);
    progress.sentEntries(6, 1);
    progress.sentEntries(7, 1);
    progress.heardFrom();
    expect(progress.isPaused()).toBe(false);
  });

  it("a rejection above match falls back to probing right after match; one at or below is stale", () => {
    const progress = replicating(5);
    progress.sentEntries(8, 3);
    expect(progress.maybeDecrement(5, 1)).toBe(false);
    expect(progress.state).toBe("replicate");
    expect(progress.maybeDecrement(7, 100)).toBe(true);
    expect(progress).toMatchObject({ state: "probe", next: 6, match: 5 });
  });
});

describe("Progress in snapshot state", () => {
  it("sends nothing while the snapshot is pending, then probes right after it", () => {
    const progress = new Progress(3, 3);
    progress.becomeSnapshot(20);
    expect(progress.isPaused()).toBe(true);
    progress.heardFrom();
    expect(progress.isPaused()).toBe(true);
    progress.becomeProbe();
    expect(progress).toMatchObject({ state: "probe", next: 21, pendingSnapshot: 0 });
  });

  it("probes right after match when the peer got further than the snapshot", () => {
    const progress = new Progress(3, 3);
    progress.becomeSnapshot(20);
    progress.maybeUpdate(25);
    progress.becomeProbe();
    expect(progress.next).toBe(26);
  });
});

describe("Progress invariants under random operations", () => {
  const operation = fc.oneof(
    fc.record({ kind: fc.constant("send" as const), count: fc.nat(3) }),
    fc.record({ kind: fc.constant("ack" as const), index: fc.nat(40) }),
    fc.record({
      kind: fc.constant("reject" as const),
      index: fc.nat(40),
      hint: fc.integer({ min: 1, max: 40 }),
    }),
    fc.record({ kind: fc.constant("heard" as const) }),
    fc.record({ kind: fc.constant("probe" as const) }),
    fc.record({ kind: fc.constant("replicate" as const) }),
    fc.record({ kind: fc.constant("snapshot" as const), index: fc.nat(40) }),
  );

  it("keeps 0 <= match < next and never exceeds the inflight bound when sends respect isPaused()", () => {
    fc.assert(
      fc.property(fc.array(operation, { maxLength: 60 }), (operations) => {
        const progress = new Progress(1, 4);
        for (const op of operations) {
          switch (op.kind) {
            case "send":
              if (!progress.isPaused())
                progress.sentEntries(progress.next - 1 + op.count, op.count);
              break;
            case "ack":
              progress.maybeUpdate(op.index);
              break;
            case "reject":
              progress.maybeDecrement(op.index, op.hint);
              break;
            case "heard":
              progress.heardFrom();
              break;
            case "probe":
              progress.becomeProbe();
              break;
            case "replicate":
              progress.becomeReplicate();
              break;
            case "snapshot":
              progress.becomeSnapshot(op.index);
              break;
          }
          expect(progress.match).toBeGreaterThanOrEqual(0);
          expect(progress.next).toBeGreaterThan(progress.match);
        }
      }),
      { numRuns: 2000, seed: 7 },
    );
  });
});
