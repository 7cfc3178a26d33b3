import { assert } from "./assert.js";

/**
 * How the leader replicates to one peer.
 * - probe: one append at a time until the peer's match is found;
 * - replicate: optimistic pipelining, bounded by maxInflightAppends;
 * - snapshot: waiting for the peer to install a snapshot.
 */
export type ProgressState = "probe" | "replicate" | "snapshot";

/** Leader-side view of one peer. Invariant: 0 <= match < next. */
export class Progress {
  match = 0;
  next: number;
  state: ProgressState = "probe";
  /** In probe state: an append is outstanding, wait for its answer or a heartbeat response. */
  probeSent = false;
  /** In snapshot state: the index of the snapshot sent. */
  pendingSnapshot = 0;
  /** Ticks since the peer last answered; CheckQuorum counts peers heard within an election timeout. */
  ticksSinceHeard = 0;
  /** Context of the newest heartbeat of this leadership that the peer answered; 0 before any. */
  answeredContext = 0;
  /** Last index of each append in flight, oldest first. */
  private readonly inflight: number[] = [];

  constructor(
    next: number,
    private readonly maxInflightAppends: number,
  ) {
    assert(next >= 1, "next index must be positive");
    assert(maxInflightAppends >= 1, "maxInflightAppends must be positive");
    this.next = next;
  }

  becomeProbe(): void {
    // After a snapshot, resume right past it; otherwise from what is known to match.
    const next =
      this.state === "snapshot" ? Math.max(this.match, this.pendingSnapshot) + 1 : this.match + 1;
    this.reset("probe");
    this.next = next;
  }

  becomeReplicate(): void {
    this.reset("replicate");
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.reset("snapshot");
    this.pendingSnapshot = snapshotIndex;
  }

  private reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflight.length = 0;
  }

  /** Record a successful append up to `index`. Returns whether match moved. */
  maybeUpdate(index: number): boolean {
    const updated = index > this.match;
    if (updated) {
      this.match = index;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, index + 1);
    this.freeInflightUpTo(index);
    assert(this.match < this.next, "progress: match must stay below next");
    return updated;
  }

  /**
   * A rejection of the append at `rejected`; `hintNext` is where the leader would like to
   * resume. Returns false when the rejection is stale.
   */
  maybeDecrement(rejected: number, hintNext: number): boolean {
    if (this.state === "replicate") {
      if (rejected <= this.match) return false;
      this.becomeProbe();
      this.next = Math.max(this.match + 1, Math.min(hintNext, this.next));
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hintNext), this.match + 1);
    this.probeSent = false;
    assert(this.next >= 1, "next must stay positive");
    return true;
  }

  /** An append ending at `lastIndex` was sent. */
  sentEntries(lastIndex: number, entryCount: number): void {
    if (this.state === "replicate") {
      if (entryCount > 0) {
        this.next = lastIndex + 1;
        this.inflight.push(lastIndex);
        assert(this.inflight.length <= this.maxInflightAppends, "inflight bound exceeded");
      }
    } else if (this.state === "probe") {
      this.probeSent = true;
    }
  }

  isPaused(): boolean {
    switch (this.state) {
      case "probe":
        return this.probeSent;
      case "replicate":
        return this.inflight.length >= this.maxInflightAppends;
      case "snapshot":
        return true;
    }
  }

  /** A heartbeat response proves the peer is alive: let a stalled probe go again. */
  heardFrom(): void {
    this.ticksSinceHeard = 0;
    if (this.state === "probe") this.probeSent = false;
    // A full pipeline whose acks were lost must not stall forever.
    if (this.state === "replicate" && this.inflight.length >= this.maxInflightAppends) {
      this.inflight.shift();
    }
  }

  private freeInflightUpTo(index: number): void {
    while (this.inflight.length > 0 && (this.inflight[0] ?? 0) <= index) this.inflight.shift();
  }
}
