import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { bootstrapState } from "../../raft/core/raft.js";
import type { PersistedState, Snapshot } from "../../raft/core/types.js";
import { RaftNode } from "../../raft/node.js";
import { LevelStorage } from "../../raft/storage/level-storage.js";
import type { PersistBatch, RaftStorage } from "../../raft/storage/storage.js";
import { MemoryNetwork } from "../../raft/transport/memory-transport.js";
import { fastRaft, ListMachine, waitFor } from "../unit/runtime/memory-cluster.js";
import { Random } from "./random.js";

/**
 * The real LevelDB storage under a layer that keeps every write made without a sync in
 * memory until the next synced write (as an OS page cache does), and loses it on power loss.
 * `lying` makes the disk claim syncs it never did: the test must catch what that loses.
 */
class PowerLossStorage implements RaftStorage {
  private unsynced: PersistBatch[] = [];
  private lost = false;

  constructor(
    private readonly inner: LevelStorage,
    private readonly lying: boolean,
  ) {}

  load(): Promise<PersistedState> {
    return this.inner.load();
  }

  async persist(batch: PersistBatch): Promise<void> {
    if (this.lost) throw new Error("power lost");
    if (!batch.mustSync || this.lying) {
      this.unsynced.push(batch);
      return;
    }
    const pending = this.unsynced;
    this.unsynced = [];
    for (const earlier of pending) await this.inner.persist(earlier);
    await this.inner.persist(batch);
  }

  async saveSnapshot(snapshot: Snapshot): Promise<void> {
    if (this.lost) throw new Error("power lost");
    if (!this.lying) await this.inner.saveSnapshot(snapshot);
  }

  async compact(snapshot: Snapshot): Promise<void> {
    if (this.lost) throw new Error("power lost");
    if (this.lying) return;
    // Compaction syncs: what it covers must be on disk first.
    const pending = this.unsynced;
    this.unsynced = [];
    for (const earlier of pending) await this.inner.persist(earlier);
    await this.inner.compact(snapshot);
  }

  /** Power goes: nothing more is written, and what was not synced is gone. */
  powerLoss(): void {
    this.lost = true;
    this.unsynced = [];
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const ids = ["n1", "n2", "n3"] as const;
let root = "";

afterEach(async () => {
  if (root !== "") await rm(root, { recursive: true, force: true });
  root = "";
});

async function startCluster(lying: boolean) {
  const network = new MemoryNetwork();
  const members = [];
  for (const id of ids) {
    const storage = new PowerLossStorage(
      await LevelStorage.open(join(root, id), bootstrapState([...ids])),
      lying,
    );
    const machine = new ListMachine();
    const node = await RaftNode.start({
      raft: fastRaft(id),
      tickIntervalMs: 5,
      snapshotEveryEntries: 200,
      storage,
      transport: network.transport(id),
      stateMachine: machine,
      onFatal: () => undefined,
    });
    members.push({ id, node, machine, storage });
  }
  return members;
}

type Cluster = Awaited<ReturnType<typeof startCluster>>;

function leaderOf(cluster: Cluster) {
  return cluster.find((member) => member.node.status().role === "leader");
}

/**
 * Rounds of: proposals from several clients, then power lost on every node at once at a
 * random moment, then a restart from what is on disk. Returns the acknowledged values that
 * some node no longer has.
 */
async function powerLossRounds(
  seed: number,
  rounds: number,
  lying: boolean,
): Promise<{ acknowledged: number; lost: string[] }> {
  root = await mkdtemp(join(tmpdir(), "muster-power-"));
  const random = new Random(seed);
  const acknowledged: string[] = [];
  for (let round = 0; round < rounds; round++) {
    const cluster = await startCluster(lying);
    await waitFor("a leader", () => leaderOf(cluster), 10_000);
    let running = true;
    const clients = Array.from({ length: 4 }, async (_, client) => {
      for (let n = 0; running; n++) {
        const leader = leaderOf(cluster);
        const value = `r${round}-c${client}-${n}`;
        const outcome = await leader?.node
          .propose(new TextEncoder().encode(value), 1000)
          .catch(() => null);
        if (outcome !== null && outcome !== undefined) acknowledged.push(value);
        else await new Promise((resolve) => setTimeout(resolve, 5));
      }
    });
    await new Promise((resolve) => setTimeout(resolve, random.between(50, 400)));
    for (const member of cluster) member.storage.powerLoss();
    running = false;
    await Promise.all(clients);
    for (const member of cluster) await member.node.stop();
  }
  // Back on from disk: every node must hold every acknowledged value once it catches up.
  const cluster = await startCluster(false);
  try {
    const leader = await waitFor("a leader", () => leaderOf(cluster), 10_000);
    await leader.node.propose(new TextEncoder().encode("marker"), 5000);
    await waitFor(
      "every node to apply the marker",
      () => (cluster.every((member) => member.machine.items.includes("marker")) ? true : undefined),
      10_000,
    );
    const first = cluster[0]?.machine.items ?? [];
    for (const member of cluster) expect(member.machine.items).toEqual(first);
    const held = new Set(first);
    return {
      acknowledged: acknowledged.length,
      lost: acknowledged.filter((value) => !held.has(value)),
    };
  } finally {
    for (const member of cluster) await member.node.stop();
  }
}

describe("power loss on every node at once", () => {
  it("loses no acknowledged write: only unsynced commit indexes go, and they are learned again", async () => {
    const { acknowledged, lost } = await powerLossRounds(20261123, 6, false);
    expect(acknowledged).toBeGreaterThan(100);
    expect(lost).toEqual([]);
  });

  it("catches a disk that acknowledges syncs it never did", async () => {
    const { acknowledged, lost } = await powerLossRounds(20261123, 3, true);
    expect(acknowledged).toBeGreaterThan(0);
    expect(lost.length).toBeGreaterThan(0);
  });
});
