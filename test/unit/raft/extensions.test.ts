import { describe, expect, it } from "vitest";
import type { PlantedBug } from "../../../raft/core/types.js";
import { electionTicks, Network, sentOfType, texts } from "./harness.js";

describe("PreVote (Raft thesis §9.6)", () => {
  /** n3 is cut off while the others commit an entry, and times out again and again. */
  function partitionedNode(preVote: boolean): Network {
    const network = new Network(3, { preVote });
    network.electLeader("n1");
    network.isolate("n3");
    network.proposeAll("n1", ["while-away"]);
    network.tick("n3", 5 * electionTicks);
    network.settle();
    return network;
  }

  it("a partitioned node that rejoins does not bump the cluster's term or disrupt the leader", () => {
    const network = partitionedNode(true);
    expect(network.status("n3").term).toBe(2);
    network.heal();
    network.tickAll(3 * electionTicks);
    expect(network.leaders()).toEqual(["n1"]);
    for (const id of network.ids())
      expect(network.status(id)).toMatchObject({ term: 2, leader: "n1" });
    expect(network.texts("n3")).toEqual(["while-away"]);
  });

  it("without PreVote the same partition forces the leader out when the node rejoins", () => {
    const network = partitionedNode(false);
    expect(network.status("n3").term).toBeGreaterThan(2);
    network.heal();
    network.tickAll();
    expect(network.status("n1").term).toBeGreaterThan(2);
    expect(network.status("n1").role).not.toBe("leader");
  });
});

describe("CheckQuorum (Raft thesis §6.2)", () => {
  it("a leader cut off from the quorum steps down within an election timeout, whenever the cut comes", () => {
    const ticksToStepDown: number[] = [];
    for (let ticksBeforeCut = 0; ticksBeforeCut < electionTicks; ticksBeforeCut++) {
      const network = new Network(3, { checkQuorum: true });
      network.electLeader("n1");
      network.tickAll(ticksBeforeCut);
      network.isolate("n1");
      let ticks = 0;
      while (network.status("n1").role === "leader" && ticks < 3 * electionTicks) {
        network.tickAll();
        ticks++;
      }
      expect(network.status("n1").role).toBe("follower");
      ticksToStepDown.push(ticks);
    }
    // One entry per moment of the cut (0..9 ticks into the leader's term).
    expect(ticksToStepDown).toEqual(ticksToStepDown.map((ticks) => Math.min(ticks, electionTicks)));
  });

  it("a leader that hears from a quorum stays leader", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    network.isolate("n3");
    network.tickAll(5 * electionTicks);
    expect(network.status("n1")).toMatchObject({ role: "leader", term: 2 });
  });

  it("followers that hear from a leader ignore vote requests of a higher term", () => {
    const network = new Network(3, { checkQuorum: true });
    network.electLeader("n1");
    network.cutOneWay("n1", "n3");
    network.tickAll(3 * electionTicks);
    const votes = sentOfType(network, "vote").filter((m) => m.from === "n3");
    expect(votes.length).toBeGreaterThan(0);
    expect(sentOfType(network, "vote-response").filter((m) => m.to === "n3")).toEqual([]);
    expect(network.status("n3").term).toBeGreaterThan(2);
    expect(network.leaders()).toEqual(["n1"]);
    expect(network.status("n1").term).toBe(2);
    expect(network.status("n2")).toMatchObject({ term: 2, leader: "n1" });
  });
});

describe("Leadership transfer (Raft thesis §3.10)", () => {
  it("the target becomes leader at once through timeout-now, without an election timeout", () => {
    const network = new Network(3, { preVote: true, checkQuorum: true });
    network.electLeader("n1");
    expect(network.raft("n1").transferLeadership("n2")).toBe(true);
    network.settle();
    expect(sentOfType(network, "timeout-now").map((m) => [m.from, m.to])).toEqual([["n1", "n2"]]);
    expect(network.leaders()).toEqual(["n2"]);
    expect(network.status("n2").term).toBe(3);
    network.proposeAll("n2", ["after-transfer"]);
    expect(network.texts("n1")).toEqual(["after-transfer"]);
  });

  it("the leader refuses proposals while a transfer is in progress", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.cutOneWay("n1", "n2");
    network.raft("n1").transferLeadership("n2");
    network.settle();
    expect(network.status("n1").transferringTo).toBe("n2");
    expect(network.propose("n1", "x")).toEqual({ ok: false, reason: "transferring", leader: "n1" });
  });

  it("a transfer to a lagging node first brings its log up to date", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n3");
    network.proposeAll("n1", texts("missed", 10));
    network.heal();
    const lastIndex = network.status("n1").lastIndex;
    const since = network.trace.length;
    network.raft("n1").transferLeadership("n3");
    network.tick("n1");
    network.settle();
    expect(network.leaders()).toEqual(["n3"]);
    const messages = network.trace.slice(since).map((sent) => sent.message);
    const caughtUp = messages.findIndex(
      (m) => m.type === "append-response" && m.from === "n3" && !m.reject && m.index === lastIndex,
    );
    const timeoutNow = messages.findIndex((m) => m.type === "timeout-now");
    expect(caughtUp).toBeGreaterThanOrEqual(0);
    expect(timeoutNow).toBeGreaterThan(caughtUp);
    expect(network.texts("n3")).toEqual(texts("missed", 10));
  });

  it("a transfer that cannot finish is abandoned after an election timeout", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n2");
    expect(network.raft("n1").transferLeadership("n2")).toBe(true);
    network.tickAll(electionTicks - 1);
    expect(network.status("n1").transferringTo).toBe("n2");
    expect(network.propose("n1", "too-early").ok).toBe(false);
    network.tickAll();
    expect(network.status("n1")).toMatchObject({ role: "leader", transferringTo: null });
    expect(network.propose("n1", "accepted").ok).toBe(true);
  });

  it("refuses a transfer to itself or to a non-member, and on a follower", () => {
    const network = new Network(3);
    network.electLeader("n1");
    expect(network.raft("n1").transferLeadership("n1")).toBe(false);
    expect(network.raft("n1").transferLeadership("n9")).toBe(false);
    expect(network.raft("n2").transferLeadership("n3")).toBe(false);
    expect(network.status("n1").transferringTo).toBeNull();
  });
});

describe("Durability (Raft §5: respond to RPCs only after updating stable storage)", () => {
  function voteBatch(plantedBug?: PlantedBug) {
    const network = new Network(3, plantedBug === undefined ? {} : { plantedBug });
    network.settle();
    network.inject({
      type: "vote",
      from: "n1",
      to: "n2",
      term: 2,
      lastIndex: 1,
      lastTerm: 1,
      transfer: false,
    });
    const ready = network.process("n2");
    if (ready === null) throw new Error("n2 has nothing to do after a vote request");
    return ready;
  }

  it("a vote is answered only after the vote itself is in the batch to persist", () => {
    const ready = voteBatch();
    expect(ready.hardState).toEqual({ term: 2, vote: "n1", commit: 1 });
    expect(ready.messages).toEqual([]);
    expect(ready.messagesAfterPersist).toEqual([
      { type: "vote-response", from: "n2", to: "n1", term: 2, granted: true },
    ]);
  });

  it("catches a vote answered before it is persisted (planted bug)", () => {
    const ready = voteBatch("vote-before-persist");
    expect(ready.messages.map((m) => m.type)).toEqual(["vote-response"]);
  });

  it("an append is acknowledged only after its entries are in the batch to persist", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.propose("n1", "x");
    const append = network.process("n1")?.messages.find((m) => m.to === "n2");
    if (append?.type !== "append") throw new Error("the leader sent no append to n2");
    network.inject(append);
    const ready = network.process("n2");
    expect(ready?.entries).toEqual(append.entries);
    expect(ready?.messages).toEqual([]);
    expect(ready?.messagesAfterPersist).toMatchObject([
      { type: "append-response", to: "n1", reject: false, index: append.entries.at(-1)?.index },
    ]);
  });

  /** One voter and a learner; the voter restarts in term 2 and wins term 3 inside tick(). */
  function singleVoterJustElected(): Network {
    const network = new Network(1);
    network.electLeader("n1");
    network.addNode("n2");
    network.raft("n1").proposeConfChange({ kind: "add-learner", node: "n2" });
    network.settle();
    network.tickAll();
    network.crash("n1");
    network.restart("n1");
    network.settle();
    network.campaign("n1");
    expect(network.status("n1")).toMatchObject({ role: "leader", term: 3 });
    return network;
  }

  it("a single voter that wins at once sends nothing of its new term before persisting the term", () => {
    const network = singleVoterJustElected();
    const ready = network.process("n1");
    expect(ready?.hardState?.term).toBe(3);
    const earlyInNewTerm = (ready?.messages ?? []).filter((m) => m.term > 2);
    expect(earlyInNewTerm.map((m) => `${m.type} to ${m.to} in term ${m.term}`)).toEqual([]);
  });

  it("a crash while that first batch persists cannot make the learner apply a different entry", () => {
    const network = singleVoterJustElected();
    expect(network.propose("n1", "lost").ok).toBe(true);
    // The batch's `messages` leave, then n1 dies before term 3 reaches its disk.
    network.crashWhilePersisting("n1");
    network.settle();
    network.restart("n1");
    expect(network.status("n1").term).toBe(2);
    network.settle();
    network.campaign("n1");
    expect(network.status("n1")).toMatchObject({ role: "leader", term: 3 });
    network.proposeAll("n1", ["kept"]);
    network.tickAll();
    expect(network.texts("n1")).toEqual(["kept"]);
    expect(network.texts("n2")).toEqual(["kept"]);
  });

  it("across elections, transfers and partitions, vote and append responses are only sent after persisting", () => {
    const network = new Network(5, { preVote: true, checkQuorum: true, seed: 7 });
    network.electLeader("n1");
    network.proposeAll("n1", texts("a", 5));
    network.raft("n1").transferLeadership("n3");
    network.settle();
    network.isolate("n3");
    const leader = network.tickUntilLeader(10 * electionTicks);
    network.proposeAll(leader, texts("b", 5));
    network.heal();
    network.tickAll(3 * electionTicks);
    const answers = network.trace.filter(
      ({ message }) => message.type === "vote-response" || message.type === "append-response",
    );
    expect(
      answers.filter(({ message }) => message.type === "vote-response").length,
    ).toBeGreaterThan(4);
    expect(
      answers.filter(({ message }) => message.type === "append-response").length,
    ).toBeGreaterThan(10);
    expect(answers.filter(({ afterPersist }) => !afterPersist)).toEqual([]);
  });
});
