import type { Entry, HardState, PersistedState, Snapshot } from "../core/types.js";

/** What one ready batch asks to be made durable, in one synced write. */
export interface PersistBatch {
  readonly hardState: HardState | null;
  readonly snapshot: Snapshot | null;
  /** Replace the stored log from entries[0].index on. */
  readonly entries: readonly Entry[];
  /** False when the batch holds only a new commit index, which may be written without a sync. */
  readonly mustSync: boolean;
}

/**
 * Durable Raft state. Errors are fatal: a node whose storage fails must stop, never
 * continue on state it could not persist.
 */
export interface RaftStorage {
  /** Everything persisted so far; read once when the node starts. */
  load(): Promise<PersistedState>;
  /** Resolves once the batch is written, and synced to stable storage when it must be. */
  persist(batch: PersistBatch): Promise<void>;
  /**
   * Write the data of a snapshot the application took, durably but not yet in force. It
   * runs beside persist() and touches nothing persist() reads or writes.
   */
  saveSnapshot(snapshot: Snapshot): Promise<void>;
  /** Put a saved snapshot in force and drop the log entries it covers. */
  compact(snapshot: Snapshot): Promise<void>;
  close(): Promise<void>;
}
