import { describe, expect, it } from "vitest";
import type { Entry, EntryPayload, Ready } from "../../../raft/core/types.js";
import { electionTicks, Network, sentOfType, texts } from "./harness.js";

/** Three voters led by n1 with five committed entries, and n4 added as a learner. */
function clusterWithLearner(): Network {
  const network = new Network(3);
  network.electLeader("n1");
  network.proposeAll("n1", texts("before", 5));
  network.addNode("n4");
  const result = network.raft("n1").proposeConfChange({ kind: "add-learner", node: "n4" });
  expect(result.ok).toBe(true);
  network.settle();
  network.tickAll();
  return network;
}

describe("Raft §6: adding a learner (a non-voting member that catches up first)", () => {
  it("the change takes effect when committed, not when appended", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.addNode("n4");
    network.isolate("n2");
    network.isolate("n3");
    network.raft("n1").proposeConfChange({ kind: "add-learner", node: "n4" });
    network.settle();
    expect(network.status("n1").config).toEqual({ voters: ["n1", "n2", "n3"], learners: [] });
    network.heal();
    network.tickAll();
    expect(network.status("n1").config).toEqual({ voters: ["n1", "n2", "n3"], learners: ["n4"] });
  });

  it("a joining node added as learner receives the whole log and applies it", () => {
    const network = clusterWithLearner();
    expect(network.logTerms("n4")).toEqual(network.logTerms("n1"));
    expect(network.texts("n4")).toEqual(texts("before", 5));
    expect(network.status("n4")).toMatchObject({
      role: "follower",
      leader: "n1",
      config: { voters: ["n1", "n2", "n3"], learners: ["n4"] },
    });
  });

  it("a learner never campaigns, and candidates do not ask it for a vote", () => {
    const network = clusterWithLearner();
    const term = network.status("n4").term;
    network.isolate("n4");
    network.tick("n4", 5 * electionTicks);
    network.settle();
    expect(network.status("n4")).toMatchObject({ role: "follower", term });
    network.heal();
    network.crash("n1");
    network.electLeader("n2");
    expect(sentOfType(network, "vote").filter((m) => m.to === "n4")).toEqual([]);
    expect(sentOfType(network, "vote").filter((m) => m.from === "n4")).toEqual([]);
  });

  it("a learner does not count towards the commit quorum", () => {
    const network = clusterWithLearner();
    const commit = network.status("n1").commit;
    network.isolate("n2");
    network.isolate("n3");
    network.proposeAll("n1", ["needs-a-voter"]);
    expect(network.status("n4").lastIndex).toBe(commit + 1);
    expect(network.status("n1").commit).toBe(commit);
    network.heal();
    network.tickAll();
    expect(network.status("n1").commit).toBe(commit + 1);
  });

  it("promoting a caught-up learner makes it a voter that counts for quorum and can lead", () => {
    const network = clusterWithLearner();
    expect(network.raft("n1").proposeConfChange({ kind: "promote", node: "n4" }).ok).toBe(true);
    network.settle();
    network.tickAll();
    for (const id of network.ids()) {
      expect(network.status(id).config).toEqual({ voters: ["n1", "n2", "n3", "n4"], learners: [] });
    }
    // Four voters: two of them are no longer a majority, three are.
    const commit = network.status("n1").commit;
    network.isolate("n2");
    network.isolate("n3");
    network.proposeAll("n1", ["two-of-four"]);
    expect(network.status("n1").commit).toBe(commit);
    network.heal();
    network.isolate("n2");
    network.tickAll();
    expect(network.status("n1").commit).toBe(commit + 1);
    network.heal();
    network.tickAll();
    network.electLeader("n4");
    network.proposeAll("n4", ["led-by-n4"]);
    expect(network.texts("n2").at(-1)).toBe("led-by-n4");
  });
});

describe("Raft §6: removing a voter", () => {
  it("a removed voter no longer counts for quorum and receives no more appends", () => {
    const network = new Network(4);
    network.electLeader("n1");
    expect(network.raft("n1").proposeConfChange({ kind: "remove", node: "n4" }).ok).toBe(true);
    network.settle();
    expect(network.status("n1").config).toEqual({ voters: ["n1", "n2", "n3"], learners: [] });
    const since = network.trace.length;
    network.isolate("n3");
    // Two of four would not commit; two of three do.
    network.proposeAll("n1", ["after-removal"]);
    expect(network.texts("n2")).toEqual(["after-removal"]);
    const toRemoved = network.trace.slice(since).filter(({ message }) => message.to === "n4");
    expect(toRemoved).toEqual([]);
  });

  it("a leader that removes itself steps down when the change commits, and the others carry on", () => {
    const network = new Network(3);
    network.electLeader("n1");
    expect(network.raft("n1").proposeConfChange({ kind: "remove", node: "n1" }).ok).toBe(true);
    network.settle();
    expect(network.status("n1")).toMatchObject({
      role: "follower",
      config: { voters: ["n2", "n3"], learners: [] },
    });
    // The removed leader told the others the change committed and handed over at once.
    expect(sentOfType(network, "timeout-now").map((m) => m.from)).toEqual(["n1"]);
    const [leader] = network.leaders();
    expect(["n2", "n3"]).toContain(leader);
    if (leader === undefined) return;
    expect(network.status(leader).config).toEqual({ voters: ["n2", "n3"], learners: [] });
    network.proposeAll(leader, ["without-n1"]);
    network.tickAll(5 * electionTicks);
    expect(network.leaders()).toEqual([leader]);
    for (const id of ["n2", "n3"]) {
      expect(network.status(id).config).toEqual({ voters: ["n2", "n3"], learners: [] });
      expect(network.texts(id)).toEqual(["without-n1"]);
    }
    expect(network.status("n1").role).toBe("follower");
  });
});

describe("Raft §6: removed servers must not disrupt the cluster", () => {
  it("with CheckQuorum, a removed voter that never learned of its removal cannot depose the leader", () => {
    const network = new Network(4, { checkQuorum: true });
    network.electLeader("n1");
    network.isolate("n4");
    expect(network.raft("n1").proposeConfChange({ kind: "remove", node: "n4" }).ok).toBe(true);
    network.settle();
    network.heal();
    network.tickAll(5 * electionTicks);
    expect(network.status("n4").role).toBe("candidate");
    expect(network.leaders()).toEqual(["n1"]);
    for (const id of ["n1", "n2", "n3"]) expect(network.status(id).term).toBe(2);
  });
});

describe("Raft §6 (single-server changes): one change at a time", () => {
  it("refuses a second change while the first is uncommitted, and accepts it after", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.addNode("n4");
    network.addNode("n5");
    const raft = network.raft("n1");
    expect(raft.proposeConfChange({ kind: "add-learner", node: "n4" }).ok).toBe(true);
    expect(raft.proposeConfChange({ kind: "add-learner", node: "n5" })).toEqual({
      ok: false,
      reason: "config-pending",
      leader: "n1",
    });
    network.settle();
    expect(raft.proposeConfChange({ kind: "add-learner", node: "n5" }).ok).toBe(true);
  });

  it("a new leader refuses changes until an entry of its own term has committed", () => {
    const network = new Network(3);
    network.dropIf((m) => m.type === "append" && m.from === "n1");
    network.electLeader("n1");
    network.addNode("n4");
    const change = { kind: "add-learner", node: "n4" } as const;
    expect(network.raft("n1").proposeConfChange(change)).toMatchObject({
      ok: false,
      reason: "config-pending",
    });
    network.heal();
    network.tickAll();
    expect(network.status("n1").commit).toBe(network.status("n1").lastIndex);
    expect(network.raft("n1").proposeConfChange(change).ok).toBe(true);
  });

  it("refuses a change that does not apply to the current configuration", () => {
    const network = new Network(3);
    network.electLeader("n1");
    const raft = network.raft("n1");
    for (const change of [
      { kind: "promote", node: "n2" },
      { kind: "remove", node: "n9" },
      { kind: "add-learner", node: "n3" },
    ] as const) {
      expect(raft.proposeConfChange(change)).toMatchObject({ ok: false, reason: "invalid-change" });
    }
    expect(network.raft("n2").proposeConfChange({ kind: "remove", node: "n3" })).toEqual({
      ok: false,
      reason: "not-leader",
      leader: "n1",
    });
  });
});

describe("Raft §6: a configuration activated by a commit index survives a crash", () => {
  /** n2 receives `entry` from leader n1, then learns from a heartbeat that it committed. */
  function commitOnFollower(payload: EntryPayload): Ready | null {
    const network = new Network(3);
    network.electLeader("n1");
    network.settle();
    const { lastIndex, commit, term } = network.status("n2");
    const prevTerm = network.raft("n2").termAt(lastIndex) ?? 0;
    const envelope = { from: "n1", to: "n2", term };
    const entry = { ...payload, term, index: lastIndex + 1 } as Entry;
    network.inject({
      ...envelope,
      type: "append",
      prevIndex: lastIndex,
      prevTerm,
      entries: [entry],
      commit,
    });
    network.process("n2");
    network.inject({ ...envelope, type: "heartbeat", commit: entry.index, context: 0 });
    return network.process("n2");
  }

  it("a commit index that activates a configuration is synced", () => {
    const ready = commitOnFollower({ type: "config", change: { kind: "add-learner", node: "n4" } });
    expect(ready?.entries).toEqual([]);
    expect(ready?.hardState?.commit).toBeGreaterThan(0);
    expect(ready?.mustSync).toBe(true);
  });

  it("a commit index that activates nothing need not be synced", () => {
    const ready = commitOnFollower({ type: "normal", data: new Uint8Array([1]) });
    expect(ready?.hardState?.commit).toBeGreaterThan(0);
    expect(ready?.mustSync).toBe(false);
  });
});
