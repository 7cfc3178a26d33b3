import { describe, expect, it } from "vitest";
import type { Message, PlantedBug } from "../../../raft/core/types.js";
import { LeaseClock } from "../../../raft/lease-clock.js";
import { electionTicks, Network, sentOfType, texts } from "./harness.js";

/** n1 wins term 2 but its no-op entry reaches nobody, and a read is asked of it. */
function readOnFreshLeader(plantedBug?: PlantedBug): Network {
  const network = new Network(3, plantedBug === undefined ? {} : { plantedBug });
  network.dropIf((m) => m.type === "append" && m.from === "n1");
  network.electLeader("n1");
  network.raft("n1").readIndex(1);
  network.settle();
  return network;
}

describe("Raft §8: ReadIndex on the leader", () => {
  it("waits until an entry of the leader's term has committed", () => {
    const network = readOnFreshLeader();
    expect(network.readStates("n1")).toEqual([]);
    network.heal();
    network.tickAll();
    const noop = network.status("n1").lastIndex;
    expect(network.status("n1").commit).toBe(noop);
    expect(network.readStates("n1")).toEqual([{ requestId: 1, index: noop }]);
  });

  it("catches a leader that serves a read before its term has committed (planted bug)", () => {
    const network = readOnFreshLeader("read-before-term-commit");
    expect(network.readStates("n1")).toEqual([{ requestId: 1, index: 1 }]);
  });

  it("waits for a quorum to acknowledge a heartbeat sent after the request", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", ["a"]);
    const commit = network.status("n1").commit;
    // Heartbeats sent before the request are answered, later ones are lost.
    network.tick("n1");
    network.process("n1");
    const before = sentOfType(network, "heartbeat").at(-1)?.context ?? -1;
    network.raft("n1").readIndex(7);
    network.dropIf((m) => m.type === "heartbeat" && m.context > before);
    network.settle();
    expect(sentOfType(network, "heartbeat-response").length).toBeGreaterThan(0);
    expect(network.readStates("n1")).toEqual([]);

    network.heal();
    network.cutOneWay("n3", "n1");
    network.tick("n1");
    network.settle();
    expect(network.readStates("n1")).toEqual([{ requestId: 7, index: commit }]);
  });

  it("an isolated leader never answers a read with an index, while the others move on", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n1");
    network.raft("n1").readIndex(3);
    const leader = network.tickUntilLeader(10 * electionTicks);
    network.proposeAll(leader, ["written-elsewhere"]);
    network.tickAll(5 * electionTicks);
    expect(network.status("n1").role).toBe("leader");
    expect(network.readStates("n1")).toEqual([]);
  });

  it("reads asked between two batches share one heartbeat round", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 2));
    const heartbeatsBefore = sentOfType(network, "heartbeat").length;
    for (let requestId = 1; requestId <= 10; requestId++) network.raft("n1").readIndex(requestId);
    network.settle();
    expect(sentOfType(network, "heartbeat").length - heartbeatsBefore).toBe(2);
    const commit = network.status("n1").commit;
    expect(network.readStates("n1")).toEqual(
      Array.from({ length: 10 }, (_, i) => ({ requestId: i + 1, index: commit })),
    );
  });

  it("with CheckQuorum, an isolated leader fails its pending read when it steps down", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    network.isolate("n1");
    network.raft("n1").readIndex(3);
    network.tickAll(electionTicks);
    expect(network.status("n1").role).toBe("follower");
    expect(network.readStates("n1")).toEqual([{ requestId: 3, index: null }]);
  });
});

describe("Raft §8: requests made on a follower", () => {
  it("a follower forwards a read to the leader and gets back the leader's commit index", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.proposeAll("n1", texts("x", 3));
    network.raft("n2").readIndex(9);
    network.settle();
    const forwarded = sentOfType(network, "read-index");
    expect(forwarded.map((m) => [m.from, m.to, m.requestId])).toEqual([["n2", "n1", 9]]);
    expect(network.readStates("n2")).toEqual([
      { requestId: 9, index: network.status("n1").commit },
    ]);
  });

  it("a read forwarded to a leader that has not committed in its term waits for that commit", () => {
    const network = new Network(3);
    network.dropIf((m) => m.type === "append" && m.from === "n1");
    network.electLeader("n1");
    network.tickAll();
    expect(network.status("n2").leader).toBe("n1");
    network.raft("n2").readIndex(6);
    network.settle();
    expect(network.readStates("n2")).toEqual([]);
    network.heal();
    network.tickAll();
    const noop = network.status("n1").lastIndex;
    expect(network.status("n1").commit).toBe(noop);
    expect(network.readStates("n2")).toEqual([{ requestId: 6, index: noop }]);
  });

  it("a node that knows no leader fails a read at once", () => {
    const network = new Network(3);
    network.settle();
    network.raft("n2").readIndex(4);
    network.settle();
    expect(network.readStates("n2")).toEqual([{ requestId: 4, index: null }]);
  });

  it("a follower refuses a proposal with not-leader and names the leader it knows", () => {
    const network = new Network(3);
    network.settle();
    expect(network.propose("n2", "x")).toEqual({ ok: false, reason: "not-leader", leader: null });
    network.electLeader("n1");
    expect(network.propose("n2", "x")).toEqual({ ok: false, reason: "not-leader", leader: "n1" });
    expect(network.status("n2").lastIndex).toBe(network.status("n1").lastIndex);
  });
});

describe("leader leases (Raft thesis §6.4.1)", () => {
  /** The context of the newest heartbeat n1 sent. */
  const lastHeartbeat = (network: Network) =>
    sentOfType(network, "heartbeat")
      .filter((m) => m.from === "n1")
      .at(-1)?.context ?? 0;

  it("rest on the newest heartbeat a quorum of voters answered", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    expect(network.raft("n1").leaseContext()).toBeNull();
    network.tickAll();
    const answered = lastHeartbeat(network);
    expect(answered).toBeGreaterThan(0);
    expect(network.raft("n1").leaseContext()).toBe(answered);
    // Cut off, the leader sends newer heartbeats; its lease still rests on the answered one.
    network.isolate("n1");
    network.tickAll(3);
    expect(lastHeartbeat(network)).toBeGreaterThan(answered);
    expect(network.raft("n1").leaseContext()).toBe(answered);
  });

  it("a late answer counts for the heartbeat it answers, not a newer one", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    const held: Message[] = [];
    network.dropIf((m) => {
      if (m.type !== "heartbeat-response") return false;
      held.push(m);
      return true;
    });
    network.tickAll();
    const first = lastHeartbeat(network);
    network.tickAll(3);
    expect(network.raft("n1").leaseContext()).toBeNull();
    for (const answer of held.filter((m) => m.type === "heartbeat-response" && m.context === first))
      network.inject(answer);
    expect(network.raft("n1").leaseContext()).toBe(first);
    expect(lastHeartbeat(network)).toBeGreaterThan(first);
  });

  it("are given up when a leadership transfer starts, since voters then elect the target at once", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    network.tickAll();
    expect(network.raft("n1").leaseContext()).not.toBeNull();
    network.dropIf((m) => m.type === "timeout-now");
    expect(network.raft("n1").transferLeadership("n2")).toBe(true);
    network.settle();
    network.tickAll();
    expect(network.status("n1").role).toBe("leader");
    expect(network.raft("n1").leaseContext()).toBeNull();
  });

  it("hold only with CheckQuorum, without which followers do not refuse votes", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.tickAll();
    expect(network.raft("n1").leaseContext()).toBeNull();
  });

  it("survive a voter's restart: the restarted voter refuses votes for an election timeout", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    network.tickAll();
    const term = network.status("n1").term;
    network.crash("n2");
    network.restart("n2");
    network.isolate("n1");
    network.campaign("n3");
    network.settle();
    expect(network.status("n3").role).not.toBe("leader");
    expect(network.status("n2").term).toBe(term);
    network.tickAll(3 * electionTicks);
    expect(network.leaders().filter((id) => id !== "n1")).toHaveLength(1);
  });
});

describe("LeaseClock: leases in real time", () => {
  const heartbeat = (context: number): Message => ({
    from: "n1",
    to: "n2",
    term: 2,
    type: "heartbeat",
    commit: 0,
    context,
  });

  it("holds for its duration from when the heartbeat was first handed out", () => {
    const clock = new LeaseClock(100);
    clock.handedOut([heartbeat(1)], 1000);
    // Handed out again later (to another peer): the first time counts.
    clock.handedOut([heartbeat(1), heartbeat(2)], 1050);
    expect(clock.holds(1, 1099)).toBe(true);
    expect(clock.holds(1, 1100)).toBe(false);
    expect(clock.holds(2, 1149)).toBe(true);
    expect(clock.holds(3, 1000)).toBe(false);
    expect(clock.holds(null, 1000)).toBe(false);
  });

  it("forgets heartbeats too old to give a lease", () => {
    const clock = new LeaseClock(100);
    clock.handedOut([heartbeat(1)], 0);
    clock.handedOut([heartbeat(2)], 500);
    expect(clock.holds(1, 50)).toBe(false);
    expect(clock.holds(2, 550)).toBe(true);
  });
});
