import { assert } from "../core/assert.js";
import type { PersistedState, Snapshot } from "../core/types.js";
import type { PersistBatch } from "./storage.js";

/** The persisted state after writing `batch`: the reference semantics every storage follows. */
export function withBatch(state: PersistedState, batch: PersistBatch): PersistedState {
  let snapshot = state.snapshot;
  let entries = state.entries;
  if (batch.snapshot !== null) {
    snapshot = batch.snapshot;
    entries = [];
  }
  const first = batch.entries[0];
  if (first !== undefined) {
    const kept = entries.filter((entry) => entry.index < first.index);
    const base = snapshot?.index ?? 0;
    assert(
      base + kept.length === first.index - 1,
      `persisting entry ${first.index} would leave a gap`,
    );
    entries = [...kept, ...batch.entries];
  }
  return { hardState: batch.hardState ?? state.hardState, snapshot, entries };
}

/** The persisted state after the application's snapshot replaced the log it covers. */
export function withSnapshot(state: PersistedState, snapshot: Snapshot): PersistedState {
  if (state.snapshot !== null && state.snapshot.index >= snapshot.index) return state;
  return {
    ...state,
    snapshot,
    entries: state.entries.filter((entry) => entry.index > snapshot.index),
  };
}
