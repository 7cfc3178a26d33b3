import { afterEach, describe, expect, it } from "vitest";
import { RaftError } from "../../../raft/node.js";
import { ListMachine, type MemoryMember, startMemoryCluster, waitFor } from "./memory-cluster.js";

type Cluster = Awaited<ReturnType<typeof startMemoryCluster>>;
let cluster: Cluster | null = null;

afterEach(async () => {
  for (const member of cluster?.members.values() ?? []) await member.node.stop();
  expect(cluster?.fatal ?? []).toEqual([]);
  cluster = null;
});

function leaderOf(members: Iterable<MemoryMember>, except?: string): MemoryMember | undefined {
  return [...members].find(
    (member) => member.node.status().role === "leader" && member.node.id !== except,
  );
}

describe("RaftNode runtime over an in-memory network", () => {
  it("elects a leader, commits proposals on every node and returns the state machine's result", async () => {
    cluster = await startMemoryCluster();
    const members = cluster.members;
    const leader = await waitFor("a leader", () => leaderOf(members.values()));
    const results = await Promise.all(
      ["a", "b", "c"].map((text) => leader.node.propose(new TextEncoder().encode(text), 2000)),
    );
    expect(results.map((r) => r.result)).toEqual([1, 2, 3]);
    await waitFor("every node applied", () =>
      [...members.values()].every((m) => m.machine.items.length === 3) ? true : undefined,
    );
    for (const member of members.values()) expect(member.machine.items).toEqual(["a", "b", "c"]);
  });

  it("refuses a proposal on a follower with not-leader and names the leader", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const follower = [...cluster.members.values()].find((m) => m !== leader);
    await waitFor("the follower knows the leader", () =>
      follower?.node.status().leader === leader.node.id ? true : undefined,
    );
    const error = await follower?.node.propose(new Uint8Array([1]), 1000).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RaftError);
    expect(error).toMatchObject({ code: "not-leader", leader: leader.node.id });
  });

  it("serves a linearizable read from a follower only after applying what the leader committed", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const { index } = await leader.node.propose(new TextEncoder().encode("x"), 2000);
    const follower = [...cluster.members.values()].find((m) => m !== leader);
    await waitFor("the follower knows the leader", () =>
      follower?.node.status().leader === leader.node.id ? true : undefined,
    );
    const readIndex = await follower?.node.readIndex(2000);
    expect(readIndex).toBeGreaterThanOrEqual(index);
    expect(follower?.machine.items).toContain("x");
  });

  it("reads asked in one turn share one ReadIndex, and each sees what was committed before it", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const follower = [...cluster.members.values()].find((m) => m !== leader) as MemoryMember;
    await waitFor("the follower knows the leader", () =>
      follower.node.status().leader === leader.node.id ? true : undefined,
    );
    const { index } = await leader.node.propose(new TextEncoder().encode("y"), 2000);
    const before = cluster.network.sent("read-index");
    const indexes = await Promise.all(
      Array.from({ length: 50 }, () => follower.node.readIndex(2000)),
    );
    expect(cluster.network.sent("read-index") - before).toBe(1);
    for (const read of indexes) expect(read).toBeGreaterThanOrEqual(index);
    expect(follower.machine.items).toContain("y");
    // A read asked after the first batch went out waits for a ReadIndex of its own.
    const first = follower.node.readIndex(2000);
    await new Promise((resolve) => setImmediate(resolve));
    const second = follower.node.readIndex(2000);
    await Promise.all([first, second]);
    expect(cluster.network.sent("read-index") - before).toBe(3);
  });

  it("membership changes asked together take turns instead of refusing all but one", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const changes = await Promise.allSettled(
      ["n4", "n5", "n6"].map((node) =>
        leader.node.changeMembership({ kind: "add-learner", node }, 2000),
      ),
    );
    expect(changes.map((change) => change.status)).toEqual(["fulfilled", "fulfilled", "fulfilled"]);
    expect([...leader.node.status().config.learners].sort()).toEqual(["n4", "n5", "n6"]);
    // A change that cannot be made is still refused, not waited on.
    const again = await leader.node
      .changeMembership({ kind: "add-learner", node: "n4" }, 2000)
      .catch((error: unknown) => error);
    expect(again).toMatchObject({ code: "invalid-change" });
  });

  it("proposals made in one turn go to disk in one write", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const persist = leader.storage.persist.bind(leader.storage);
    const written: number[] = [];
    leader.storage.persist = async (batch) => {
      const normal = batch.entries.filter((entry) => entry.type === "normal").length;
      if (normal > 0) written.push(normal);
      await persist(batch);
    };
    const texts = ["a", "b", "c", "d", "e"];
    await Promise.all(texts.map((t) => leader.node.propose(new TextEncoder().encode(t), 2000)));
    expect(written).toEqual([texts.length]);
  });

  it("elects a new leader when the old one is cut off, and keeps every acknowledged entry", async () => {
    cluster = await startMemoryCluster();
    const members = cluster.members;
    const first = await waitFor("a leader", () => leaderOf(members.values()));
    await first.node.propose(new TextEncoder().encode("before"), 2000);
    cluster.network.setIsolated(first.node.id, true);
    const second = await waitFor("a new leader", () => leaderOf(members.values(), first.node.id));
    await second.node.propose(new TextEncoder().encode("after"), 2000);
    cluster.network.setIsolated(first.node.id, false);
    await waitFor("the old leader caught up", () =>
      first.machine.items.includes("after") ? true : undefined,
    );
    expect(first.machine.items).toEqual(["before", "after"]);
    expect(first.node.status().role).toBe("follower");
  });

  it("a leader whose process stalled past its lease does not answer a read from its own state", async () => {
    cluster = await startMemoryCluster();
    const members = cluster.members;
    const leader = await waitFor("a leader", () => leaderOf(members.values()));
    await leader.node.propose(new TextEncoder().encode("x"), 2000);
    await leader.node.leaseRead(2000);
    // Cut off and frozen (as by SIGSTOP) without a single timer firing: only the clock moves.
    cluster.network.setIsolated(leader.node.id, true);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    await expect(leader.node.leaseRead(100)).rejects.toBeInstanceOf(RaftError);
    cluster.network.setIsolated(leader.node.id, false);
  });

  it("takes snapshots and compacts the log as entries are applied", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const texts = Array.from({ length: 120 }, (_, i) => `e${i}`);
    await Promise.all(
      texts.map((text) => leader.node.propose(new TextEncoder().encode(text), 5000)),
    );
    expect(leader.machine.items).toEqual(texts);
    // The snapshot is taken a slice at a time and written beside the loop: it lands soon after.
    await waitFor("a snapshot in storage", () =>
      (leader.storage.persisted.snapshot?.index ?? 0) >= 50 ? true : undefined,
    );
    expect(leader.node.status().firstIndex).toBeGreaterThan(50);
    // It holds what had applied at its index, nothing applied while it was taken.
    const snapshot = leader.storage.persisted.snapshot;
    const restored = new ListMachine();
    restored.restore(snapshot?.data ?? new Uint8Array());
    const covered = leader.machine.indexes.filter((index) => index <= (snapshot?.index ?? 0));
    expect(restored.items).toEqual(texts.slice(0, covered.length));
  });

  it("a snapshot taken across turns holds what had applied at its index, though entries apply meanwhile", async () => {
    cluster = await startMemoryCluster();
    for (const member of cluster.members.values()) member.machine.pieceCostMs = 1;
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    let proposed = 0;
    let writing = true;
    const writer = (async () => {
      while (writing && proposed < 2000)
        await leader.node.propose(new TextEncoder().encode(`e${proposed++}`), 5000);
    })();
    const snapshot = await waitFor(
      "a snapshot in storage",
      () => leader.storage.persisted.snapshot ?? undefined,
      10_000,
    );
    writing = false;
    await writer;
    const restored = new ListMachine();
    restored.restore(snapshot.data);
    const covered = leader.machine.indexes.filter((index) => index <= snapshot.index);
    expect(covered.length).toBeGreaterThan(0);
    expect(restored.items).toEqual(leader.machine.items.slice(0, covered.length));
    // Entries did apply while it was taken.
    expect(leader.machine.items.length).toBeGreaterThan(covered.length);
  });

  it("stops a node whose core hits a broken invariant and reports it, instead of going on", async () => {
    cluster = await startMemoryCluster();
    const leader = await waitFor("a leader", () => leaderOf(cluster?.members.values() ?? []));
    const follower = [...cluster.members.values()].find((m) => m !== leader) as MemoryMember;
    await leader.node.propose(new TextEncoder().encode("x"), 2000);
    await waitFor("the follower applied the entry", () =>
      follower.machine.items.includes("x") ? true : undefined,
    );
    // The follower's last entry is "x", written in the leader's term.
    const { term, lastIndex } = follower.node.status();
    // An append whose entries do not follow its prevIndex: no correct leader sends this.
    cluster.network.transport("rogue").send({
      type: "append",
      from: leader.node.id,
      to: follower.node.id,
      term,
      prevIndex: lastIndex,
      prevTerm: term,
      entries: [{ type: "noop", term, index: lastIndex + 5 }],
      commit: 0,
    });
    await waitFor("the fatal report", () => cluster?.fatal[0]);
    expect(cluster.fatal.map((error) => error.name)).toEqual(["RaftInvariantError"]);
    const refused = await follower.node.readIndex(1000).catch((error: unknown) => error);
    expect(refused).toMatchObject({ code: "stopped" });
    cluster.fatal.length = 0;
  });
});
