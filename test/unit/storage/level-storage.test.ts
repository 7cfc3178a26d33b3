import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Level } from "level";
import { afterEach, describe, expect, it } from "vitest";
import { bootstrapState } from "../../../raft/core/raft.js";
import type { Entry, PersistedState, Snapshot } from "../../../raft/core/types.js";
import { LevelStorage, StorageCorruptionError } from "../../../raft/storage/level-storage.js";
import { withBatch, withSnapshot } from "../../../raft/storage/persisted-log.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function dataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "muster-storage-"));
  dirs.push(dir);
  return dir;
}

function entry(index: number, term: number, text = `${index}@${term}`): Entry {
  return { index, term, type: "normal", data: new TextEncoder().encode(text) };
}

/** The state with every byte array as a plain array, to compare by value. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return [...value];
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, plain(inner)]));
  }
  return value;
}

async function reopen(dir: string): Promise<{ storage: LevelStorage; state: PersistedState }> {
  const storage = await LevelStorage.open(dir, bootstrapState(["n1"]));
  return { storage, state: await storage.load() };
}

/** A new log of `voters` holding entries 2..`last` of term 2, all committed, and its model. */
async function committedLog(dir: string, last: number, voters = ["n1"]) {
  const initial = bootstrapState(voters);
  const storage = await LevelStorage.open(dir, initial);
  await storage.load();
  const batch = {
    hardState: { term: 2, vote: "n1", commit: last },
    snapshot: null,
    entries: Array.from({ length: last - 1 }, (_, i) => entry(i + 2, 2)),
    mustSync: true,
  };
  await storage.persist(batch);
  return { storage, model: withBatch(initial, batch) };
}

function snapshotAt(index: number, term: number, data: Uint8Array, voters = ["n1"]): Snapshot {
  return { index, term, config: { voters, learners: [] }, data };
}

describe("LevelStorage", () => {
  it("recovers exactly what was persisted, including truncated and replaced suffixes", async () => {
    const dir = await dataDir();
    const initial = bootstrapState(["n1", "n2", "n3"]);
    let model = initial;
    const storage = await LevelStorage.open(dir, initial);
    await storage.load();
    const batches = [
      {
        hardState: { term: 2, vote: "n1", commit: 1 },
        snapshot: null,
        entries: [entry(2, 2), entry(3, 2), entry(4, 2)],
        mustSync: true,
      },
      { hardState: null, snapshot: null, entries: [entry(5, 2)], mustSync: true },
      // A new leader replaces the uncommitted suffix from index 3.
      {
        hardState: { term: 3, vote: "n2", commit: 2 },
        snapshot: null,
        entries: [entry(3, 3, "replaced")],
        mustSync: true,
      },
      // Only the commit index moved: written without a sync.
      {
        hardState: { term: 3, vote: "n2", commit: 3 },
        snapshot: null,
        entries: [],
        mustSync: false,
      },
    ];
    for (const batch of batches) {
      await storage.persist(batch);
      model = withBatch(model, batch);
    }
    await storage.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(plain(state)).toEqual(plain(model));
    expect(state.entries.map((e) => e.index)).toEqual([1, 2, 3]);
    await reopened.close();
  });

  it("keeps a snapshot in a checksummed file, drops the entries it covers and old snapshot files", async () => {
    const dir = await dataDir();
    const log = await committedLog(dir, 6);
    const storage = log.storage;
    let model = log.model;
    for (const index of [3, 5]) {
      const snapshot = snapshotAt(index, 2, new TextEncoder().encode(`state@${index}`));
      await storage.saveSnapshot(snapshot);
      await storage.compact(snapshot);
      model = withSnapshot(model, snapshot);
    }
    await storage.close();
    expect((await readdir(join(dir, "snapshots"))).length).toBe(1);
    const { storage: reopened, state } = await reopen(dir);
    expect(plain(state)).toEqual(plain(model));
    expect(state.snapshot?.index).toBe(5);
    expect(state.entries.map((e) => e.index)).toEqual([6]);
    await reopened.close();
  });

  it("installs a snapshot from the leader in place of the whole log", async () => {
    const dir = await dataDir();
    const storage = await LevelStorage.open(dir, bootstrapState(["n1", "n2"]));
    await storage.load();
    const snapshot = {
      index: 40,
      term: 4,
      config: { voters: ["n1", "n2"], learners: [] },
      data: new Uint8Array([7]),
    };
    await storage.persist({
      hardState: { term: 4, vote: null, commit: 40 },
      snapshot,
      entries: [entry(41, 4)],
      mustSync: true,
    });
    await storage.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(state.snapshot?.index).toBe(40);
    expect(state.entries.map((e) => e.index)).toEqual([41]);
    expect(state.hardState).toEqual({ term: 4, vote: null, commit: 40 });
    await reopened.close();
  });

  it("keeps a snapshot of several megabytes byte for byte", async () => {
    const dir = await dataDir();
    const { storage } = await committedLog(dir, 2);
    const data = randomBytes(3 * 1024 * 1024 + 7);
    const snapshot = snapshotAt(2, 2, data);
    await storage.saveSnapshot(snapshot);
    await storage.compact(snapshot);
    await storage.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(Buffer.compare(state.snapshot?.data ?? new Uint8Array(), data)).toBe(0);
    await reopened.close();
  });

  it("a saved snapshot not yet in force changes nothing, and its file goes at the next start", async () => {
    const dir = await dataDir();
    const { storage, model } = await committedLog(dir, 3);
    await storage.saveSnapshot(snapshotAt(3, 2, new Uint8Array([3])));
    await storage.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(plain(state)).toEqual(plain(model));
    expect(await readdir(join(dir, "snapshots"))).toEqual([]);
    await reopened.close();
  });

  it("a snapshot installed from the leader while an older one saves stays in force", async () => {
    const dir = await dataDir();
    const voters = ["n1", "n2"];
    const { storage } = await committedLog(dir, 3, voters);
    const older = snapshotAt(3, 2, new Uint8Array([3]), voters);
    const installed = snapshotAt(40, 4, new Uint8Array([40]), voters);
    await Promise.all([
      storage.saveSnapshot(older),
      storage.persist({
        hardState: { term: 4, vote: null, commit: 40 },
        snapshot: installed,
        entries: [entry(41, 4)],
        mustSync: true,
      }),
    ]);
    await storage.compact(older);
    expect(await readdir(join(dir, "snapshots"))).toEqual([
      `snapshot-${(40).toString(16).padStart(16, "0")}-4.snap`,
    ]);
    await storage.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(plain(state.snapshot)).toEqual(plain(installed));
    expect(state.entries.map((e) => e.index)).toEqual([41]);
    expect(await readdir(join(dir, "snapshots"))).toHaveLength(1);
    await reopened.close();
  });

  it("refuses to start, naming the record, when a synced log record is damaged", async () => {
    const dir = await dataDir();
    const storage = await LevelStorage.open(dir, bootstrapState(["n1"]));
    await storage.load();
    await storage.persist({
      hardState: { term: 2, vote: "n1", commit: 1 },
      snapshot: null,
      entries: [entry(2, 2), entry(3, 2)],
      mustSync: true,
    });
    await storage.close();
    const db = new Level<string, Uint8Array>(join(dir, "raft-log"), { valueEncoding: "view" });
    const key = `entry:${(2).toString(16).padStart(16, "0")}`;
    const record = Uint8Array.from((await db.get(key)) ?? []);
    record[record.length - 1] = (record[record.length - 1] ?? 0) ^ 0xff;
    await db.put(key, record);
    await db.close();
    const reopened = await LevelStorage.open(dir, bootstrapState(["n1"]));
    await expect(reopened.load()).rejects.toThrow(StorageCorruptionError);
    await expect(reopened.load()).rejects.toThrow(/log record 2 failed its checksum/);
    await reopened.close();
  });

  it("drops a tail written after the last completed sync", async () => {
    const dir = await dataDir();
    const storage = await LevelStorage.open(dir, bootstrapState(["n1"]));
    await storage.load();
    await storage.persist({
      hardState: { term: 2, vote: "n1", commit: 1 },
      snapshot: null,
      entries: [entry(2, 2)],
      mustSync: true,
    });
    await storage.close();
    const db = new Level<string, Uint8Array>(join(dir, "raft-log"), { valueEncoding: "view" });
    // A record past the synced end, as a write cut short would leave it: half-written.
    await db.put(`entry:${(3).toString(16).padStart(16, "0")}`, new Uint8Array([1, 2, 3]));
    await db.close();
    const { storage: reopened, state } = await reopen(dir);
    expect(state.entries.map((e) => e.index)).toEqual([1, 2]);
    await reopened.close();
  });

  it("refuses to start when the snapshot file is damaged", async () => {
    const dir = await dataDir();
    const { storage } = await committedLog(dir, 2);
    const snapshot = snapshotAt(2, 2, new Uint8Array([1]));
    await storage.saveSnapshot(snapshot);
    await storage.compact(snapshot);
    await storage.close();
    const [file] = await readdir(join(dir, "snapshots"));
    await writeFile(join(dir, "snapshots", file ?? ""), new Uint8Array([0, 0, 0, 0, 9]));
    const reopened = await LevelStorage.open(dir, bootstrapState(["n1"]));
    await expect(reopened.load()).rejects.toThrow(/snapshot file .* failed its checksum/);
    await reopened.close();
  });
});
