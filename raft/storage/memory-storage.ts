import type { PersistedState, Snapshot } from "../core/types.js";
import { withBatch, withSnapshot } from "./persisted-log.js";
import type { PersistBatch, RaftStorage } from "./storage.js";

/** Storage that lives as long as the process: for tests, simulations and demos. */
export class MemoryStorage implements RaftStorage {
  constructor(private state: PersistedState) {}

  get persisted(): PersistedState {
    return this.state;
  }

  async load(): Promise<PersistedState> {
    return this.state;
  }

  async persist(batch: PersistBatch): Promise<void> {
    this.state = withBatch(this.state, batch);
  }

  async saveSnapshot(): Promise<void> {}

  async compact(snapshot: Snapshot): Promise<void> {
    this.state = withSnapshot(this.state, snapshot);
  }

  async close(): Promise<void> {}
}
