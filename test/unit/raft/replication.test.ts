import { describe, expect, it } from "vitest";
import { Network, texts } from "./harness.js";

/** Appends from `from` to `to` that carry entries, sent after trace position `since`. */
function appendsWithEntries(network: Network, from: string, to: string, since = 0) {
  return network.trace
    .slice(since)
    .map((sent) => sent.message)
    .filter((m) => m.type === "append" && m.from === from && m.to === to && m.entries.length > 0);
}

describe("Raft §5.3: log replication", () => {
  it("commits proposals on every node and applies them in the order proposed", () => {
    const network = new Network(3);
    network.electLeader("n1");
    const proposed = texts("x", 20);
    network.proposeAll("n1", proposed);
    for (const id of network.ids()) {
      expect(network.texts(id)).toEqual(proposed);
      expect(network.status(id).commit).toBe(network.status("n1").lastIndex);
    }
  });

  it("returns the index and term at which the proposal is then applied", () => {
    const network = new Network(3);
    network.electLeader("n1");
    const result = network.propose("n1", "hello");
    network.settle();
    if (!result.ok) throw new Error("proposal refused");
    for (const id of network.ids()) {
      const entry = network.applied(id).find((applied) => applied.index === result.index);
      expect(entry).toMatchObject({ type: "normal", term: result.term });
      if (entry?.type === "normal") expect(new TextDecoder().decode(entry.data)).toBe("hello");
    }
  });

  it("commits an entry only once a majority has stored it", () => {
    const network = new Network(3);
    network.electLeader("n1");
    const commitBefore = network.status("n1").commit;
    network.isolate("n2");
    network.isolate("n3");
    network.proposeAll("n1", ["waiting"]);
    expect(network.status("n1").commit).toBe(commitBefore);
    expect(network.texts("n1")).toEqual([]);
    network.heal();
    network.isolate("n3");
    network.tickAll();
    expect(network.status("n1").commit).toBe(commitBefore + 1);
    expect(network.texts("n1")).toEqual(["waiting"]);
    expect(network.texts("n2")).toEqual(["waiting"]);
  });

  it("brings a follower that missed entries up to date", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n3");
    network.proposeAll("n1", texts("missed", 10));
    expect(network.status("n3").lastIndex).toBe(2);
    network.heal();
    network.tickAll();
    expect(network.logTerms("n3")).toEqual(network.logTerms("n1"));
    expect(network.texts("n3")).toEqual(texts("missed", 10));
  });

  it("replaces a follower's conflicting uncommitted entries with the leader's", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("a", 3));
    network.isolate("n1");
    network.proposeAll("n1", texts("stale", 5));
    network.electLeader("n2");
    network.proposeAll("n2", texts("b", 3));
    // Index 6 holds a stale entry of term 2 on n1 and the new leader's no-op of term 3 on n2.
    expect(network.raft("n1").termAt(6)).toBe(2);
    expect(network.raft("n2").termAt(6)).toBe(3);
    expect(network.status("n1").lastIndex).toBe(10);
    network.heal();
    network.tickAll(2);
    expect(network.leaders()).toEqual(["n2"]);
    for (const id of network.ids()) {
      expect(network.logTerms(id)).toEqual(network.logTerms("n2"));
      expect(network.texts(id)).toEqual([...texts("a", 3), ...texts("b", 3)]);
    }
  });
});

describe("Back-pressure on the leader", () => {
  it("refuses proposals with overloaded while maxUncommittedEntries entries wait to commit", () => {
    const network = new Network(3, { maxUncommittedEntries: 8 });
    network.electLeader("n1");
    network.isolate("n2");
    network.isolate("n3");
    const results = texts("p", 10).map((text) => network.propose("n1", text));
    expect(results.filter((result) => result.ok).length).toBe(8);
    expect(results.at(-1)).toEqual({ ok: false, reason: "overloaded", leader: "n1" });
    network.heal();
    network.tickAll();
    expect(network.texts("n2")).toEqual(texts("p", 8));
    expect(network.propose("n1", "again").ok).toBe(true);
  });
});

/**
 * Five nodes; n3 ends up 51 entries short of the leader n2 (indexes 10..60 of term 2) with a
 * divergent suffix of its own (indexes 10..50 of term 3), as in the paper's Figure 7.
 */
function divergentFollower(): Network {
  const network = new Network(5);
  network.electLeader("n1");
  network.proposeAll("n1", texts("common", 7));
  for (const a of ["n1", "n2"]) for (const b of ["n3", "n4", "n5"]) network.cut(a, b);
  network.proposeAll("n1", texts("old-term", 51));
  // n3 wins term 3 with n4 and n5, and nobody receives its entries.
  network.dropIf((m) => m.from === "n3" && m.type === "append");
  network.electLeader("n3");
  network.proposeAll("n3", texts("divergent", 40));
  network.heal();
  network.isolate("n3");
  network.electLeader("n2");
  network.proposeAll("n2", ["after"]);
  return network;
}

describe("Raft §5.3: fast log backtracking", () => {
  it("repairs a follower 51 entries behind with a 41-entry divergent suffix in a few round trips", () => {
    const network = divergentFollower();
    const leaderLog = network.entries("n2");
    const follower = network.entries("n3");
    expect(follower.length).toBe(50);
    expect(leaderLog.length).toBeGreaterThan(60);
    expect(follower.filter((entry) => entry.term === 3).length).toBe(41);

    network.heal();
    const since = network.trace.length;
    network.tick("n2");
    network.settle();
    const rejections = network.trace
      .slice(since)
      .filter(({ message: m }) => m.type === "append-response" && m.from === "n3" && m.reject);
    // One rejection per entry would be more than 50 round trips.
    expect(rejections.length).toBeGreaterThanOrEqual(1);
    expect(rejections.length).toBeLessThanOrEqual(3);
    expect(appendsWithEntries(network, "n2", "n3", since).length).toBeLessThanOrEqual(4);
    expect(network.logTerms("n3")).toEqual(network.logTerms("n2"));
    expect(network.texts("n3")).toEqual(network.texts("n2"));
    expect(network.texts("n3")).not.toContain("divergent-1");
  });
});

describe("Raft §5.3: batching and pipelining", () => {
  it("sends proposals made before one ready() in a single append per follower, persisted in one batch", () => {
    const network = new Network(3);
    network.electLeader("n1");
    for (const text of texts("batch", 5)) network.propose("n1", text);
    const ready = network.process("n1");
    expect(ready?.entries.length).toBe(5);
    for (const follower of ["n2", "n3"]) {
      const appends = (ready?.messages ?? []).filter(
        (m) => m.type === "append" && m.to === follower,
      );
      expect(appends.length).toBe(1);
      expect(appends[0]?.type === "append" && appends[0].entries.length).toBe(5);
    }
    const since = network.trace.length;
    network.settle();
    expect(appendsWithEntries(network, "n1", "n2", since)).toEqual([]);
    expect(network.texts("n2")).toEqual(texts("batch", 5));
  });

  it("keeps at most maxInflightAppends appends in flight to a follower that never answers", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n2");
    const since = network.trace.length;
    for (const text of texts("pipelined", 40)) network.proposeAll("n1", [text]);
    expect(appendsWithEntries(network, "n1", "n2", since).length).toBe(16);
    expect(appendsWithEntries(network, "n1", "n3", since).length).toBe(40);
    expect(network.texts("n3")).toEqual(texts("pipelined", 40));

    network.heal();
    network.tickAll(3);
    expect(network.logTerms("n2")).toEqual(network.logTerms("n1"));
    expect(network.texts("n2")).toEqual(texts("pipelined", 40));
  });
});
