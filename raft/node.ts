import { randomInt } from "node:crypto";
import { Raft } from "./core/raft.js";
import type {
  ConfChange,
  Entry,
  Message,
  NodeId,
  PeerReplication,
  ProposeResult,
  RaftOptions,
  RaftStatus,
  Ready,
  Snapshot,
} from "./core/types.js";
import { LeaseClock } from "./lease-clock.js";
import type { RaftStorage } from "./storage/storage.js";
import type { RaftTransport } from "./transport/transport.js";

/**
 * The replicated application. apply() must be deterministic and produce the same result
 * on every node; restore() must discard all previous state.
 */
export interface StateMachine<Result> {
  apply(entry: Entry & { type: "normal" }): Result;
  /**
   * The state as of now, in pieces that the runtime takes a few at a time between other
   * work: entries applied meanwhile must not change what the pieces hold.
   */
  snapshot(): Iterable<Uint8Array>;
  restore(data: Uint8Array): void;
}

/** A consensus error, kept apart from the state machine's own answers. */
export class RaftError extends Error {
  constructor(
    readonly code: Extract<ProposeResult, { ok: false }>["reason"] | "timeout" | "stopped",
    message: string,
    /** The leader this node knows, for the caller to retry there. */
    readonly leader: NodeId | null = null,
  ) {
    super(message);
    this.name = "RaftError";
  }
}

export interface RaftNodeOptions<Result> {
  readonly raft: Omit<RaftOptions, "randomInt">;
  readonly tickIntervalMs: number;
  /** Take a snapshot and compact the log after this many applied entries. */
  readonly snapshotEveryEntries: number;
  readonly storage: RaftStorage;
  readonly transport: RaftTransport;
  readonly stateMachine: StateMachine<Result>;
  /** Called once if the node must stop: storage failure or a broken Raft invariant. */
  readonly onFatal: (error: Error) => void;
}

/** Deadlines are checked on each tick: one timer for all waiting callers. */
interface Pending {
  reject(error: Error): void;
  /** performance.now() after which the caller gets a timeout. */
  readonly deadline: number;
  readonly what: string;
}

interface PendingProposal<Result> extends Pending {
  readonly term: number;
  readonly resolve: (value: { index: number; result: Result | undefined }) => void;
}

/** Reads that asked in the same turn of the event loop: one ReadIndex serves them all. */
interface PendingRead extends Pending {
  readonly waiters: { resolve: (index: number) => void; reject: (error: Error) => void }[];
  /** The latest deadline of its readers. */
  deadline: number;
  index: number | null;
}

/**
 * A snapshot on its way: its pieces taken a slice at a time, then the log compacted in
 * memory and the data written beside the loop, then recorded by the loop.
 */
type SnapshotJob =
  | { readonly stage: "taking" }
  | { readonly stage: "taken"; readonly index: number; readonly data: Uint8Array }
  | { readonly stage: "saving"; readonly saved: Promise<void> }
  | { readonly stage: "saved"; readonly snapshot: Snapshot };

/** How long taking snapshot pieces may hold the event loop before other work runs. */
const snapshotSliceMs = 4;

/** Ticks of the election timeout a lease gives up: one for tick granularity, one for drift. */
const leaseMarginTicks = 2;

function overwritten(): RaftError {
  return new RaftError("not-leader", "leadership changed before the entry committed");
}

/**
 * Drives a Raft core with real time and I/O. Each ready batch is handled in the order
 * Raft requires: send what may go early, persist (one synced write for the whole batch,
 * so concurrent proposals share an fsync), send the rest, apply, advance.
 */
export class RaftNode<Result> {
  private readonly core: Raft;
  private readonly options: RaftNodeOptions<Result>;
  private readonly ticker: NodeJS.Timeout;
  private readonly proposals = new Map<number, PendingProposal<Result>>();
  private readonly reads = new Map<number, PendingRead>();
  /** Reads asked for in this turn, not yet handed to the core. */
  private gathering: PendingRead | null = null;
  private nextReadId = 1;
  private applied = 0;
  /** The last log index this node's storage holds (synced). */
  private persistedIndex: number;
  private snapshotIndex = 0;
  private snapshotJob: SnapshotJob | null = null;
  /** Entries past snapshotIndex at which the next snapshot starts. */
  private snapshotAfter: number;
  private loop: Promise<void> | null = null;
  /** A proposal asked for the loop to start after this turn's I/O. */
  private kickScheduled = false;
  private stopped = false;
  /** performance.now() of the last message from the leader we follow. */
  private leaderContactAt: number | null = null;
  private readonly leaseClock: LeaseClock;

  private constructor(options: RaftNodeOptions<Result>, core: Raft, snapshotIndex: number) {
    this.options = options;
    this.core = core;
    this.applied = snapshotIndex;
    this.persistedIndex = core.status().lastIndex;
    this.snapshotIndex = snapshotIndex;
    this.snapshotAfter = this.nextSnapshotAfter();
    this.leaseClock = new LeaseClock(
      (options.raft.electionTicks - leaseMarginTicks) * options.tickIntervalMs,
    );
    options.transport.onMessage((message) => this.receive(message));
    this.ticker = setInterval(() => this.tick(), options.tickIntervalMs);
    this.ticker.unref();
  }

  static async start<Result>(options: RaftNodeOptions<Result>): Promise<RaftNode<Result>> {
    const persisted = await options.storage.load();
    const core = new Raft({ ...options.raft, randomInt: (bound) => randomInt(bound) }, persisted);
    if (persisted.snapshot !== null) options.stateMachine.restore(persisted.snapshot.data);
    const node = new RaftNode(options, core, persisted.snapshot?.index ?? 0);
    node.kick();
    return node;
  }

  get id(): NodeId {
    return this.core.id;
  }

  status(): RaftStatus {
    return this.core.status();
  }

  replicationStatus(): PeerReplication[] {
    return this.core.replicationStatus();
  }

  /**
   * Milliseconds since this node last heard from a leader, also while it knows of none (an
   * election, a partition): 0 on the leader, null if never.
   */
  lastLeaderContactMs(): number | null {
    const status = this.core.status();
    if (status.role === "leader") return 0;
    if (this.leaderContactAt === null) return null;
    return Math.round(performance.now() - this.leaderContactAt);
  }

  /** Leader that has committed an entry of its term and applied everything committed. */
  isReadyLeader(): boolean {
    const status = this.core.status();
    return (
      status.role === "leader" &&
      this.core.termAt(status.commit) === status.term &&
      status.applied >= status.commit
    );
  }

  /**
   * A read barrier bounded by the leader lease: while the lease holds the leader answers
   * from its own state without a round trip; otherwise it is a ReadIndex.
   */
  leaseRead(timeoutMs: number): Promise<number> {
    const leased = this.leaseClock.holds(this.core.leaseContext(), performance.now());
    if (this.stopped || !leased) return this.readIndex(timeoutMs);
    const commit = this.core.status().commit;
    if (this.applied >= commit) return Promise.resolve(commit);
    return this.readIndex(timeoutMs);
  }

  /** Resolves once the command is committed and applied here, with the state machine's result. */
  propose(
    data: Uint8Array,
    timeoutMs: number,
  ): Promise<{ index: number; result: Result | undefined }> {
    return this.track(
      this.guarded(() => this.core.propose(data), "after-turn"),
      timeoutMs,
    );
  }

  /**
   * Changes go one at a time: while another is pending, or a new leader has yet to commit an
   * entry of its term, this one waits for its turn within `timeoutMs`.
   */
  async changeMembership(change: ConfChange, timeoutMs: number): Promise<{ index: number }> {
    const deadline = performance.now() + timeoutMs;
    const waitMs = this.options.tickIntervalMs;
    for (;;) {
      const outcome = this.guarded(() => this.core.proposeConfChange(change), "after-turn");
      if (
        outcome?.ok !== false ||
        outcome.reason !== "config-pending" ||
        performance.now() + waitMs >= deadline
      )
        return this.track(outcome, deadline - performance.now());
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }

  private track(
    outcome: ProposeResult | undefined,
    timeoutMs: number,
  ): Promise<{ index: number; result: Result | undefined }> {
    if (this.stopped || outcome === undefined)
      return Promise.reject(new RaftError("stopped", "the node is stopping"));
    if (!outcome.ok) {
      return Promise.reject(
        new RaftError(outcome.reason, `proposal refused: ${outcome.reason}`, outcome.leader),
      );
    }
    return new Promise((resolve, reject) => {
      // A new leader reused the index of an entry of ours that it overwrote.
      this.proposals.get(outcome.index)?.reject(overwritten());
      this.proposals.set(outcome.index, {
        term: outcome.term,
        resolve,
        reject,
        deadline: performance.now() + timeoutMs,
        what: `entry ${outcome.index} not applied within ${timeoutMs} ms`,
      });
    });
  }

  /**
   * A linearizable read barrier: resolves with an index once this node has applied it. The
   * reads of one turn of the event loop share one ReadIndex (one message to the leader, one
   * heartbeat round), asked after the last of them arrived, so its index serves them all.
   */
  readIndex(timeoutMs: number): Promise<number> {
    if (this.stopped) return Promise.reject(new RaftError("stopped", "the node is stopping"));
    return new Promise((resolve, reject) => {
      const deadline = performance.now() + timeoutMs;
      if (this.gathering === null) {
        this.gathering = {
          waiters: [],
          reject(error) {
            for (const waiter of this.waiters) waiter.reject(error);
          },
          deadline,
          what: `read not confirmed within ${timeoutMs} ms`,
          index: null,
        };
        setImmediate(() => this.askReadIndex());
      }
      this.gathering.deadline = Math.max(this.gathering.deadline, deadline);
      this.gathering.waiters.push({ resolve, reject });
    });
  }

  private askReadIndex(): void {
    const group = this.gathering;
    this.gathering = null;
    if (group === null) return;
    if (this.stopped) {
      group.reject(new RaftError("stopped", "the node stopped"));
      return;
    }
    const requestId = this.nextReadId++;
    this.reads.set(requestId, group);
    this.guarded(() => this.core.readIndex(requestId));
  }

  transferLeadership(target: NodeId): boolean {
    return this.guarded(() => this.core.transferLeadership(target)) ?? false;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.ticker);
    const stopping = new RaftError("stopped", "the node stopped");
    for (const proposal of this.proposals.values()) proposal.reject(stopping);
    for (const read of this.reads.values()) read.reject(stopping);
    this.proposals.clear();
    this.reads.clear();
    // Let a batch being written finish, so that what was acknowledged is on disk.
    await this.loop;
    if (this.snapshotJob?.stage === "saving") await this.snapshotJob.saved.catch(() => undefined);
    await this.options.transport.close();
    await this.options.storage.close();
  }

  private tick(): void {
    if (this.stopped) return;
    // One tick per timer call, however late: a node whose loop lags counts time slowly,
    // which only makes it slower to start elections (leases are measured in real time).
    this.guarded(() => this.core.tick());
    // A leader that loses its quorum counts from its own last tick in office.
    if (this.core.status().role === "leader") this.leaderContactAt = performance.now();
    this.expire(this.proposals);
    this.expire(this.reads);
  }

  private expire(pending: Map<number, Pending>): void {
    const now = performance.now();
    for (const [key, waiting] of pending) {
      if (waiting.deadline > now) continue;
      pending.delete(key);
      waiting.reject(new RaftError("timeout", waiting.what));
    }
  }

  private receive(message: Message): void {
    if (this.stopped || message.to !== this.core.id) return;
    if (message.from === this.core.knownLeader()) this.leaderContactAt = performance.now();
    this.guarded(() => this.core.step(message));
  }

  /**
   * Runs an input of the core; a broken invariant stops the node instead of escaping. The
   * loop then starts at once, or for proposals after this turn (see kickAfterThisTurn).
   */
  private guarded<T>(input: () => T, start: "now" | "after-turn" = "now"): T | undefined {
    if (this.stopped) return undefined;
    try {
      const output = input();
      if (start === "now") this.kick();
      else this.kickAfterThisTurn();
      return output;
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
      return undefined;
    }
  }

  /**
   * Proposals start the loop once this turn's I/O callbacks are done, so that those that
   * arrived together share one batch (one synced write, one message per peer) instead of
   * the first going alone. Peer messages start it at once: a commit reaches the state
   * machine, and its watchers, without waiting behind other I/O.
   */
  private kickAfterThisTurn(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    setImmediate(() => {
      this.kickScheduled = false;
      this.kick();
    });
  }

  /** Run the ready loop unless it is already running: one batch at a time, in order. */
  private kick(): void {
    if (this.loop !== null || this.stopped) return;
    this.loop = this.runLoop().then(
      () => {
        this.loop = null;
        if (this.hasWork()) this.kick();
      },
      (error: unknown) => {
        this.loop = null;
        this.fail(error instanceof Error ? error : new Error(String(error)));
      },
    );
  }

  private hasWork(): boolean {
    const stage = this.snapshotJob?.stage;
    return this.core.hasReady() || stage === "taken" || stage === "saved";
  }

  private async runLoop(): Promise<void> {
    while (!this.stopped && this.hasWork()) {
      if (this.core.hasReady()) await this.handleReady();
      if (!this.stopped) await this.snapshotStep();
    }
  }

  private async handleReady(): Promise<void> {
    const ready = this.core.ready();
    this.leaseClock.handedOut(ready.messages, performance.now());
    for (const message of ready.messages) this.options.transport.send(message);
    // Committed entries already on this node's disk are applied (and their writers
    // answered) while this batch's write runs, not after it: a leader's commits then wait
    // for one synced write fewer. The rest wait for the write, as Raft requires.
    // (Entries this batch rewrites are not on disk as they will be.)
    const durable = Math.min(this.persistedIndex, (ready.entries[0]?.index ?? Infinity) - 1);
    const committed = ready.committedEntries;
    let early = 0;
    if (ready.snapshot === null) while ((committed[early]?.index ?? Infinity) <= durable) early++;
    this.applyEntries(committed, 0, early);
    if (ready.hardState !== null || ready.snapshot !== null || ready.entries.length > 0) {
      await this.options.storage.persist(ready);
    }
    if (this.stopped) return;
    const last = ready.entries[ready.entries.length - 1];
    if (last !== undefined) this.persistedIndex = last.index;
    else if (ready.snapshot !== null) this.persistedIndex = ready.snapshot.index;
    this.leaseClock.handedOut(ready.messagesAfterPersist, performance.now());
    for (const message of ready.messagesAfterPersist) this.options.transport.send(message);
    this.apply(ready, early);
    this.core.advance(ready);
  }

  /** The rest of `ready`: its snapshot, the committed entries after the first `done`, reads. */
  private apply(ready: Ready, done: number): void {
    if (ready.snapshot !== null) {
      this.options.stateMachine.restore(ready.snapshot.data);
      this.applied = ready.snapshot.index;
      this.snapshotIndex = ready.snapshot.index;
      this.snapshotAfter = this.nextSnapshotAfter();
    }
    this.applyEntries(ready.committedEntries, done, ready.committedEntries.length);
    this.settleReads(ready);
  }

  /** `entries[from..to)`: positions, not copies, since this runs for every batch. */
  private applyEntries(entries: readonly Entry[], from: number, to: number): void {
    for (let position = from; position < to; position++) {
      const entry = entries[position] as Entry;
      const result = entry.type === "normal" ? this.options.stateMachine.apply(entry) : undefined;
      this.applied = entry.index;
      const proposal = this.proposals.get(entry.index);
      if (proposal === undefined) continue;
      this.proposals.delete(entry.index);
      if (proposal.term === entry.term) proposal.resolve({ index: entry.index, result });
      else proposal.reject(overwritten());
    }
  }

  private settleReads(ready: Ready): void {
    for (const state of ready.readStates) {
      const read = this.reads.get(state.requestId);
      if (read === undefined) continue;
      if (state.index === null) {
        this.reads.delete(state.requestId);
        const leader = this.core.status().leader;
        read.reject(new RaftError("not-leader", "no leader confirmed the read", leader));
      } else {
        read.index = state.index;
      }
    }
    for (const [requestId, read] of this.reads) {
      if (read.index !== null && read.index <= this.applied) {
        this.reads.delete(requestId);
        for (const waiter of read.waiters) waiter.resolve(read.index);
      }
    }
  }

  /**
   * Starts a snapshot once enough entries have applied since the last, or moves one on
   * that waits for the loop: the core compacts between batches, and the storage records a
   * snapshot between persists.
   */
  private async snapshotStep(): Promise<void> {
    const job = this.snapshotJob;
    if (job === null) {
      if (this.applied - this.snapshotIndex >= this.snapshotAfter) this.takeSnapshot();
    } else if (job.stage === "taken") {
      const snapshot = this.core.compact(job.index, job.data);
      if (snapshot === null) {
        this.snapshotJob = null;
        return;
      }
      this.snapshotIndex = snapshot.index;
      this.snapshotAfter = this.nextSnapshotAfter();
      const saved = this.options.storage.saveSnapshot(snapshot);
      this.snapshotJob = { stage: "saving", saved };
      saved.then(
        () => {
          this.snapshotJob = { stage: "saved", snapshot };
          this.kick();
        },
        (error: unknown) => this.fail(error instanceof Error ? error : new Error(String(error))),
      );
    } else if (job.stage === "saved") {
      this.snapshotJob = null;
      await this.options.storage.compact(job.snapshot);
    }
  }

  /**
   * `snapshotEveryEntries` and up to half as many again, at random: members apply the same
   * entries, and would otherwise all write a snapshot at once.
   */
  private nextSnapshotAfter(): number {
    const every = this.options.snapshotEveryEntries;
    return every + randomInt(Math.floor(every / 2) + 1);
  }

  /** Takes the state machine's pieces a slice at a time, so that a large state stalls nothing. */
  private takeSnapshot(): void {
    const index = this.applied;
    const pieces = this.options.stateMachine.snapshot()[Symbol.iterator]();
    this.snapshotJob = { stage: "taking" };
    const taken: Uint8Array[] = [];
    const takeSlice = () => {
      if (this.stopped) return;
      try {
        const end = performance.now() + snapshotSliceMs;
        do {
          const next = pieces.next();
          if (next.done === true) {
            this.snapshotJob = { stage: "taken", index, data: Buffer.concat(taken) };
            this.kick();
            return;
          }
          taken.push(next.value);
        } while (performance.now() < end);
      } catch (error) {
        this.fail(error instanceof Error ? error : new Error(String(error)));
        return;
      }
      setImmediate(takeSlice);
    };
    takeSlice();
  }

  private fail(error: Error): void {
    if (this.stopped) return;
    // The fatal error is what gets reported; a second failure while closing adds nothing.
    this.stop().catch(() => undefined);
    this.options.onFatal(error);
  }
}
