import { mkdir, open, readdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { Level } from "level";
import {
  decodeEntry,
  decodeLogMeta,
  decodeSnapshot,
  encodeEntry,
  encodeLogMeta,
  encodeSnapshotParts,
} from "../codec/codec.js";
import { assert } from "../core/assert.js";
import type { Entry, HardState, PersistedState, Snapshot } from "../core/types.js";
import type { PersistBatch, RaftStorage } from "./storage.js";

/** The stored log is damaged before its last synced write: the node must not start on it. */
export class StorageCorruptionError extends Error {
  override readonly name = "StorageCorruptionError";
}

type Operation = { type: "put"; key: string; value: Uint8Array } | { type: "del"; key: string };

const metaKey = "meta";
const snapshotKey = "snapshot";
const entryPrefix = "entry:";

function entryKey(index: number): string {
  return `${entryPrefix}${index.toString(16).padStart(16, "0")}`;
}

function snapshotFileName(snapshot: Snapshot): string {
  return `snapshot-${snapshot.index.toString(16).padStart(16, "0")}-${snapshot.term}.snap`;
}

/** The record that puts a saved snapshot in force. */
function snapshotRecord(snapshot: Snapshot): Operation {
  return {
    type: "put",
    key: snapshotKey,
    value: seal(new TextEncoder().encode(snapshotFileName(snapshot))),
  };
}

/** A record as stored: a CRC-32 of the payload, then the payload. */
function seal(payload: Uint8Array): Uint8Array {
  const record = new Uint8Array(4 + payload.length);
  new DataView(record.buffer).setUint32(0, crc32(payload));
  record.set(payload, 4);
  return record;
}

/** The payload of a sealed record, or null when its checksum does not match. */
function unseal(record: Uint8Array): Uint8Array | null {
  if (record.length < 4) return null;
  const payload = record.subarray(4);
  const stored = new DataView(record.buffer, record.byteOffset, 4).getUint32(0);
  return stored === crc32(payload) ? payload : null;
}

/**
 * The Raft log, hard state and snapshot metadata in LevelDB, every record checksummed;
 * snapshot data in files written atomically. One writer: the runtime persists one batch at a time.
 *
 * Every write also records where the log ends (LogMeta). On load, entries past that end
 * are a tail whose write never completed and are dropped; a damaged record before it is
 * corruption, and load() refuses to go on.
 */
export class LevelStorage implements RaftStorage {
  private hardState: HardState = { term: 0, vote: null, commit: 0 };
  private snapshotIndex = 0;
  private lastIndex = 0;
  private lastTerm = 0;
  /** Clearing what compactions covered; a crash before it ends leaves work for load(). */
  private tidying: Promise<void> = Promise.resolve();

  private constructor(
    private readonly db: Level<string, Uint8Array>,
    private readonly snapshotDir: string,
  ) {}

  /** Open (or create, with `initial`) the storage under `dataDir`. */
  static async open(dataDir: string, initial: PersistedState): Promise<LevelStorage> {
    const snapshotDir = join(dataDir, "snapshots");
    await mkdir(snapshotDir, { recursive: true });
    const db = new Level<string, Uint8Array>(join(dataDir, "raft-log"), { valueEncoding: "view" });
    await db.open();
    const storage = new LevelStorage(db, snapshotDir);
    if ((await db.get(metaKey)) === undefined) await storage.initialize(initial);
    return storage;
  }

  private async initialize(initial: PersistedState): Promise<void> {
    assert(initial.snapshot === null, "a new log starts without a snapshot");
    await this.persist({
      hardState: initial.hardState,
      snapshot: null,
      entries: initial.entries,
      mustSync: true,
    });
  }

  async load(): Promise<PersistedState> {
    const metaRecord = await this.db.get(metaKey);
    const metaPayload = metaRecord === undefined ? null : unseal(metaRecord);
    if (metaPayload === null)
      throw new StorageCorruptionError("the log's metadata record is missing or damaged");
    const meta = decodeLogMeta(metaPayload);
    const snapshot = await this.loadSnapshot();
    const base = snapshot?.index ?? 0;
    const entries: Entry[] = [];
    const tail: string[] = [];
    let covered = false;
    for await (const [key, record] of this.db.iterator({
      gt: entryPrefix,
      lt: `${entryPrefix}~`,
    })) {
      const index = Number.parseInt(key.slice(entryPrefix.length), 16);
      if (index <= base) {
        covered = true;
        continue;
      }
      if (index > meta.lastIndex) {
        tail.push(key);
        continue;
      }
      const payload = unseal(record);
      if (payload === null) {
        throw new StorageCorruptionError(
          `log record ${index} failed its checksum; it lies before the last synced write (index ${meta.lastIndex}), so the log is corrupt. Restore this node's data directory or wipe it and let the node rejoin.`,
        );
      }
      const entry = decodeEntry(payload);
      if (entry.index !== index || index !== base + entries.length + 1) {
        throw new StorageCorruptionError(
          `log record ${index} is out of place (holds entry ${entry.index})`,
        );
      }
      entries.push(entry);
    }
    const last = entries[entries.length - 1];
    if ((last?.index ?? base) !== Math.max(meta.lastIndex, base)) {
      throw new StorageCorruptionError(
        `log entries end at ${last?.index ?? base}, but the last synced write ended at ${meta.lastIndex}`,
      );
    }
    if (tail.length > 0)
      await this.write(
        tail.map((key) => ({ type: "del" as const, key })),
        true,
      );
    // A crash between a snapshot and clearing the entries it covers leaves them behind.
    if (covered) await this.clearEntries(1, base);
    // Saves a crash cut short or that never came into force.
    const kept = snapshot === null ? null : snapshotFileName(snapshot);
    for (const file of await readdir(this.snapshotDir))
      if (file !== kept) await rm(join(this.snapshotDir, file), { force: true });
    this.hardState = meta.hardState;
    this.snapshotIndex = base;
    this.lastIndex = last?.index ?? base;
    this.lastTerm = last?.term ?? snapshot?.term ?? 0;
    return { hardState: meta.hardState, snapshot, entries };
  }

  private async loadSnapshot(): Promise<Snapshot | null> {
    const record = await this.db.get(snapshotKey);
    if (record === undefined) return null;
    const name = unseal(record);
    if (name === null) throw new StorageCorruptionError("the snapshot record failed its checksum");
    const file = new TextDecoder().decode(name);
    const payload = unseal(await readFile(join(this.snapshotDir, file)));
    if (payload === null)
      throw new StorageCorruptionError(`snapshot file ${file} failed its checksum`);
    return decodeSnapshot(payload);
  }

  async persist(batch: PersistBatch): Promise<void> {
    const operations: Operation[] = [];
    let firstKept = this.snapshotIndex + 1;
    let covered: { from: number; to: number } | null = null;
    if (batch.snapshot !== null) {
      await this.saveSnapshot(batch.snapshot);
      operations.push(snapshotRecord(batch.snapshot));
      // Entries the snapshot covers are ignored from now on and cleared after the write.
      covered = { from: firstKept, to: Math.min(this.lastIndex, batch.snapshot.index) };
      for (let index = batch.snapshot.index + 1; index <= this.lastIndex; index++)
        operations.push({ type: "del", key: entryKey(index) });
      this.snapshotIndex = batch.snapshot.index;
      this.lastIndex = batch.snapshot.index;
      this.lastTerm = batch.snapshot.term;
      firstKept = this.snapshotIndex + 1;
    }
    const first = batch.entries[0];
    const last = batch.entries[batch.entries.length - 1];
    if (first !== undefined && last !== undefined) {
      assert(
        first.index >= firstKept && first.index <= this.lastIndex + 1,
        `persisting entry ${first.index} would leave a gap`,
      );
      for (let index = last.index + 1; index <= this.lastIndex; index++)
        operations.push({ type: "del", key: entryKey(index) });
      for (const entry of batch.entries)
        operations.push({
          type: "put",
          key: entryKey(entry.index),
          value: seal(encodeEntry(entry)),
        });
      this.lastIndex = last.index;
      this.lastTerm = last.term;
    }
    this.hardState = batch.hardState ?? this.hardState;
    const meta = { hardState: this.hardState, lastIndex: this.lastIndex, lastTerm: this.lastTerm };
    operations.push({ type: "put", key: metaKey, value: seal(encodeLogMeta(meta)) });
    await this.write(operations, batch.mustSync);
    if (covered !== null) await this.clearEntries(covered.from, covered.to);
    if (batch.snapshot !== null) await this.removeSnapshotsBefore(batch.snapshot.index);
  }

  /**
   * One atomic write. A chained batch: level's array form checks and copies every operation
   * on the main thread, several times the cost per batch (at 30 entries, about 5x).
   */
  private async write(operations: readonly Operation[], sync: boolean): Promise<void> {
    const batch = this.db.batch();
    for (const operation of operations) {
      if (operation.type === "put") batch.put(operation.key, operation.value);
      else batch.del(operation.key);
    }
    await batch.write({ sync });
  }

  /** Drop entries [from, to], which a synced snapshot record already covers. */
  private async clearEntries(from: number, to: number): Promise<void> {
    if (from <= to) await this.db.clear({ gte: entryKey(from), lte: entryKey(to) });
  }

  async saveSnapshot(snapshot: Snapshot): Promise<void> {
    const path = join(this.snapshotDir, snapshotFileName(snapshot));
    const file = await open(`${path}.tmp`, "w");
    try {
      // Sealed as seal() does, without copying the data into one buffer.
      const parts = encodeSnapshotParts(snapshot);
      const sum = new Uint8Array(4);
      new DataView(sum.buffer).setUint32(
        0,
        parts.reduce((crc, part) => crc32(part, crc), 0),
      );
      const { bytesWritten } = await file.writev([sum, ...parts]);
      const length = parts.reduce((total, part) => total + part.length, sum.length);
      if (bytesWritten !== length)
        throw new Error(`snapshot file: wrote ${bytesWritten} of ${length} bytes`);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(`${path}.tmp`, path);
    const dir = await open(this.snapshotDir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async compact(snapshot: Snapshot): Promise<void> {
    await this.tidying;
    if (snapshot.index < this.snapshotIndex) {
      // A snapshot installed from the leader while this one saved is newer.
      await rm(join(this.snapshotDir, snapshotFileName(snapshot)), { force: true });
      return;
    }
    assert(snapshot.index > this.snapshotIndex, `snapshot ${snapshot.index} is already in force`);
    assert(snapshot.index <= this.lastIndex, "compacting past the end of the log");
    await this.write([snapshotRecord(snapshot)], true);
    const from = this.snapshotIndex + 1;
    this.snapshotIndex = snapshot.index;
    // What the record now covers goes beside later writes, none of which touch it; a
    // failure surfaces at the next compaction or at close.
    this.tidying = (async () => {
      await this.clearEntries(from, snapshot.index);
      await this.removeSnapshotsBefore(snapshot.index);
    })();
    this.tidying.catch(() => undefined);
  }

  /** Snapshot files of earlier indexes; a temporary file may be a save under way. */
  private async removeSnapshotsBefore(index: number): Promise<void> {
    const current = `snapshot-${index.toString(16).padStart(16, "0")}`;
    for (const file of await readdir(this.snapshotDir)) {
      if (file < current && file.endsWith(".snap"))
        await rm(join(this.snapshotDir, file), { force: true });
    }
  }

  async close(): Promise<void> {
    try {
      await this.tidying;
    } finally {
      await this.db.close();
    }
  }
}
