import { assert } from "./assert.js";
import { applyChange, changeError, isMember, isVoter, members } from "./config.js";
import { emptySnapshot, RaftLog } from "./log.js";
import { Progress } from "./progress.js";
import { committedIndex, majority, voteOutcome } from "./quorum.js";
import type {
  ConfChange,
  ConfigState,
  Entry,
  EntryPayload,
  HardState,
  Message,
  NodeId,
  PeerReplication,
  PersistedState,
  ProposeResult,
  RaftOptions,
  RaftStatus,
  ReadState,
  Ready,
  Role,
  Snapshot,
} from "./types.js";

/** A read waiting for a quorum to confirm that this node is still leader. */
interface PendingRead {
  readonly requestId: number;
  readonly index: number;
  /** Where to answer: this node, or the follower that forwarded it. */
  readonly origin: NodeId;
  readonly context: number;
  readonly acks: Set<NodeId>;
}

/** Messages a leader sends from state that is already durable: they need not wait for the fsync. */
const leaderMessagesSentNow: ReadonlySet<Message["type"]> = new Set([
  "append",
  "heartbeat",
  "snapshot",
  "timeout-now",
  "read-index-response",
]);

/** State a fresh cluster member starts from: the bootstrap configuration, committed by all. */
export function bootstrapState(voters: readonly NodeId[]): PersistedState {
  assert(voters.length > 0, "bootstrap needs at least one voter");
  return {
    hardState: { term: 1, vote: null, commit: 1 },
    snapshot: null,
    entries: [{ index: 1, term: 1, type: "config", change: { kind: "bootstrap", voters } }],
  };
}

/** State of a node that will join a running cluster and learn everything from its leader. */
export const joiningState: PersistedState = {
  hardState: { term: 0, vote: null, commit: 0 },
  snapshot: null,
  entries: [],
};

/**
 * The Raft consensus core: a deterministic state machine driven by tick(), step(),
 * propose() and friends, whose output is collected with ready() and acknowledged with
 * advance(). It does no I/O and reads no clock; randomness comes from options.randomInt.
 */
export class Raft {
  readonly id: NodeId;
  private readonly options: RaftOptions;
  private readonly log: RaftLog;
  private term: number;
  private vote: NodeId | null;
  private role: Role = "follower";
  private leader: NodeId | null = null;
  private config: ConfigState;
  /** Configurations that took effect after the snapshot, for snapshots taken later. */
  private configHistory: { index: number; config: ConfigState }[] = [];
  /** Config entries up to this index have taken effect. */
  private configIndex: number;
  private pendingConfigIndex = 0;
  private progress = new Map<NodeId, Progress>();
  private votes = new Map<NodeId, boolean>();
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private randomizedElectionTicks = 0;
  private transferTarget: NodeId | null = null;
  private snapshotElapsed = new Map<NodeId, number>();
  /** Appends to send at the next ready(): "entries" only to peers that lack some, "with-empty" to all. */
  private broadcastPending: "entries" | "with-empty" | null = null;
  /** Ticks since this core started, up to an election timeout (for the restart quiet period). */
  private clock = 0;
  /** A leadership transfer was started: voters may now elect another leader despite any lease. */
  private leaseForfeited = false;
  /** Started from a term some leader may have held: honour its lease as if just heard from. */
  private readonly restarted: boolean;
  private readContext = 0;
  /** Reads wait for a heartbeat: one goes out with the next batch for all of them. */
  private readHeartbeatPending = false;
  private pendingReads: PendingRead[] = [];
  private readsAwaitingTermCommit: { requestId: number; origin: NodeId }[] = [];
  /** A configuration became active through a commit index that is not yet synced. */
  private configCommitUnsynced = false;
  private outboxNow: Message[] = [];
  private outboxAfterPersist: Message[] = [];
  private readStates: ReadState[] = [];
  private handedHardState: HardState;
  /** The term last known durable: a leader sends early only in a term that is already persisted. */
  private persistedTerm: number;
  private readyOutstanding = false;

  constructor(options: RaftOptions, persisted: PersistedState) {
    assert(options.heartbeatTicks >= 1, "heartbeatTicks must be at least 1");
    assert(
      options.electionTicks > options.heartbeatTicks,
      "electionTicks must exceed heartbeatTicks",
    );
    assert(options.maxEntriesPerAppend >= 1, "maxEntriesPerAppend must be at least 1");
    assert(options.maxAppendBytes >= 1, "maxAppendBytes must be at least 1");
    assert(options.maxUncommittedEntries >= 1, "maxUncommittedEntries must be at least 1");
    this.id = options.id;
    this.options = options;
    const snapshot = persisted.snapshot ?? emptySnapshot;
    this.log = new RaftLog(snapshot, persisted.entries, persisted.hardState.commit);
    this.term = persisted.hardState.term;
    // No leader ever holds the bootstrap term (1) or the joining one (0).
    this.restarted = this.term > 1;
    this.vote = persisted.hardState.vote;
    assert(this.term >= this.log.lastTerm(), "hard state term behind the log");
    this.config = snapshot.config;
    this.configIndex = snapshot.index;
    this.handedHardState = this.hardState();
    this.persistedTerm = this.term;
    this.applyCommittedConfig();
    this.becomeFollower(this.term, null);
  }

  // ---- inputs ---------------------------------------------------------------------------

  /** Advance logical time by one tick. */
  tick(): void {
    if (this.clock < this.options.electionTicks) this.clock++;
    this.electionElapsed++;
    if (this.role === "leader") {
      this.tickLeader();
      return;
    }
    if (isVoter(this.config, this.id) && this.electionElapsed >= this.randomizedElectionTicks) {
      this.electionElapsed = 0;
      this.campaign(this.options.preVote ? "prevote" : "vote", false);
    }
  }

  private tickLeader(): void {
    this.heartbeatElapsed++;
    for (const [peer, elapsed] of this.snapshotElapsed) {
      // A snapshot that got no answer is sent again: its message may have been lost.
      if (elapsed + 1 >= this.options.electionTicks * 4) {
        this.snapshotElapsed.delete(peer);
        this.progress.get(peer)?.becomeProbe();
      } else {
        this.snapshotElapsed.set(peer, elapsed + 1);
      }
    }
    for (const [peer, progress] of this.progress) {
      if (peer !== this.id) progress.ticksSinceHeard++;
    }
    if (this.options.checkQuorum && !this.quorumActive()) {
      this.becomeFollower(this.term, null);
      return;
    }
    if (this.electionElapsed >= this.options.electionTicks) {
      this.electionElapsed = 0;
      this.transferTarget = null;
    }
    if (this.heartbeatElapsed >= this.options.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat();
    }
  }

  /** Handle a message from a peer. */
  step(message: Message): void {
    assert(message.to === this.id, `message for ${message.to} delivered to ${this.id}`);
    if (message.term > this.term) {
      if (!this.acceptHigherTerm(message)) return;
    } else if (message.term < this.term) {
      this.answerStaleTerm(message);
      return;
    }
    switch (message.type) {
      case "vote":
      case "prevote":
        this.handleVoteRequest(message);
        return;
      default:
        break;
    }
    switch (this.role) {
      case "leader":
        this.stepLeader(message);
        return;
      case "candidate":
      case "pre-candidate":
        this.stepCandidate(message);
        return;
      case "follower":
        this.stepFollower(message);
        return;
    }
  }

  /** Whether a message of a higher term moves us to it (false: ignore the message). */
  private acceptHigherTerm(message: Message): boolean {
    if (message.type === "vote" || message.type === "prevote") {
      // Leader stickiness: while we hear from a leader, nobody else may start a term. A node
      // restarted in a term may have heard from one just before it stopped: it waits as long.
      const inLease =
        this.options.checkQuorum &&
        ((this.leader !== null && this.electionElapsed < this.options.electionTicks) ||
          (this.restarted && this.clock < this.options.electionTicks));
      if (inLease && !message.transfer) return false;
    }
    if (message.type === "prevote") return true;
    if (message.type === "prevote-response" && message.granted) return true;
    const fromLeader =
      message.type === "append" || message.type === "heartbeat" || message.type === "snapshot";
    this.becomeFollower(message.term, fromLeader ? message.from : null);
    return true;
  }

  private answerStaleTerm(message: Message): void {
    if (message.type === "append" || message.type === "heartbeat") {
      // Tell a deposed leader about the newer term, or it would never step down.
      this.send({
        type: "append-response",
        from: this.id,
        to: message.from,
        term: this.term,
        index: 0,
        reject: true,
        hintIndex: 0,
        hintTerm: 0,
      });
    } else if (message.type === "prevote") {
      this.send({
        type: "prevote-response",
        from: this.id,
        to: message.from,
        term: this.term,
        granted: false,
      });
    }
  }

  private handleVoteRequest(message: Extract<Message, { type: "vote" | "prevote" }>): void {
    const prevote = message.type === "prevote";
    const free =
      this.vote === message.from ||
      (this.vote === null && this.leader === null) ||
      (prevote && message.term > this.term);
    const upToDate =
      this.options.plantedBug === "vote-without-log-check" ||
      this.log.isUpToDate(message.lastIndex, message.lastTerm);
    // Membership is not checked: a voter that has not yet learned of its promotion must
    // still vote, or a cluster waiting for its vote could never elect a leader.
    const granted = free && upToDate;
    this.send({
      type: prevote ? "prevote-response" : "vote-response",
      from: this.id,
      to: message.from,
      // A granted prevote answers in the term it grants, so the candidate keeps its term.
      term: granted && prevote ? message.term : this.term,
      granted,
    });
    if (granted && !prevote) {
      this.electionElapsed = 0;
      this.vote = message.from;
    }
  }

  private stepLeader(message: Message): void {
    switch (message.type) {
      case "append-response":
        this.handleAppendResponse(message);
        return;
      case "heartbeat-response":
        this.handleHeartbeatResponse(message);
        return;
      case "read-index":
        this.readIndexFor(message.requestId, message.from);
        return;
      case "append":
      case "heartbeat":
      case "snapshot":
        assert(false, `two leaders in term ${this.term}: ${this.id} and ${message.from}`);
        return;
      case "vote-response":
      case "prevote-response":
      case "timeout-now":
      case "read-index-response":
      case "vote":
      case "prevote":
        return;
    }
  }

  private stepCandidate(message: Message): void {
    switch (message.type) {
      case "append":
      case "heartbeat":
      case "snapshot":
        this.becomeFollower(this.term, message.from);
        this.stepFollower(message);
        return;
      case "vote-response":
      case "prevote-response":
        this.handleVoteResponse(message);
        return;
      case "read-index":
        this.send({
          from: this.id,
          to: message.from,
          term: this.term,
          type: "read-index-response",
          requestId: message.requestId,
          index: -1,
        });
        return;
      case "read-index-response":
        this.readStates.push({
          requestId: message.requestId,
          index: message.index >= 0 ? message.index : null,
        });
        return;
      case "append-response":
      case "heartbeat-response":
      case "timeout-now":
      case "vote":
      case "prevote":
        return;
    }
  }

  private stepFollower(message: Message): void {
    switch (message.type) {
      case "append":
        this.heardFromLeader(message.from);
        this.handleAppend(message);
        return;
      case "heartbeat":
        this.heardFromLeader(message.from);
        this.log.commitTo(Math.min(message.commit, this.log.lastIndex()));
        this.applyCommittedConfig();
        this.send({
          from: this.id,
          to: message.from,
          term: this.term,
          type: "heartbeat-response",
          context: message.context,
        });
        return;
      case "snapshot":
        this.heardFromLeader(message.from);
        this.handleSnapshot(message);
        return;
      case "timeout-now":
        if (isVoter(this.config, this.id)) this.campaign("vote", true);
        return;
      case "read-index":
        this.send({
          from: this.id,
          to: message.from,
          term: this.term,
          type: "read-index-response",
          requestId: message.requestId,
          index: -1,
        });
        return;
      case "read-index-response":
        this.readStates.push({
          requestId: message.requestId,
          index: message.index >= 0 ? message.index : null,
        });
        return;
      case "append-response":
      case "heartbeat-response":
      case "vote-response":
      case "prevote-response":
      case "vote":
      case "prevote":
        return;
    }
  }

  private heardFromLeader(leader: NodeId): void {
    this.electionElapsed = 0;
    this.leader = leader;
  }

  /**
   * Propose a command. Resolves nothing by itself: the entry is committed when it shows up
   * in a ready batch's committedEntries at the returned index with the returned term.
   */
  propose(data: Uint8Array): ProposeResult {
    return this.appendAsLeader({ type: "normal", data });
  }

  /** Propose a single-server configuration change; one may be pending at a time. */
  proposeConfChange(change: ConfChange): ProposeResult {
    if (this.role === "leader") {
      if (this.pendingConfigIndex > this.log.commit) {
        return { ok: false, reason: "config-pending", leader: this.id };
      }
      if (change.kind === "bootstrap" || changeError(this.config, change) !== null) {
        return { ok: false, reason: "invalid-change", leader: this.id };
      }
    }
    const result = this.appendAsLeader({ type: "config", change });
    if (result.ok) this.pendingConfigIndex = result.index;
    return result;
  }

  private appendAsLeader(payload: Exclude<EntryPayload, { type: "noop" }>): ProposeResult {
    if (this.role !== "leader") return { ok: false, reason: "not-leader", leader: this.leader };
    if (this.transferTarget !== null) return { ok: false, reason: "transferring", leader: this.id };
    if (this.log.lastIndex() - this.log.commit >= this.options.maxUncommittedEntries) {
      return { ok: false, reason: "overloaded", leader: this.id };
    }
    const index = this.log.lastIndex() + 1;
    const entry: Entry =
      payload.type === "normal"
        ? { type: "normal", data: payload.data, term: this.term, index }
        : { type: "config", change: payload.change, term: this.term, index };
    this.log.append([entry]);
    this.scheduleBroadcast(false);
    return { ok: true, index: entry.index, term: entry.term };
  }

  /**
   * Ask for a linearizable read. Its ReadState comes out in a later ready batch: serve the
   * read once the state machine has applied its index.
   */
  readIndex(requestId: number): void {
    if (this.role === "leader") {
      this.readIndexFor(requestId, this.id);
    } else if (this.leader !== null) {
      this.send({ from: this.id, to: this.leader, term: this.term, type: "read-index", requestId });
    } else {
      this.readStates.push({ requestId, index: null });
    }
  }

  private readIndexFor(requestId: number, origin: NodeId): void {
    const committedInTerm = this.log.term(this.log.commit) === this.term;
    if (!committedInTerm && this.options.plantedBug !== "read-before-term-commit") {
      // Until an entry of this term commits, our commit index may be behind the cluster's.
      this.readsAwaitingTermCommit.push({ requestId, origin });
      return;
    }
    if (this.config.voters.length === 1) {
      this.answerRead(origin, requestId, this.log.commit);
      return;
    }
    // The next heartbeat, sent after this read arrived, confirms it and every read before it.
    const context = this.readContext + 1;
    this.readHeartbeatPending = true;
    this.pendingReads.push({
      requestId,
      index: this.log.commit,
      origin,
      context,
      acks: new Set([this.id]),
    });
  }

  /**
   * The basis of a leader lease: the newest heartbeat context that a quorum of voters has
   * answered (this leader counts as answering all). Each voter that answered refuses votes
   * for an election timeout after it received that heartbeat, so the runtime may answer reads
   * from local state until an election timeout (less a margin), counted from when it handed
   * that heartbeat out, has passed. Null when no lease can hold: not leader, no entry of this
   * term committed, a transfer started, or no CheckQuorum (without it followers do not refuse
   * votes while they hear from a leader).
   */
  leaseContext(): number | null {
    if (!this.options.checkQuorum || this.role !== "leader" || this.leaseForfeited) return null;
    if (this.log.term(this.log.commit) !== this.term) return null;
    const answered = this.config.voters
      .map((voter) =>
        voter === this.id ? this.readContext : (this.progress.get(voter)?.answeredContext ?? 0),
      )
      .sort((a, b) => b - a);
    const context = answered[majority(this.config.voters.length) - 1] ?? 0;
    return context > 0 ? context : null;
  }

  private answerRead(origin: NodeId, requestId: number, index: number | null): void {
    if (origin === this.id) {
      this.readStates.push({ requestId, index });
    } else {
      this.send({
        from: this.id,
        to: origin,
        term: this.term,
        type: "read-index-response",
        requestId,
        index: index ?? -1,
      });
    }
  }

  /** Hand leadership to `target`; proposals are refused until it takes over or an election timeout passes. */
  transferLeadership(target: NodeId): boolean {
    if (this.role !== "leader" || target === this.id || !isVoter(this.config, target)) return false;
    const progress = this.progress.get(target);
    assert(progress !== undefined, `no progress for voter ${target}`);
    this.transferTarget = target;
    this.electionElapsed = 0;
    if (progress.match === this.log.lastIndex()) {
      this.sendTimeoutNow(target);
    } else {
      this.sendAppend(target, true);
    }
    return true;
  }

  /**
   * The application has a snapshot of its state at `index` (at most the applied index):
   * the log up to there is dropped. Returns the snapshot for the runtime to store (with
   * the configuration in force at `index`), or null when the log already starts later.
   */
  compact(index: number, data: Uint8Array): Snapshot | null {
    assert(index <= this.log.applied, `snapshot at ${index} beyond applied ${this.log.applied}`);
    const term = this.log.term(index);
    if (index <= this.log.snapshot.index || term === undefined) return null;
    this.log.compact(index, term, this.configAt(index), data);
    // The snapshot now carries the configuration at `index`.
    this.configHistory = this.configHistory.filter((change) => change.index > index);
    return this.log.snapshot;
  }

  private configAt(index: number): ConfigState {
    let config = this.log.snapshot.config;
    for (const change of this.configHistory) {
      if (change.index <= index) config = change.config;
    }
    return config;
  }

  // ---- output ---------------------------------------------------------------------------

  hasReady(): boolean {
    if (this.readyOutstanding) return false;
    return (
      this.broadcastPending !== null ||
      this.readHeartbeatPending ||
      this.outboxNow.length > 0 ||
      this.outboxAfterPersist.length > 0 ||
      this.readStates.length > 0 ||
      this.log.hasUnhandedSnapshot() ||
      this.log.hasUnstable() ||
      !sameHardState(this.hardState(), this.handedHardState) ||
      Math.min(this.applyLimit(), this.log.lastIndex()) > this.log.applying
    );
  }

  /** Collect the work accumulated since the last batch. Call advance() before the next. */
  ready(): Ready {
    assert(!this.readyOutstanding, "ready() called before advance() of the previous batch");
    if (this.broadcastPending !== null && this.role === "leader") {
      this.broadcastAppend(this.broadcastPending === "with-empty");
    }
    this.broadcastPending = null;
    if (this.readHeartbeatPending && this.role === "leader") this.broadcastHeartbeat();
    this.readHeartbeatPending = false;
    const hardState = this.hardState();
    const previous = this.handedHardState;
    const changed = !sameHardState(hardState, previous);
    this.handedHardState = hardState;
    const snapshot = this.log.takeUnhandedSnapshot();
    const entries = this.log.takeUnstable();
    const ready: Ready = {
      hardState: changed ? hardState : null,
      snapshot,
      entries,
      messages: this.outboxNow,
      messagesAfterPersist: this.outboxAfterPersist,
      committedEntries: this.log.takeCommitted(this.applyLimit()),
      readStates: this.readStates,
      // A commit index that activated a configuration must survive a crash: restarting
      // with the older configuration could let this node count votes it no longer may.
      mustSync:
        entries.length > 0 ||
        snapshot !== null ||
        hardState.term !== previous.term ||
        hardState.vote !== previous.vote ||
        (changed && this.configCommitUnsynced),
    };
    this.configCommitUnsynced = false;
    this.outboxNow = [];
    this.outboxAfterPersist = [];
    this.readStates = [];
    this.readyOutstanding = true;
    return ready;
  }

  /** The runtime has persisted, sent and applied `ready`. */
  advance(ready: Ready): void {
    assert(this.readyOutstanding, "advance() without an outstanding ready");
    this.readyOutstanding = false;
    if (ready.hardState !== null) this.persistedTerm = ready.hardState.term;
    this.log.stableTo(ready.entries);
    const lastApplied = ready.committedEntries[ready.committedEntries.length - 1];
    if (lastApplied !== undefined) this.log.appliedTo(lastApplied.index);
    if (this.role === "leader") {
      const self = this.progress.get(this.id);
      if (self?.maybeUpdate(this.log.stableIndex) && this.maybeCommit()) {
        this.scheduleBroadcast(true);
      }
    }
  }

  private applyLimit(): number {
    return this.options.plantedBug === "apply-before-commit"
      ? this.log.lastIndex()
      : this.log.commit;
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.commit };
  }

  status(): RaftStatus {
    return {
      id: this.id,
      role: this.role,
      term: this.term,
      vote: this.vote,
      leader: this.leader,
      commit: this.log.commit,
      applied: this.log.applied,
      firstIndex: this.log.firstIndex(),
      lastIndex: this.log.lastIndex(),
      config: this.config,
      transferringTo: this.transferTarget,
    };
  }

  /** The leader this node knows, without building a whole status (asked per message). */
  knownLeader(): NodeId | null {
    return this.leader;
  }

  /** A leader's view of how far each member has replicated; empty on other roles. */
  replicationStatus(): PeerReplication[] {
    if (this.role !== "leader") return [];
    return [...this.progress].map(([id, progress]) => ({
      id,
      match: progress.match,
      next: progress.next,
      state: progress.state,
      ticksSinceHeard: progress.ticksSinceHeard,
    }));
  }

  /** The entry at `index`, if the log still holds it. */
  entryAt(index: number): Entry | undefined {
    return this.log.entry(index);
  }

  /** The term of the entry at `index` (also the snapshot's), if known. */
  termAt(index: number): number | undefined {
    return this.log.term(index);
  }

  // ---- roles ----------------------------------------------------------------------------

  private reset(term: number): void {
    if (term !== this.term) {
      assert(term > this.term, `term went back from ${this.term} to ${term}`);
      this.term = term;
      this.vote = null;
    }
    this.leader = null;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTicks =
      this.options.electionTicks + this.options.randomInt(this.options.electionTicks);
    this.transferTarget = null;
    this.leaseForfeited = false;
    this.readHeartbeatPending = false;
    this.votes = new Map();
    this.progress = new Map();
    this.snapshotElapsed = new Map();
    this.broadcastPending = null;
    this.failPendingReads();
  }

  private failPendingReads(): void {
    for (const read of this.pendingReads) this.answerRead(read.origin, read.requestId, null);
    for (const read of this.readsAwaitingTermCommit)
      this.answerRead(read.origin, read.requestId, null);
    this.pendingReads = [];
    this.readsAwaitingTermCommit = [];
  }

  private becomeFollower(term: number, leader: NodeId | null): void {
    this.reset(term);
    this.role = "follower";
    this.leader = leader;
  }

  private campaign(kind: "prevote" | "vote", transfer: boolean): void {
    if (kind === "prevote") {
      this.reset(this.term);
      this.role = "pre-candidate";
    } else {
      this.reset(this.term + 1);
      this.role = "candidate";
      this.vote = this.id;
    }
    this.votes.set(this.id, true);
    if (voteOutcome(this.config.voters, this.votes) === "won") {
      this.wonElection();
      return;
    }
    const term = kind === "prevote" ? this.term + 1 : this.term;
    for (const voter of this.config.voters) {
      if (voter === this.id) continue;
      this.send({
        type: kind,
        from: this.id,
        to: voter,
        term,
        lastIndex: this.log.lastIndex(),
        lastTerm: this.log.lastTerm(),
        transfer,
      });
    }
  }

  private handleVoteResponse(
    message: Extract<Message, { type: "vote-response" | "prevote-response" }>,
  ): void {
    const expected = this.role === "pre-candidate" ? "prevote-response" : "vote-response";
    if (message.type !== expected) return;
    this.votes.set(message.from, message.granted);
    switch (voteOutcome(this.config.voters, this.votes)) {
      case "won":
        this.wonElection();
        return;
      case "lost":
        this.becomeFollower(this.term, null);
        return;
      case "pending":
        return;
    }
  }

  private wonElection(): void {
    if (this.role === "pre-candidate") {
      this.campaign("vote", false);
    } else {
      this.becomeLeader();
    }
  }

  private becomeLeader(): void {
    assert(this.role === "candidate", "only a candidate becomes leader");
    assert(this.vote === this.id, "a leader voted for itself");
    this.reset(this.term);
    this.role = "leader";
    this.leader = this.id;
    for (const member of members(this.config)) this.addProgress(member);
    this.log.append([{ type: "noop", term: this.term, index: this.log.lastIndex() + 1 }]);
    // No configuration change until an entry of this term commits (single-server change safety).
    this.pendingConfigIndex = this.log.lastIndex();
    this.scheduleBroadcast(false);
  }

  private addProgress(member: NodeId): void {
    const progress = new Progress(this.log.lastIndex() + 1, this.options.maxInflightAppends);
    if (member === this.id) progress.maybeUpdate(this.log.stableIndex);
    this.progress.set(member, progress);
  }

  // ---- replication ----------------------------------------------------------------------

  private handleAppend(message: Extract<Message, { type: "append" }>): void {
    let { prevIndex, prevTerm, entries } = message;
    if (prevIndex < this.log.commit) {
      // Our committed prefix matches the leader's: skip what it covers.
      entries = entries.filter((entry) => entry.index > this.log.commit);
      prevIndex = this.log.commit;
      const term = this.log.term(prevIndex);
      assert(term !== undefined, `no term for commit index ${prevIndex}`);
      prevTerm = term;
    }
    const lastNew = this.log.maybeAppend(prevIndex, prevTerm, entries);
    if (lastNew !== null) {
      this.log.commitTo(Math.min(message.commit, lastNew));
      this.applyCommittedConfig();
      this.send(this.appendAnswer(message.from, lastNew, false, 0, 0));
      return;
    }
    const hint = this.log.findConflictByTerm(Math.min(prevIndex, this.log.lastIndex()), prevTerm);
    this.send(this.appendAnswer(message.from, prevIndex, true, hint.index, hint.term));
  }

  private appendAnswer(
    to: NodeId,
    index: number,
    reject: boolean,
    hintIndex: number,
    hintTerm: number,
  ): Message {
    return {
      type: "append-response",
      from: this.id,
      to,
      term: this.term,
      index,
      reject,
      hintIndex,
      hintTerm,
    };
  }

  private handleSnapshot(message: Extract<Message, { type: "snapshot" }>): void {
    const snapshot = message.snapshot;
    if (snapshot.index > this.log.commit) {
      if (this.log.matchTerm(snapshot.index, snapshot.term)) {
        this.log.commitTo(snapshot.index);
        this.applyCommittedConfig();
      } else {
        this.log.restore(snapshot);
        this.config = snapshot.config;
        this.configHistory = [];
        this.configIndex = snapshot.index;
      }
    }
    this.send(this.appendAnswer(message.from, this.log.commit, false, 0, 0));
  }

  private handleAppendResponse(message: Extract<Message, { type: "append-response" }>): void {
    const progress = this.progress.get(message.from);
    if (progress === undefined) return;
    progress.ticksSinceHeard = 0;
    if (message.reject) {
      const hint = this.log.findConflictByTerm(message.hintIndex, message.hintTerm);
      if (progress.maybeDecrement(message.index, hint.index + 1))
        this.sendAppend(message.from, true);
      return;
    }
    if (!progress.maybeUpdate(message.index)) return;
    if (progress.state === "probe") progress.becomeReplicate();
    if (progress.state === "snapshot" && progress.match >= progress.pendingSnapshot) {
      this.snapshotElapsed.delete(message.from);
      progress.becomeProbe();
    }
    if (this.maybeCommit()) {
      this.scheduleBroadcast(true);
    } else {
      while (this.sendAppend(message.from, false)) {
        // Fill the pipeline up to maxInflightAppends.
      }
    }
    if (message.from === this.transferTarget && progress.match === this.log.lastIndex()) {
      this.sendTimeoutNow(message.from);
    }
  }

  private sendTimeoutNow(to: NodeId): void {
    this.leaseForfeited = true;
    this.send({ from: this.id, to, term: this.term, type: "timeout-now" });
  }

  private handleHeartbeatResponse(message: Extract<Message, { type: "heartbeat-response" }>): void {
    const progress = this.progress.get(message.from);
    if (progress === undefined) return;
    progress.heardFrom();
    if (message.context > progress.answeredContext) progress.answeredContext = message.context;
    if (progress.match < this.log.lastIndex()) this.sendAppend(message.from, true);
    this.acknowledgeReads(message.from, message.context);
  }

  private acknowledgeReads(from: NodeId, context: number): void {
    if (!isVoter(this.config, from)) return;
    let released = -1;
    this.pendingReads.forEach((read, position) => {
      if (read.context <= context) read.acks.add(from);
      const acked = this.config.voters.filter((voter) => read.acks.has(voter)).length;
      if (acked >= majority(this.config.voters.length)) released = position;
    });
    // A quorum for a later read also confirms every earlier one.
    for (const read of this.pendingReads.slice(0, released + 1))
      this.answerRead(read.origin, read.requestId, read.index);
    this.pendingReads = this.pendingReads.slice(released + 1);
  }

  /** Send `to` what it is missing; returns whether a message went out. */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const progress = this.progress.get(to);
    if (progress === undefined || to === this.id || progress.isPaused()) return false;
    const prevIndex = progress.next - 1;
    const prevTerm = this.log.term(prevIndex);
    if (prevTerm === undefined) {
      progress.becomeSnapshot(this.log.snapshot.index);
      this.snapshotElapsed.set(to, 0);
      this.send({
        from: this.id,
        to,
        term: this.term,
        type: "snapshot",
        snapshot: this.log.snapshot,
      });
      return false;
    }
    const entries =
      progress.next <= this.log.lastIndex()
        ? this.log.slice(
            progress.next,
            this.log.lastIndex(),
            this.options.maxEntriesPerAppend,
            this.options.maxAppendBytes,
          )
        : [];
    if (entries.length === 0 && !sendIfEmpty) return false;
    this.send({
      from: this.id,
      to,
      term: this.term,
      type: "append",
      prevIndex,
      prevTerm,
      entries,
      commit: this.log.commit,
    });
    progress.sentEntries(prevIndex + entries.length, entries.length);
    return true;
  }

  private broadcastAppend(sendIfEmpty: boolean): void {
    for (const peer of this.progress.keys()) this.sendAppend(peer, sendIfEmpty);
  }

  /**
   * Appends go out when the batch is collected, so that all proposals and commit
   * advances since the last batch share one message per follower.
   */
  private scheduleBroadcast(withEmpty: boolean): void {
    this.broadcastPending =
      withEmpty || this.broadcastPending === "with-empty" ? "with-empty" : "entries";
  }

  /** Returns the heartbeat's context: an answer carrying it or a later one confirms reads. */
  private broadcastHeartbeat(): number {
    const context = ++this.readContext;
    for (const [peer, progress] of this.progress) {
      if (peer === this.id) continue;
      this.send({
        from: this.id,
        to: peer,
        term: this.term,
        type: "heartbeat",
        commit: Math.min(progress.match, this.log.commit),
        context,
      });
    }
    return context;
  }

  /** Section 5.4.2: commit only by counting replicas of an entry of the current term. */
  private maybeCommit(): boolean {
    const index = committedIndex(this.config.voters, (id) => this.progress.get(id)?.match ?? 0);
    if (index <= this.log.commit) return false;
    const currentTerm = this.log.term(index) === this.term;
    if (!currentTerm && this.options.plantedBug !== "commit-previous-term") return false;
    this.log.commitTo(index);
    this.applyCommittedConfig();
    if (this.role === "leader" && this.log.term(this.log.commit) === this.term) {
      const waiting = this.readsAwaitingTermCommit;
      this.readsAwaitingTermCommit = [];
      for (const read of waiting) this.readIndexFor(read.requestId, read.origin);
    }
    return true;
  }

  /** Whether a quorum of voters has answered within the last election timeout. */
  private quorumActive(): boolean {
    let active = 0;
    for (const [peer, progress] of this.progress) {
      if (!isVoter(this.config, peer)) continue;
      if (peer === this.id || progress.ticksSinceHeard < this.options.electionTicks) active++;
    }
    return active >= majority(this.config.voters.length);
  }

  // ---- configuration --------------------------------------------------------------------

  /** Configuration entries take effect once committed (single-server changes, one at a time). */
  private applyCommittedConfig(): void {
    // Re-entrant: a change may shrink the quorum and commit more before this loop ends.
    while (this.configIndex < this.log.commit) {
      this.configIndex++;
      const entry = this.log.entry(this.configIndex);
      assert(entry !== undefined, `committed entry ${this.configIndex} missing`);
      if (entry.type === "config") this.applyConfigEntry(entry.index, entry.change);
    }
  }

  private applyConfigEntry(index: number, change: ConfChange): void {
    this.config = applyChange(this.config, change);
    this.configHistory.push({ index, config: this.config });
    this.configCommitUnsynced = true;
    if (this.role !== "leader") return;
    for (const member of members(this.config)) {
      if (!this.progress.has(member)) this.addProgress(member);
    }
    for (const peer of [...this.progress.keys()]) {
      if (!isMember(this.config, peer)) {
        this.progress.delete(peer);
        this.snapshotElapsed.delete(peer);
      }
    }
    if (this.transferTarget !== null && !isVoter(this.config, this.transferTarget))
      this.transferTarget = null;
    if (!isVoter(this.config, this.id)) {
      this.handOverAfterRemoval();
      return;
    }
    // A smaller quorum may commit more now.
    if (this.maybeCommit()) this.scheduleBroadcast(true);
  }

  /**
   * Our own removal committed: tell the remaining voters so (they may not know the entry
   * committed) and let the most caught-up one campaign at once instead of after a timeout.
   */
  private handOverAfterRemoval(): void {
    this.broadcastHeartbeat();
    const successor = [...this.progress].find(
      ([peer, progress]) => isVoter(this.config, peer) && progress.match === this.log.lastIndex(),
    )?.[0];
    if (successor !== undefined) this.sendTimeoutNow(successor);
    this.becomeFollower(this.term, null);
  }

  // ---- messages -------------------------------------------------------------------------
  // Messages are written out field by field: spreading a shared envelope into each costs
  // microseconds per message in V8.

  private send(message: Message): void {
    this.outbox(message).push(message);
  }

  private outbox(message: Message): Message[] {
    const sendNow =
      (this.role === "leader" &&
        this.persistedTerm === this.term &&
        leaderMessagesSentNow.has(message.type)) ||
      (message.type === "vote-response" && this.options.plantedBug === "vote-before-persist");
    return sendNow ? this.outboxNow : this.outboxAfterPersist;
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
