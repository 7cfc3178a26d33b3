import { describe, expect, it } from "vitest";
import { RaftInvariantError } from "../../../raft/core/assert.js";
import { Network, sentOfType, texts } from "./harness.js";

describe("Raft §7: log compaction", () => {
  it("compact() drops the entries up to the snapshot and keeps the term of its last entry", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 20));
    const { applied, lastIndex, term } = network.status("n1");
    const snapshot = network.compact("n1");
    expect(snapshot).toMatchObject({ index: applied, term, config: network.status("n1").config });
    expect(network.status("n1")).toMatchObject({ firstIndex: applied + 1, lastIndex });
    expect(network.raft("n1").entryAt(applied)).toBeUndefined();
    expect(network.raft("n1").termAt(applied)).toBe(term);
    expect(network.storedEntries("n1").every((entry) => entry.index > applied)).toBe(true);
    network.proposeAll("n1", ["after"]);
    expect(network.texts("n2").at(-1)).toBe("after");
  });

  it("refuses to compact beyond the applied index", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", ["x"]);
    const { applied } = network.status("n1");
    expect(() => network.raft("n1").compact(applied + 1, new Uint8Array())).toThrow(
      RaftInvariantError,
    );
  });

  it("a follower whose missing entries were compacted installs a snapshot, then catches up by appends", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n3");
    network.proposeAll("n1", texts("before", 30));
    const snapshot = network.compact("n1");
    network.compact("n2");
    network.heal();
    network.tick("n1");
    network.settle();

    const snapshots = sentOfType(network, "snapshot").filter((m) => m.to === "n3");
    expect(snapshots.map((m) => m.snapshot.index)).toEqual([snapshot.index]);
    expect(network.storedSnapshot("n3")?.index).toBe(snapshot.index);
    expect(network.status("n3")).toMatchObject({
      firstIndex: snapshot.index + 1,
      commit: snapshot.index,
    });
    expect(network.texts("n3")).toEqual(texts("before", 30));

    const since = network.trace.length;
    network.proposeAll("n1", texts("after", 5));
    const appends = network.trace
      .slice(since)
      .filter(({ message: m }) => m.type === "append" && m.to === "n3" && m.entries.length > 0);
    expect(appends.length).toBeGreaterThan(0);
    expect(sentOfType(network, "snapshot").length).toBe(1);
    expect(network.logTerms("n3")).toEqual(network.logTerms("n1"));
    expect(network.texts("n3")).toEqual([...texts("before", 30), ...texts("after", 5)]);
  });

  it("a joining learner can start from a snapshot that carries the configuration with it", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.addNode("n4");
    network.isolate("n4");
    network.raft("n1").proposeConfChange({ kind: "add-learner", node: "n4" });
    network.proposeAll("n1", texts("x", 10));
    for (const id of ["n1", "n2", "n3"]) network.compact(id);
    network.heal();
    network.tickAll(2);
    expect(network.storedSnapshot("n4")?.config).toEqual({
      voters: ["n1", "n2", "n3"],
      learners: ["n4"],
    });
    expect(network.status("n4").config).toEqual({ voters: ["n1", "n2", "n3"], learners: ["n4"] });
    expect(network.texts("n4")).toEqual(texts("x", 10));
  });

  it("a stale snapshot does not roll a follower back", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 5));
    const snapshot = network.compact("n1");
    network.proposeAll("n1", texts("y", 5));
    const before = network.logTerms("n2");
    const { term } = network.status("n1");
    network.inject({ type: "snapshot", from: "n1", to: "n2", term, snapshot });
    network.settle();
    expect(network.logTerms("n2")).toEqual(before);
    expect(network.texts("n2")).toEqual([...texts("x", 5), ...texts("y", 5)]);
    expect(network.storedSnapshot("n2")).toBeNull();
  });
});

describe("Raft §7: restart from a snapshot", () => {
  it("a follower restarts from its stored snapshot and the entries after it", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 10));
    const snapshot = network.compact("n2");
    network.proposeAll("n1", texts("y", 5));
    network.crash("n2");
    network.restart("n2");
    expect(network.status("n2")).toMatchObject({
      firstIndex: snapshot.index + 1,
      lastIndex: network.status("n1").lastIndex,
      commit: network.status("n1").commit,
    });
    network.settle();
    expect(network.texts("n2")).toEqual([...texts("x", 10), ...texts("y", 5)]);
    network.tickAll();
    network.proposeAll("n1", ["z"]);
    expect(network.texts("n2").at(-1)).toBe("z");
  });

  it("a whole cluster restarts from compacted storage and keeps every committed entry", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 10));
    for (const id of network.ids()) network.compact(id);
    network.proposeAll("n1", texts("y", 3));
    for (const id of network.ids()) network.crash(id);
    for (const id of network.ids()) network.restart(id);
    const leader = network.tickUntilLeader();
    network.proposeAll(leader, ["z"]);
    for (const id of network.ids()) {
      expect(network.texts(id)).toEqual([...texts("x", 10), ...texts("y", 3), "z"]);
    }
  });
});
