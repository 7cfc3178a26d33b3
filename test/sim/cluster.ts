import { RaftInvariantError } from "../../raft/core/assert.js";
import { bootstrapState, joiningState, Raft } from "../../raft/core/raft.js";
import type {
  Entry,
  Message,
  NodeId,
  PersistedState,
  PlantedBug,
  RaftOptions,
  Ready,
} from "../../raft/core/types.js";
import { LeaseClock } from "../../raft/lease-clock.js";
import { withBatch, withSnapshot } from "../../raft/storage/persisted-log.js";
import {
  type AppState,
  applyToApp,
  decodeApp,
  encodeApp,
  entryKey,
  InvariantViolation,
  LivenessViolation,
  type LogView,
  SafetyChecker,
} from "./checker.js";
import { Prng } from "./prng.js";

/** Simulated time units per Raft tick. */
const unitsPerTick = 10;
const electionTicks = 10;
/** Leases as the runtime keeps them: an election timeout less two ticks. */
function newLeaseClock(): LeaseClock {
  return new LeaseClock((electionTicks - 2) * unitsPerTick);
}

/** Once healed, a leader must be elected and a proposal applied everywhere within this many ticks. */
export const livenessBoundTicks = 30 * electionTicks;

/** Fault probabilities and parameters, drawn per seed so that campaigns cover many mixes. */
export interface FaultProfile {
  readonly dropRate: number;
  readonly duplicateRate: number;
  readonly minDelayUnits: number;
  readonly maxDelayUnits: number;
  readonly maxPersistUnits: number;
  readonly crashWeight: number;
  readonly partitionWeight: number;
  readonly transferWeight: number;
  readonly membershipWeight: number;
  readonly actionIntervalUnits: number;
  /** Failpoint: crash a node that has just sent messages but not yet synced a new vote. */
  readonly crashBeforeVoteSyncRate: number;
  /** Failpoint: crash a leader right after its commit index advanced. */
  readonly crashAfterCommitRate: number;
  /** Failpoint (etcd's raftBeforeLeaderSend): crash a leader before it sends appends. */
  readonly crashBeforeLeaderSendRate: number;
  /** Nemesis: cut a leader off from everyone the moment it is elected. */
  readonly isolateNewLeaderRate: number;
  /** Clients propose up to this many commands at once. */
  readonly maxProposalBurst: number;
  readonly compactEvery: number;
  readonly maxEntriesPerAppend: number;
  readonly maxAppendBytes: number;
  readonly maxInflightAppends: number;
  readonly maxUncommittedEntries: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
}

export function drawProfile(prng: Prng): FaultProfile {
  const minDelayUnits = prng.between(1, 4);
  return {
    dropRate: prng.pick([0, 0.01, 0.05, 0.15]),
    duplicateRate: prng.pick([0, 0.02, 0.1]),
    minDelayUnits,
    maxDelayUnits: minDelayUnits + prng.pick([2, 10, 30, 60]),
    maxPersistUnits: prng.pick([0, 2, 8, 20]),
    crashWeight: prng.pick([0, 1, 2, 4]),
    partitionWeight: prng.pick([0, 1, 2, 4, 8]),
    transferWeight: prng.pick([0, 1, 2]),
    membershipWeight: prng.pick([0, 1, 2]),
    actionIntervalUnits: prng.between(3, 15),
    crashBeforeVoteSyncRate: prng.pick([0, 0.1, 0.3]),
    crashAfterCommitRate: prng.pick([0, 0.01, 0.05]),
    crashBeforeLeaderSendRate: prng.pick([0, 0.005, 0.02]),
    isolateNewLeaderRate: prng.pick([0, 0.1, 0.3]),
    maxProposalBurst: prng.pick([1, 4, 16]),
    compactEvery: prng.pick([4, 16, 64]),
    maxEntriesPerAppend: prng.pick([1, 2, 4, 64]),
    maxAppendBytes: prng.pick([16, 1024 * 1024]),
    maxInflightAppends: prng.pick([1, 4, 16]),
    maxUncommittedEntries: prng.pick([32, 128]),
    preVote: prng.chance(0.8),
    checkQuorum: prng.chance(0.8),
  };
}

/** Counts of everything injected, so that a campaign shows it really injected faults. */
export type FaultCounts = Record<
  | "dropped"
  | "partitionDropped"
  | "duplicated"
  | "reordered"
  | "crashed"
  | "crashedMidFsync"
  | "crashedBeforeVoteSync"
  | "crashedAfterCommit"
  | "crashedBeforeLeaderSend"
  | "restarted"
  | "partitioned"
  | "asymmetricPartitions"
  | "isolatedNewLeaders"
  | "transfers"
  | "membershipChanges"
  | "compactions"
  | "snapshotsInstalled"
  | "leadersElected"
  | "proposed"
  | "acknowledged"
  | "readsServed"
  | "leaseReadsServed"
  | "heals",
  number
>;

function zeroCounts(): FaultCounts {
  return {
    dropped: 0,
    partitionDropped: 0,
    duplicated: 0,
    reordered: 0,
    crashed: 0,
    crashedMidFsync: 0,
    crashedBeforeVoteSync: 0,
    crashedAfterCommit: 0,
    crashedBeforeLeaderSend: 0,
    restarted: 0,
    partitioned: 0,
    asymmetricPartitions: 0,
    isolatedNewLeaders: 0,
    transfers: 0,
    membershipChanges: 0,
    compactions: 0,
    snapshotsInstalled: 0,
    leadersElected: 0,
    proposed: 0,
    acknowledged: 0,
    readsServed: 0,
    leaseReadsServed: 0,
    heals: 0,
  };
}

interface SimNode {
  readonly id: NodeId;
  readonly prng: Prng;
  up: boolean;
  retired: boolean;
  /** Bumped on every crash, so that events of an earlier life are ignored. */
  life: number;
  core: Raft | null;
  /** The runtime's lease bookkeeping, in simulated time; new with each start. */
  lease: LeaseClock;
  durable: PersistedState;
  persisting: Ready | null;
  app: AppState;
  wasLeaderInTerm: number;
}

interface QueuedEvent {
  readonly time: number;
  readonly order: number;
  readonly run: () => void;
}

/** A min-heap of events ordered by time, then by insertion order. */
class EventQueue {
  private readonly heap: QueuedEvent[] = [];
  private order = 0;

  push(time: number, run: () => void): void {
    this.heap.push({ time, order: this.order++, run });
    let at = this.heap.length - 1;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!before(this.heap[at] as QueuedEvent, this.heap[parent] as QueuedEvent)) break;
      [this.heap[at], this.heap[parent]] = [
        this.heap[parent] as QueuedEvent,
        this.heap[at] as QueuedEvent,
      ];
      at = parent;
    }
  }

  pop(): QueuedEvent | undefined {
    const top = this.heap[0];
    const last = this.heap.pop();
    if (top === undefined || last === undefined || this.heap.length === 0) return top;
    this.heap[0] = last;
    let at = 0;
    for (;;) {
      const left = 2 * at + 1;
      const right = left + 1;
      let smallest = at;
      if (
        left < this.heap.length &&
        before(this.heap[left] as QueuedEvent, this.heap[smallest] as QueuedEvent)
      )
        smallest = left;
      if (
        right < this.heap.length &&
        before(this.heap[right] as QueuedEvent, this.heap[smallest] as QueuedEvent)
      )
        smallest = right;
      if (smallest === at) return top;
      [this.heap[at], this.heap[smallest]] = [
        this.heap[smallest] as QueuedEvent,
        this.heap[at] as QueuedEvent,
      ];
      at = smallest;
    }
  }
}

function before(a: QueuedEvent, b: QueuedEvent): boolean {
  return a.time < b.time || (a.time === b.time && a.order < b.order);
}

export interface SimulationOptions {
  readonly seed: number;
  readonly nodeCount: number;
  readonly events: number;
  readonly plantedBug?: PlantedBug;
  /** Keep the last lines of the event trace, printed when a run fails. */
  readonly traceLines?: number;
}

export interface SimulationResult {
  readonly seed: number;
  readonly nodeCount: number;
  readonly events: number;
  readonly ok: boolean;
  readonly failure?: string;
  readonly trace: readonly string[];
  readonly counts: FaultCounts;
  readonly profile: FaultProfile;
}

/**
 * A whole cluster on one thread, driven by one seed: nodes with simulated disks, a
 * network that loses, delays, duplicates and reorders, crashes that lose unsynced
 * writes, partitions, transfers, membership changes and snapshots. Every step is
 * checked by SafetyChecker; heal phases check liveness.
 */
export class Simulation {
  private readonly prng: Prng;
  readonly profile: FaultProfile;
  readonly counts = zeroCounts();
  private readonly checker = new SafetyChecker();
  private readonly queue = new EventQueue();
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly blocked = new Set<string>();
  private readonly lastDelivery = new Map<string, number>();
  private readonly traceRing: string[] = [];
  private now = 0;
  private eventCount = 0;
  private nextNodeNumber = 1;
  private nextRequest = 1;
  private readonly readBounds = new Map<string, number>();
  private readonly proposals = new Map<string, { node: NodeId; index: number; term: number }>();
  private pendingRemoval: { node: NodeId; index: number; term: number } | null = null;
  /** While healed: when liveness must hold by, and the first proposal acknowledged since. */
  private healing: { deadline: number; commitAtHeal: number; acknowledged: number } | null = null;

  constructor(private readonly options: SimulationOptions) {
    this.prng = new Prng(options.seed);
    this.profile = drawProfile(this.prng);
    const voters = Array.from({ length: options.nodeCount }, () => `n${this.nextNodeNumber++}`);
    for (const id of voters) this.addNode(id, bootstrapState(voters));
  }

  run(): SimulationResult {
    const failure = this.runUntilFailure();
    return {
      seed: this.options.seed,
      nodeCount: this.options.nodeCount,
      events: this.eventCount,
      ok: failure === undefined,
      ...(failure === undefined ? {} : { failure }),
      trace: failure === undefined ? [] : [...this.traceRing, ...this.nodeSummaries()],
      counts: this.counts,
      profile: this.profile,
    };
  }

  private runUntilFailure(): string | undefined {
    this.queue.push(this.profile.actionIntervalUnits, () => this.act());
    const chaosEvents = Math.max(500, Math.floor(this.options.events / 4));
    let nextHealAt = chaosEvents;
    let finalHeal = false;
    try {
      for (;;) {
        if (this.healing === null) {
          // The run ends healed: the last phase checks liveness too.
          if (finalHeal) return undefined;
          if (this.eventCount >= this.options.events) {
            finalHeal = true;
            this.startHeal();
          } else if (this.eventCount >= nextHealAt) {
            nextHealAt = this.eventCount + chaosEvents;
            this.startHeal();
          }
        }
        const event = this.queue.pop();
        if (event === undefined) return "no events left to run";
        this.now = event.time;
        this.eventCount++;
        event.run();
        this.observe();
        this.checkLiveness();
      }
    } catch (error) {
      if (
        error instanceof InvariantViolation ||
        error instanceof RaftInvariantError ||
        error instanceof LivenessViolation
      ) {
        return `${error.name}: ${error.message}`;
      }
      throw error;
    }
  }

  private nodeSummaries(): string[] {
    return [...this.nodes.values()].map((node) => {
      if (node.core === null) return `${node.id} ${node.retired ? "retired" : "down"}`;
      const s = node.core.status();
      return `${node.id} ${s.role} term=${s.term} vote=${s.vote} leader=${s.leader} log=${s.firstIndex}..${s.lastIndex}/${node.core.termAt(s.lastIndex)} commit=${s.commit} applied=${node.app.index} voters=${s.config.voters.join(",")} learners=${s.config.learners.join(",")}`;
    });
  }

  private trace(line: string): void {
    const limit = this.options.traceLines ?? 0;
    if (limit === 0) return;
    this.traceRing.push(`${this.now} ${line}`);
    if (this.traceRing.length > limit) this.traceRing.shift();
  }

  // ---- nodes ----------------------------------------------------------------------------

  private addNode(id: NodeId, state: PersistedState): SimNode {
    const node: SimNode = {
      id,
      prng: this.prng.fork(),
      up: false,
      retired: false,
      life: 0,
      core: null,
      lease: newLeaseClock(),
      durable: state,
      persisting: null,
      app: { index: 0, hash: 0 },
      wasLeaderInTerm: 0,
    };
    this.nodes.set(id, node);
    this.start(node);
    return node;
  }

  private raftOptions(node: SimNode): RaftOptions {
    return {
      id: node.id,
      electionTicks,
      heartbeatTicks: 1,
      randomInt: (bound) => node.prng.int(bound),
      maxEntriesPerAppend: this.profile.maxEntriesPerAppend,
      maxAppendBytes: this.profile.maxAppendBytes,
      maxInflightAppends: this.profile.maxInflightAppends,
      maxUncommittedEntries: this.profile.maxUncommittedEntries,
      preVote: this.profile.preVote,
      checkQuorum: this.profile.checkQuorum,
      ...(this.options.plantedBug === undefined ? {} : { plantedBug: this.options.plantedBug }),
    };
  }

  private start(node: SimNode): void {
    const durable = node.durable;
    node.core = new Raft(this.raftOptions(node), durable);
    node.lease = newLeaseClock();
    node.up = true;
    node.persisting = null;
    node.app = durable.snapshot === null ? { index: 0, hash: 0 } : decodeApp(durable.snapshot.data);
    node.wasLeaderInTerm = 0;
    this.checker.restarted(node.id, node.core.status().commit);
    const life = node.life;
    const firstTick = this.now + 1 + node.prng.int(unitsPerTick);
    this.queue.push(firstTick, () => this.tick(node, life));
    this.trace(
      `${node.id} start term=${durable.hardState.term} commit=${durable.hardState.commit}`,
    );
  }

  private alive(node: SimNode, life: number): node is SimNode & { core: Raft } {
    return node.up && node.life === life && node.core !== null;
  }

  private tick(node: SimNode, life: number): void {
    if (!this.alive(node, life)) return;
    node.core.tick();
    this.pump(node);
    this.queue.push(this.now + unitsPerTick, () => this.tick(node, life));
  }

  private crash(node: SimNode): void {
    if (node.persisting !== null) this.counts.crashedMidFsync++;
    this.counts.crashed++;
    node.up = false;
    node.life++;
    node.core = null;
    node.persisting = null;
    this.trace(`${node.id} crash`);
  }

  /** Take the next ready batch and start persisting it, as a runtime would. */
  private pump(node: SimNode): void {
    if (!this.alive(node, node.life) || node.persisting !== null || !node.core.hasReady()) return;
    const core = node.core;
    const ready = core.ready();
    const first = ready.entries[0];
    if (first !== undefined) {
      const prevTerm = core.termAt(first.index - 1);
      if (prevTerm === undefined)
        throw new InvariantViolation(`${node.id}: no term before handed entry ${first.index}`);
      this.checker.appended(node.id, ready.entries, prevTerm);
    }
    const appends = ready.messages.some((message) => message.type === "append");
    if (
      this.healing === null &&
      appends &&
      this.prng.chance(this.profile.crashBeforeLeaderSendRate)
    ) {
      this.counts.crashedBeforeLeaderSend++;
      this.crashAndRestart(node);
      return;
    }
    node.lease.handedOut(ready.messages, this.now);
    for (const message of ready.messages) this.send(message);
    node.persisting = ready;
    const newVote =
      ready.hardState !== null && ready.hardState.vote !== node.durable.hardState.vote;
    if (
      this.healing === null &&
      newVote &&
      this.prng.chance(this.profile.crashBeforeVoteSyncRate)
    ) {
      this.counts.crashedBeforeVoteSync++;
      this.crashAndRestart(node);
      return;
    }
    const life = node.life;
    this.queue.push(this.now + node.prng.int(this.profile.maxPersistUnits + 1), () =>
      this.persisted(node, life, ready),
    );
  }

  private persisted(node: SimNode, life: number, ready: Ready): void {
    if (!this.alive(node, life)) return;
    this.writeDurable(node, ready);
    node.lease.handedOut(ready.messagesAfterPersist, this.now);
    for (const message of ready.messagesAfterPersist) this.send(message);
    if (ready.snapshot !== null) {
      this.checker.installedSnapshot(node.id, ready.snapshot);
      node.app = decodeApp(ready.snapshot.data);
      this.counts.snapshotsInstalled++;
    }
    for (const entry of ready.committedEntries) this.apply(node, entry);
    for (const read of ready.readStates) this.readAnswered(node, read.requestId, read.index);
    node.persisting = null;
    node.core.advance(ready);
    this.maybeCompact(node);
    this.pump(node);
  }

  private writeDurable(node: SimNode, ready: Ready): void {
    // A write without a sync counts as lost: the worst a crash can do to it.
    if (!ready.mustSync) return;
    node.durable = withBatch(node.durable, ready);
    if (ready.hardState !== null) {
      this.checker.durable(node.id, ready.hardState.term, ready.hardState.commit);
    }
  }

  private apply(node: SimNode, entry: Entry): void {
    if (entry.index !== node.app.index + 1) {
      throw new InvariantViolation(`${node.id} applies ${entry.index} after ${node.app.index}`);
    }
    node.app = applyToApp(node.app, entry);
    this.checker.applied(node.id, entry, node.app);
    const key = entryKey(entry);
    const proposal = this.proposals.get(key);
    if (proposal !== undefined && proposal.node === node.id) {
      this.proposals.delete(key);
      if (proposal.index === entry.index && proposal.term === entry.term) {
        this.counts.acknowledged++;
        // The first proposal acknowledged after healing must then reach every member.
        if (
          this.healing !== null &&
          this.healing.acknowledged === 0 &&
          entry.index > this.healing.commitAtHeal
        ) {
          this.healing.acknowledged = entry.index;
        }
      }
    }
  }

  private maybeCompact(node: SimNode & { core: Raft }): void {
    const snapshotIndex = node.durable.snapshot?.index ?? 0;
    if (node.app.index - snapshotIndex < this.profile.compactEvery) return;
    const snapshot = node.core.compact(node.app.index, encodeApp(node.app));
    if (snapshot === null) return;
    node.durable = withSnapshot(node.durable, snapshot);
    this.counts.compactions++;
  }

  // ---- network --------------------------------------------------------------------------

  private send(message: Message): void {
    const link = `${message.from}>${message.to}`;
    if (this.blocked.has(link)) {
      this.counts.partitionDropped++;
      return;
    }
    if (this.healing === null && this.prng.chance(this.profile.dropRate)) {
      this.counts.dropped++;
      return;
    }
    this.deliverLater(message, link);
    if (this.healing === null && this.prng.chance(this.profile.duplicateRate)) {
      this.counts.duplicated++;
      this.deliverLater(message, link);
    }
  }

  private deliverLater(message: Message, link: string): void {
    const maxDelay =
      this.healing === null ? this.profile.maxDelayUnits : this.profile.minDelayUnits + 2;
    const at = this.now + this.prng.between(this.profile.minDelayUnits, maxDelay);
    const last = this.lastDelivery.get(link) ?? 0;
    if (at < last) this.counts.reordered++;
    else this.lastDelivery.set(link, at);
    this.queue.push(at, () => this.deliver(message));
  }

  private deliver(message: Message): void {
    const node = this.nodes.get(message.to);
    if (node === undefined || !this.alive(node, node.life)) return;
    // A partition also loses what was already on the wire.
    if (this.blocked.has(`${message.from}>${message.to}`)) {
      this.counts.partitionDropped++;
      return;
    }
    this.trace(`${message.from}>${message.to} ${describe(message)}`);
    node.core.step(message);
    this.pump(node);
  }

  // ---- observation ----------------------------------------------------------------------

  private observe(): void {
    for (const node of this.nodes.values()) {
      if (!this.alive(node, node.life)) continue;
      const status = node.core.status();
      const core = node.core;
      const advanced = this.checker.commitAdvanced(node.id, status.commit, (index) =>
        core.entryAt(index),
      );
      const committedTerm = core.termAt(status.commit);
      if (advanced && status.role === "leader" && committedTerm !== undefined) {
        this.checker.commitIsSafe(
          node.id,
          status.commit,
          committedTerm,
          status.config.voters,
          (id) => this.logsOf(id),
        );
      }
      if (
        advanced &&
        status.role === "leader" &&
        this.healing === null &&
        this.prng.chance(this.profile.crashAfterCommitRate)
      ) {
        this.counts.crashedAfterCommit++;
        this.crashAndRestart(node);
        continue;
      }
      if (status.role === "leader" && node.wasLeaderInTerm !== status.term) {
        node.wasLeaderInTerm = status.term;
        if (this.checker.leader(status.term, node.id)) this.counts.leadersElected++;
        this.checker.newLeader(node.id, status.firstIndex, (index) => core.entryAt(index));
        this.trace(`${node.id} leads term ${status.term}`);
        if (this.healing === null && this.prng.chance(this.profile.isolateNewLeaderRate)) {
          this.isolate(node.id);
        }
      }
    }
    this.retireRemovedNode();
  }

  private logsOf(id: NodeId): { durable: LogView; current: LogView | null } {
    const node = this.nodes.get(id);
    if (node === undefined) {
      return { durable: { lastIndex: 0, lastTerm: 0, holds: () => false }, current: null };
    }
    const durable = node.durable;
    const snapshotIndex = durable.snapshot?.index ?? 0;
    const last = durable.entries[durable.entries.length - 1];
    const durableView: LogView = {
      lastIndex: last?.index ?? snapshotIndex,
      lastTerm: last?.term ?? durable.snapshot?.term ?? 0,
      holds: (index, term) =>
        index <= snapshotIndex || durable.entries[index - snapshotIndex - 1]?.term === term,
    };
    const core = node.core;
    if (core === null || !node.up) return { durable: durableView, current: null };
    const lastIndex = core.status().lastIndex;
    const currentView: LogView = {
      lastIndex,
      lastTerm: core.termAt(lastIndex) ?? 0,
      holds: (index, term) => index < core.status().firstIndex || core.termAt(index) === term,
    };
    return { durable: durableView, current: currentView };
  }

  private retireRemovedNode(): void {
    const removal = this.pendingRemoval;
    if (removal === null || this.checker.maxCommit < removal.index) return;
    this.pendingRemoval = null;
    const node = this.nodes.get(removal.node);
    if (node === undefined || this.checker.committedTerm(removal.index) !== removal.term) return;
    if (node.up) this.crash(node);
    node.retired = true;
    this.trace(`${node.id} retired`);
  }

  // ---- client and nemesis ---------------------------------------------------------------

  private act(): void {
    this.queue.push(this.now + this.profile.actionIntervalUnits, () => this.act());
    const p = this.profile;
    const actions: [number, () => void][] = [
      [10, () => this.propose()],
      [3, () => this.read()],
    ];
    if (this.healing === null) {
      actions.push(
        [p.crashWeight, () => this.crashSomeNode()],
        [p.partitionWeight, () => this.partition()],
        [p.partitionWeight, () => this.healPartition()],
        [p.transferWeight, () => this.transfer()],
        [p.membershipWeight, () => this.changeMembership()],
      );
    }
    const total = actions.reduce((sum, [weight]) => sum + weight, 0);
    let roll = this.prng.int(total);
    for (const [weight, action] of actions) {
      if (roll < weight) {
        action();
        return;
      }
      roll -= weight;
    }
  }

  private upNodes(): (SimNode & { core: Raft })[] {
    return [...this.nodes.values()].filter((node): node is SimNode & { core: Raft } =>
      this.alive(node, node.life),
    );
  }

  /** A client talks to any node; followers forward to the leader they know. */
  private leaderVia(node: SimNode & { core: Raft }): (SimNode & { core: Raft }) | null {
    const status = node.core.status();
    if (status.role === "leader") return node;
    const leader = status.leader === null ? undefined : this.nodes.get(status.leader);
    return leader !== undefined &&
      this.alive(leader, leader.life) &&
      leader.core.status().role === "leader"
      ? leader
      : null;
  }

  private propose(): void {
    const up = this.upNodes();
    if (up.length === 0) return;
    const leader = this.leaderVia(this.prng.pick(up));
    if (leader === null) return;
    const burst = this.prng.between(1, this.profile.maxProposalBurst);
    for (let count = 0; count < burst; count++) {
      const text = `${this.options.seed}-${this.nextRequest++}`;
      const result = leader.core.propose(new TextEncoder().encode(text));
      if (!result.ok) break;
      this.counts.proposed++;
      this.proposals.set(`d:${text}`, { node: leader.id, index: result.index, term: result.term });
      this.trace(`${leader.id} propose ${text} at ${result.index}`);
    }
    this.pump(leader);
  }

  private read(): void {
    const up = this.upNodes();
    if (up.length === 0) return;
    const node = this.prng.pick(up);
    if (this.prng.chance(0.5) && node.lease.holds(node.core.leaseContext(), this.now)) {
      // A lease read is answered at once from the leader's commit index, as the runtime does.
      this.checker.readServed(node.id, node.core.status().commit, this.checker.maxCommit);
      this.counts.leaseReadsServed++;
      return;
    }
    const requestId = this.nextRequest++;
    this.readBounds.set(`${node.id}/${requestId}`, this.checker.maxCommit);
    node.core.readIndex(requestId);
    this.pump(node);
  }

  private readAnswered(node: SimNode, requestId: number, index: number | null): void {
    const key = `${node.id}/${requestId}`;
    const bound = this.readBounds.get(key);
    this.readBounds.delete(key);
    if (bound === undefined || index === null) return;
    this.checker.readServed(node.id, index, bound);
    this.counts.readsServed++;
  }

  private crashSomeNode(): void {
    const up = this.upNodes();
    if (up.length === 0) return;
    // Crashing in the middle of an fsync is the interesting case: prefer it.
    const midFsync = up.filter((node) => node.persisting !== null);
    const node =
      midFsync.length > 0 && this.prng.chance(0.7) ? this.prng.pick(midFsync) : this.prng.pick(up);
    this.crashAndRestart(node);
  }

  private crashAndRestart(node: SimNode): void {
    this.crash(node);
    const restartAfter = this.prng.pick([0, 1, 5, 20, 60]) * unitsPerTick;
    this.queue.push(this.now + restartAfter + 1, () => this.restart(node));
  }

  private restart(node: SimNode): void {
    if (node.up || node.retired) return;
    this.counts.restarted++;
    this.start(node);
  }

  private partition(): void {
    const ids = [...this.nodes.values()].filter((node) => !node.retired).map((node) => node.id);
    this.blocked.clear();
    if (this.prng.chance(0.3)) {
      // Asymmetric: some links lose messages one way only.
      for (const from of ids) {
        for (const to of ids) {
          if (from !== to && this.prng.chance(0.3)) this.blocked.add(`${from}>${to}`);
        }
      }
      this.counts.asymmetricPartitions++;
    } else {
      // Often cut the leader off alone: it keeps taking proposals that nobody else gets.
      const leader = this.upNodes().find((node) => node.core.status().role === "leader");
      const side =
        leader !== undefined && this.prng.chance(0.5)
          ? new Set([leader.id])
          : new Set(ids.filter(() => this.prng.chance(0.5)));
      for (const from of ids) {
        for (const to of ids) {
          if (side.has(from) !== side.has(to)) this.blocked.add(`${from}>${to}`);
        }
      }
    }
    this.counts.partitioned++;
    this.trace(`partition ${[...this.blocked].join(" ")}`);
  }

  private isolate(id: NodeId): void {
    this.blocked.clear();
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.blocked.add(`${id}>${other}`);
      this.blocked.add(`${other}>${id}`);
    }
    this.counts.isolatedNewLeaders++;
    this.trace(`isolate ${id}`);
  }

  private healPartition(): void {
    this.blocked.clear();
    this.trace("heal partition");
  }

  private transfer(): void {
    const leader = this.upNodes().find((node) => node.core.status().role === "leader");
    if (leader === undefined) return;
    const voters = leader.core.status().config.voters.filter((id) => id !== leader.id);
    if (voters.length === 0) return;
    const target = this.prng.pick(voters);
    if (leader.core.transferLeadership(target)) {
      this.counts.transfers++;
      this.trace(`${leader.id} transfer to ${target}`);
      this.pump(leader);
    }
  }

  private changeMembership(): void {
    const leader = this.upNodes().find((node) => node.core.status().role === "leader");
    if (leader === undefined || this.pendingRemoval !== null) return;
    const config = leader.core.status().config;
    const stranded = [...this.nodes.values()].find(
      (node) =>
        !node.retired && !config.voters.includes(node.id) && !config.learners.includes(node.id),
    );
    // Like an operator, promote only a learner that has caught up.
    const commit = leader.core.status().commit;
    const learner = leader.core
      .replicationStatus()
      .find((peer) => config.learners.includes(peer.id) && peer.match >= commit)?.id;
    let result: ReturnType<Raft["proposeConfChange"]>;
    let removed: NodeId | null = null;
    if (learner !== undefined) {
      result = leader.core.proposeConfChange({ kind: "promote", node: learner });
    } else if (config.learners.length > 0) {
      return;
    } else if (config.voters.length > 3 && this.prng.chance(0.7)) {
      removed = this.prng.pick(config.voters);
      result = leader.core.proposeConfChange({ kind: "remove", node: removed });
    } else {
      const running = [...this.nodes.values()].filter((node) => !node.retired).length;
      if (stranded === undefined && running >= this.options.nodeCount + 2) return;
      const joiner = stranded ?? this.addNode(`n${this.nextNodeNumber++}`, joiningState);
      result = leader.core.proposeConfChange({ kind: "add-learner", node: joiner.id });
    }
    if (!result.ok) return;
    this.counts.membershipChanges++;
    if (removed !== null)
      this.pendingRemoval = { node: removed, index: result.index, term: result.term };
    this.trace(`${leader.id} config change at ${result.index}`);
    this.pump(leader);
  }

  // ---- liveness -------------------------------------------------------------------------

  private startHeal(): void {
    this.counts.heals++;
    this.blocked.clear();
    for (const node of this.nodes.values()) {
      if (!node.up && !node.retired) this.restart(node);
    }
    this.healing = {
      deadline: this.now + livenessBoundTicks * unitsPerTick,
      commitAtHeal: this.checker.maxCommit,
      acknowledged: 0,
    };
    this.trace("heal: network perfect, every node up");
  }

  /** Healed: a leader must be elected and a fresh proposal applied on every member. */
  private checkLiveness(): void {
    const healing = this.healing;
    if (healing === null) return;
    const leader = this.upNodes().find((node) => node.core.status().role === "leader");
    if (leader !== undefined && healing.acknowledged > 0) {
      const config = leader.core.status().config;
      const everyMember = [...config.voters, ...config.learners].every((id) => {
        const node = this.nodes.get(id);
        return node?.up === true && node.app.index >= healing.acknowledged;
      });
      if (everyMember) {
        this.healing = null;
        return;
      }
    }
    if (this.now > healing.deadline) {
      throw new LivenessViolation(
        `liveness: ${livenessBoundTicks} ticks after healing, no new proposal was applied on every member`,
      );
    }
  }
}

function describe(message: Message): string {
  switch (message.type) {
    case "append":
      return `append t${message.term} prev=${message.prevIndex}/${message.prevTerm} n=${message.entries.length} commit=${message.commit}`;
    case "append-response":
      return `append-response t${message.term} ${message.reject ? `reject ${message.index} hint=${message.hintIndex}/${message.hintTerm}` : `ok ${message.index}`}`;
    case "vote":
    case "prevote":
      return `${message.type} t${message.term} last=${message.lastIndex}/${message.lastTerm}${message.transfer ? " transfer" : ""}`;
    case "vote-response":
    case "prevote-response":
      return `${message.type} t${message.term} ${message.granted ? "granted" : "rejected"}`;
    case "heartbeat":
      return `heartbeat t${message.term} commit=${message.commit} ctx=${message.context}`;
    case "snapshot":
      return `snapshot t${message.term} at ${message.snapshot.index}`;
    default:
      return `${message.type} t${message.term}`;
  }
}
