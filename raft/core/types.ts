/** Node ids are opaque strings; the runtime maps them to addresses. */
export type NodeId = string;

/** A change to the cluster configuration, one server at a time. */
export type ConfChange =
  | { readonly kind: "bootstrap"; readonly voters: readonly NodeId[] }
  | { readonly kind: "add-learner"; readonly node: NodeId }
  | { readonly kind: "promote"; readonly node: NodeId }
  | { readonly kind: "remove"; readonly node: NodeId };

export type EntryPayload =
  | { readonly type: "normal"; readonly data: Uint8Array }
  | { readonly type: "config"; readonly change: ConfChange }
  /** Appended by every new leader so that it commits an entry of its own term. */
  | { readonly type: "noop" };

export type Entry = EntryPayload & { readonly term: number; readonly index: number };

/** Must be persisted before any message that depends on it is sent. */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId | null;
  readonly commit: number;
}

export interface ConfigState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export interface Snapshot {
  readonly index: number;
  readonly term: number;
  /** The configuration in force at `index`. */
  readonly config: ConfigState;
  readonly data: Uint8Array;
}

/** What a node recovered from stable storage at start. */
export interface PersistedState {
  readonly hardState: HardState;
  readonly snapshot: Snapshot | null;
  /** Contiguous entries following the snapshot (or index 1). */
  readonly entries: readonly Entry[];
}

interface Envelope {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
}

export type Message =
  | (Envelope & {
      readonly type: "vote" | "prevote";
      readonly lastIndex: number;
      readonly lastTerm: number;
      /** Set when a leadership transfer asked for this election: voters skip the lease check. */
      readonly transfer: boolean;
    })
  | (Envelope & { readonly type: "vote-response" | "prevote-response"; readonly granted: boolean })
  | (Envelope & {
      readonly type: "append";
      readonly prevIndex: number;
      readonly prevTerm: number;
      readonly entries: readonly Entry[];
      readonly commit: number;
    })
  | (Envelope & {
      readonly type: "append-response";
      /** On success the follower's match index; on rejection the rejected prevIndex. */
      readonly index: number;
      readonly reject: boolean;
      /** On rejection: the largest index at or below `index` whose term is at most `hintTerm`. */
      readonly hintIndex: number;
      readonly hintTerm: number;
    })
  | (Envelope & { readonly type: "heartbeat"; readonly commit: number; readonly context: number })
  | (Envelope & { readonly type: "heartbeat-response"; readonly context: number })
  | (Envelope & { readonly type: "snapshot"; readonly snapshot: Snapshot })
  | (Envelope & { readonly type: "timeout-now" })
  | (Envelope & { readonly type: "read-index"; readonly requestId: number })
  | (Envelope & {
      readonly type: "read-index-response";
      readonly requestId: number;
      /** -1 when the receiver is not leader or could not serve the read. */
      readonly index: number;
    });

export type MessageType = Message["type"];

export type Role = "follower" | "pre-candidate" | "candidate" | "leader";

/**
 * A read that became safe: serve it once the state machine has applied `index`.
 * `index` is null when this node could not serve it (no leader, or leadership lost).
 */
export interface ReadState {
  readonly requestId: number;
  readonly index: number | null;
}

/**
 * One batch of work for the runtime, handled in this order:
 * 1. send `messages` (they depend on nothing unpersisted, so they may go out while persisting);
 * 2. persist `snapshot`, then `entries` (replacing the stored log from entries[0].index on),
 *    then `hardState`, in one synced write;
 * 3. send `messagesAfterPersist`;
 * 4. apply `snapshot` then `committedEntries` to the state machine, serve `readStates`;
 * 5. call `advance(ready)`.
 */
export interface Ready {
  readonly hardState: HardState | null;
  readonly snapshot: Snapshot | null;
  readonly entries: readonly Entry[];
  readonly messages: readonly Message[];
  readonly messagesAfterPersist: readonly Message[];
  readonly committedEntries: readonly Entry[];
  readonly readStates: readonly ReadState[];
  /**
   * Whether the write must be synced before messagesAfterPersist go out: new entries, a
   * snapshot, or a new term or vote. A commit index alone may be written without a sync;
   * after a crash it is learned again from the leader.
   */
  readonly mustSync: boolean;
}

export type ProposeResult =
  | { readonly ok: true; readonly index: number; readonly term: number }
  | {
      readonly ok: false;
      readonly reason:
        | "not-leader"
        | "transferring"
        | "overloaded"
        | "config-pending"
        | "invalid-change";
      readonly leader: NodeId | null;
    };

/**
 * Bugs the simulator must catch. Production code never sets one: they exist so that
 * the simulator proves it has teeth.
 */
export type PlantedBug =
  | "commit-previous-term"
  | "vote-without-log-check"
  | "vote-before-persist"
  | "apply-before-commit"
  | "read-before-term-commit";

export interface RaftOptions {
  readonly id: NodeId;
  /** Followers wait between electionTicks and 2 * electionTicks - 1 before campaigning. */
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** Returns an integer in [0, bound). The only source of randomness. */
  readonly randomInt: (bound: number) => number;
  readonly maxEntriesPerAppend: number;
  /** An append carries entries up to about this many payload bytes (always at least one). */
  readonly maxAppendBytes: number;
  readonly maxInflightAppends: number;
  /** A leader refuses proposals while this many entries wait to commit (back-pressure). */
  readonly maxUncommittedEntries: number;
  readonly preVote: boolean;
  readonly checkQuorum: boolean;
  readonly plantedBug?: PlantedBug;
}

export interface RaftStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly term: number;
  readonly vote: NodeId | null;
  readonly leader: NodeId | null;
  readonly commit: number;
  readonly applied: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly config: ConfigState;
  readonly transferringTo: NodeId | null;
}

export interface PeerReplication {
  readonly id: NodeId;
  readonly match: number;
  readonly next: number;
  readonly state: "probe" | "replicate" | "snapshot";
  readonly ticksSinceHeard: number;
}
