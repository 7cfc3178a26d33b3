import { describe, expect, it } from "vitest";
import type { PlantedBug } from "../../../raft/core/types.js";
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
