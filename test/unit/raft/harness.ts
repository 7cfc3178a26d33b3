import { bootstrapState, joiningState, Raft } from "../../../raft/core/raft.js";
import type {
  Entry,
  HardState,
  Message,
  MessageType,
  NodeId,
  PersistedState,
  PlantedBug,
  ProposeResult,
  RaftOptions,
  RaftStatus,
  ReadState,
  Ready,
  Snapshot,
} from "../../../raft/core/types.js";
import { Prng } from "../../sim/prng.js";

export const electionTicks = 10;
/** A bound on every settle(): a network that is still busy after this many rounds is a bug. */
const maxRounds = 10_000;

export interface NetworkOptions {
  readonly preVote?: boolean;
  readonly checkQuorum?: boolean;
  readonly seed?: number;
  /** 64 unless a scenario needs entries to travel one at a time (Figure 8). */
  readonly maxEntriesPerAppend?: number;
  /** 256 unless a test is about back-pressure. */
  readonly maxUncommittedEntries?: number;
  /** Only to show that a test catches the bug it is about. */
  readonly plantedBug?: PlantedBug;
}

export function raftOptions(id: NodeId, random: Prng, options: NetworkOptions = {}): RaftOptions {
  return {
    id,
    electionTicks,
    heartbeatTicks: 1,
    randomInt: (bound) => random.int(bound),
    maxEntriesPerAppend: options.maxEntriesPerAppend ?? 64,
    maxAppendBytes: 1024 * 1024,
    maxInflightAppends: 16,
    maxUncommittedEntries: options.maxUncommittedEntries ?? 256,
    preVote: options.preVote ?? false,
    checkQuorum: options.checkQuorum ?? false,
    ...(options.plantedBug === undefined ? {} : { plantedBug: options.plantedBug }),
  };
}

/** A message handed to the network, whether it arrived or not. */
export interface Sent {
  readonly message: Message;
  /** Came out of ready.messagesAfterPersist rather than ready.messages. */
  readonly afterPersist: boolean;
  readonly dropped: boolean;
}

/** What survives a crash. */
interface Storage {
  hardState: HardState;
  snapshot: Snapshot | null;
  /** Entries following the snapshot (or index 1). */
  entries: Entry[];
}

/** The application: the texts of the applied normal entries. */
interface StateMachine {
  index: number;
  texts: string[];
}

interface SimulatedNode {
  readonly options: RaftOptions;
  raft: Raft | null;
  readonly storage: Storage;
  machine: StateMachine;
  /** Every entry this node ever applied, across restarts. */
  readonly applied: Entry[];
  readonly readStates: ReadState[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A deterministic in-memory cluster, after etcd's raft_test.go `network`: nodes "n1".."nN"
 * with durable storage that survives crash(), links that can be cut, and synchronous
 * delivery until quiet. It checks state machine safety (one entry per applied index, applied
 * in order) and election safety (one leader per term) on every batch, and throws when broken.
 */
export class Network {
  /** Every message sent, in order. */
  readonly trace: Sent[] = [];
  private readonly nodes = new Map<NodeId, SimulatedNode>();
  private readonly random: Prng;
  private queue: Message[] = [];
  private readonly cutLinks = new Set<string>();
  private readonly isolated = new Set<NodeId>();
  private dropFilter: ((message: Message) => boolean) | null = null;
  /** index -> "term/payload" of the entry first applied there, by any node. */
  private readonly appliedAt = new Map<number, string>();
  private readonly leaderOfTerm = new Map<number, NodeId>();

  constructor(
    voterCount: number,
    private readonly options: NetworkOptions = {},
  ) {
    this.random = new Prng(options.seed ?? 1);
    const voters = Array.from({ length: voterCount }, (_, position) => `n${position + 1}`);
    for (const id of voters) this.createNode(id, bootstrapState(voters));
  }

  /** A node that will join through a configuration change, starting from joiningState. */
  addNode(id: NodeId): void {
    if (this.nodes.has(id)) throw new Error(`${id} already exists`);
    this.createNode(id, joiningState);
  }

  private createNode(id: NodeId, persisted: PersistedState): void {
    const node: SimulatedNode = {
      options: raftOptions(id, this.random.fork(), this.options),
      raft: null,
      storage: {
        hardState: persisted.hardState,
        snapshot: persisted.snapshot,
        entries: [...persisted.entries],
      },
      machine: { index: 0, texts: [] },
      applied: [],
      readStates: [],
    };
    this.nodes.set(id, node);
    this.restart(id);
  }

  // ---- access ---------------------------------------------------------------------------

  ids(): NodeId[] {
    return [...this.nodes.keys()];
  }

  raft(id: NodeId): Raft {
    const raft = this.node(id).raft;
    if (raft === null) throw new Error(`${id} is crashed`);
    return raft;
  }

  status(id: NodeId): RaftStatus {
    return this.raft(id).status();
  }

  /** Live nodes that believe they lead. */
  leaders(): NodeId[] {
    return this.ids().filter((id) => this.node(id).raft?.status().role === "leader");
  }

  /** The log this node holds in memory, from its first index. */
  entries(id: NodeId): Entry[] {
    const { firstIndex, lastIndex } = this.status(id);
    const entries: Entry[] = [];
    for (let index = firstIndex; index <= lastIndex; index++) {
      const entry = this.raft(id).entryAt(index);
      if (entry === undefined) throw new Error(`${id} has no entry ${index}`);
      entries.push(entry);
    }
    return entries;
  }

  /** "index:term" of each entry in memory: logs compare equal when they match. */
  logTerms(id: NodeId): string[] {
    return this.entries(id).map((entry) => `${entry.index}:${entry.term}`);
  }

  /** The state machine's contents: texts of applied normal entries, in order. */
  texts(id: NodeId): string[] {
    return [...this.node(id).machine.texts];
  }

  applied(id: NodeId): readonly Entry[] {
    return this.node(id).applied;
  }

  readStates(id: NodeId): readonly ReadState[] {
    return this.node(id).readStates;
  }

  storedSnapshot(id: NodeId): Snapshot | null {
    return this.node(id).storage.snapshot;
  }

  storedEntries(id: NodeId): readonly Entry[] {
    return this.node(id).storage.entries;
  }

  // ---- faults ---------------------------------------------------------------------------

  /** Drop every message to and from `id`. */
  isolate(id: NodeId): void {
    this.isolated.add(id);
  }

  /** Drop messages between `a` and `b`, both ways. */
  cut(a: NodeId, b: NodeId): void {
    this.cutOneWay(a, b);
    this.cutOneWay(b, a);
  }

  cutOneWay(from: NodeId, to: NodeId): void {
    this.cutLinks.add(`${from}>${to}`);
  }

  /** Drop the messages for which `predicate` holds, until heal(); it sees messages to live nodes only. */
  dropIf(predicate: (message: Message) => boolean): void {
    this.dropFilter = predicate;
  }

  heal(): void {
    this.isolated.clear();
    this.cutLinks.clear();
    this.dropFilter = null;
  }

  /** Lose everything not in storage, including messages not yet sent. */
  crash(id: NodeId): void {
    this.node(id).raft = null;
  }

  /**
   * Crash `id` in the middle of its next batch: `messages` go out (the Ready contract lets
   * them leave while persisting), then the node dies before anything is persisted.
   */
  crashWhilePersisting(id: NodeId): Ready {
    const ready = this.raft(id).ready();
    for (const message of ready.messages) this.send(message, false);
    this.crash(id);
    return ready;
  }

  /** Start again from storage; the state machine restarts from the stored snapshot. */
  restart(id: NodeId): void {
    const node = this.node(id);
    const { hardState, snapshot, entries } = node.storage;
    node.raft = new Raft(node.options, { hardState, snapshot, entries: [...entries] });
    node.machine = snapshot === null ? { index: 0, texts: [] } : machineOf(snapshot);
    node.readStates.length = 0;
  }

  // ---- inputs ---------------------------------------------------------------------------

  tick(id: NodeId, count = 1): void {
    for (let tick = 0; tick < count; tick++) this.raft(id).tick();
  }

  /** Tick every live node `count` times, settling after each tick. */
  tickAll(count = 1): void {
    for (let tick = 0; tick < count; tick++) {
      for (const node of this.nodes.values()) node.raft?.tick();
      this.settle();
    }
  }

  /** Tick every live node until exactly one leader remains; returns it. */
  tickUntilLeader(maxTicks = 20 * electionTicks): NodeId {
    for (let tick = 0; tick < maxTicks; tick++) {
      this.tickAll();
      const leaders = this.leaders();
      if (leaders.length === 1 && leaders[0] !== undefined) return leaders[0];
    }
    throw new Error(`no single leader after ${maxTicks} ticks`);
  }

  /**
   * Tick `id` alone until it starts an election; its vote requests stay in its ready batch
   * until the next settle(), so a test can start several elections at once.
   */
  campaign(id: NodeId): void {
    if (this.raft(id).hasReady()) throw new Error(`settle ${id} before it campaigns`);
    for (let tick = 0; tick < 2 * electionTicks; tick++) {
      this.raft(id).tick();
      if (this.raft(id).hasReady()) return;
    }
    throw new Error(`${id} did not campaign within ${2 * electionTicks} ticks`);
  }

  /** Make `id` leader by letting it time out (only it is ticked), retrying a few elections. */
  electLeader(id: NodeId): void {
    this.settle();
    for (let attempt = 0; attempt < 5; attempt++) {
      this.campaign(id);
      this.settle();
      if (this.status(id).role === "leader") return;
    }
    throw new Error(`${id} did not become leader`);
  }

  propose(id: NodeId, text: string): ProposeResult {
    return this.raft(id).propose(encoder.encode(text));
  }

  /** Propose each text on `id` (which must accept them all), then settle. */
  proposeAll(id: NodeId, texts: readonly string[]): void {
    for (const text of texts) {
      const result = this.propose(id, text);
      if (!result.ok) throw new Error(`${id} refused "${text}": ${result.reason}`);
    }
    this.settle();
  }

  /** Step a hand-made message straight into its recipient. */
  inject(message: Message): void {
    this.raft(message.to).step(message);
  }

  /** Snapshot `id`'s state machine at its applied index and compact the log there. */
  compact(id: NodeId): Snapshot {
    const node = this.node(id);
    const data = encoder.encode(JSON.stringify(node.machine.texts));
    const snapshot = this.raft(id).compact(node.machine.index, data);
    if (snapshot === null) throw new Error(`${id}: nothing to compact`);
    node.storage.snapshot = snapshot;
    node.storage.entries = node.storage.entries.filter((entry) => entry.index > snapshot.index);
    return snapshot;
  }

  // ---- delivery -------------------------------------------------------------------------

  /** Handle ready batches and deliver messages until no node has anything left to do. */
  settle(): void {
    for (let round = 0; round < maxRounds; round++) {
      let busy = false;
      for (const id of this.nodes.keys()) {
        if (this.process(id) !== null) busy = true;
      }
      if (!busy && this.queue.length === 0) return;
      const batch = this.queue;
      this.queue = [];
      for (const message of batch) this.nodes.get(message.to)?.raft?.step(message);
    }
    throw new Error(`network still busy after ${maxRounds} rounds`);
  }

  /** Run one ready batch of `id` in the order the Ready type prescribes; null when idle. */
  process(id: NodeId): Ready | null {
    const node = this.node(id);
    const raft = node.raft;
    if (raft === null || !raft.hasReady()) return null;
    const ready = raft.ready();
    for (const message of ready.messages) this.send(message, false);
    this.persist(node.storage, ready);
    for (const message of ready.messagesAfterPersist) this.send(message, true);
    if (ready.snapshot !== null) this.installSnapshot(node, ready.snapshot);
    for (const entry of ready.committedEntries) this.apply(node, entry);
    node.readStates.push(...ready.readStates);
    raft.advance(ready);
    this.checkElectionSafety(raft.status());
    return ready;
  }

  private persist(storage: Storage, ready: Ready): void {
    if (ready.snapshot !== null) {
      storage.snapshot = ready.snapshot;
      storage.entries = [];
    }
    const first = ready.entries[0];
    if (first !== undefined) {
      storage.entries = [
        ...storage.entries.filter((entry) => entry.index < first.index),
        ...ready.entries,
      ];
    }
    if (ready.hardState !== null) storage.hardState = ready.hardState;
  }

  private send(message: Message, afterPersist: boolean): void {
    const dropped = !this.linkUp(message);
    this.trace.push({ message, afterPersist, dropped });
    if (!dropped) this.queue.push(message);
  }

  private linkUp(message: Message): boolean {
    return (
      this.nodes.get(message.to)?.raft != null &&
      !this.isolated.has(message.from) &&
      !this.isolated.has(message.to) &&
      !this.cutLinks.has(`${message.from}>${message.to}`) &&
      !(this.dropFilter?.(message) ?? false)
    );
  }

  private installSnapshot(node: SimulatedNode, snapshot: Snapshot): void {
    const known = this.appliedAt.get(snapshot.index);
    if (known !== undefined && !known.startsWith(`${snapshot.term}/`)) {
      throw new Error(
        `state machine safety: snapshot at ${snapshot.index} has term ${snapshot.term}`,
      );
    }
    node.machine = machineOf(snapshot);
  }

  private apply(node: SimulatedNode, entry: Entry): void {
    const machine = node.machine;
    if (entry.index !== machine.index + 1) {
      throw new Error(`applied ${entry.index} after ${machine.index}`);
    }
    this.checkStateMachineSafety(entry);
    machine.index = entry.index;
    if (entry.type === "normal") machine.texts.push(decoder.decode(entry.data));
    node.applied.push(entry);
  }

  /** State machine safety: every node applies the same entry at an index. */
  private checkStateMachineSafety(entry: Entry): void {
    const key = `${entry.term}/${payloadOf(entry)}`;
    const known = this.appliedAt.get(entry.index);
    if (known === undefined) this.appliedAt.set(entry.index, key);
    else if (known !== key) {
      throw new Error(`state machine safety: index ${entry.index} applied as ${known} and ${key}`);
    }
  }

  private checkElectionSafety(status: RaftStatus): void {
    if (status.role !== "leader") return;
    const known = this.leaderOfTerm.get(status.term);
    if (known === undefined) this.leaderOfTerm.set(status.term, status.id);
    else if (known !== status.id) {
      throw new Error(`election safety: ${known} and ${status.id} both lead term ${status.term}`);
    }
  }

  private node(id: NodeId): SimulatedNode {
    const node = this.nodes.get(id);
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }
}

function payloadOf(entry: Entry): string {
  switch (entry.type) {
    case "normal":
      return `normal:${decoder.decode(entry.data)}`;
    case "config":
      return `config:${JSON.stringify(entry.change)}`;
    case "noop":
      return "noop";
  }
}

function machineOf(snapshot: Snapshot): StateMachine {
  const texts = JSON.parse(decoder.decode(snapshot.data)) as string[];
  return { index: snapshot.index, texts };
}

/** The texts "prefix-1".."prefix-count". */
export function texts(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, position) => `${prefix}-${position + 1}`);
}

/** The message of type T (an intersection, since "vote" and "prevote" share one shape). */
export type MessageOf<T extends MessageType> = Message & { readonly type: T };

/** The messages of one type in the trace (dropped ones too), in the order they were sent. */
export function sentOfType<T extends MessageType>(network: Network, type: T): MessageOf<T>[] {
  return network.trace
    .map((sent) => sent.message)
    .filter((message): message is MessageOf<T> => message.type === type);
}
