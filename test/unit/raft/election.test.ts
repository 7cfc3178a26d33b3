import { describe, expect, it } from "vitest";
import type { Message } from "../../../raft/core/types.js";
import { electionTicks, Network, sentOfType } from "./harness.js";

function voteRequest(from: string, to: string, term: number, lastIndex: number, lastTerm: number) {
  return { type: "vote", from, to, term, lastIndex, lastTerm, transfer: false } as const;
}

function voteAnswer(network: Network, from: string, to: string) {
  return sentOfType(network, "vote-response").filter((m) => m.from === from && m.to === to);
}

describe("Raft §5.2: a follower that hears nothing starts an election", () => {
  it("campaigns after a randomized timeout between electionTicks and 2 * electionTicks - 1", () => {
    const timeouts = new Set<number>();
    for (let seed = 1; seed <= 20; seed++) {
      const network = new Network(3, { seed });
      network.settle();
      let ticks = 0;
      while (network.status("n1").role === "follower" && ticks < 2 * electionTicks) {
        network.tick("n1");
        ticks++;
      }
      expect(network.status("n1")).toMatchObject({ role: "candidate", term: 2, vote: "n1" });
      expect(ticks).toBeGreaterThanOrEqual(electionTicks);
      expect(ticks).toBeLessThanOrEqual(2 * electionTicks - 1);
      timeouts.add(ticks);
    }
    expect(timeouts.size).toBeGreaterThan(3);
  });

  it("votes for itself, persists that vote and asks every other voter with its last index and term", () => {
    const network = new Network(3);
    network.settle();
    network.campaign("n1");
    const ready = network.process("n1");
    expect(ready?.hardState).toEqual({ term: 2, vote: "n1", commit: 1 });
    const requests = ready?.messagesAfterPersist.filter((m) => m.type === "vote");
    expect(requests).toEqual([voteRequest("n1", "n2", 2, 1, 1), voteRequest("n1", "n3", 2, 1, 1)]);
  });

  it("does not campaign while it hears heartbeats from a leader", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.tickAll(5 * electionTicks);
    expect(network.leaders()).toEqual(["n1"]);
    for (const id of network.ids())
      expect(network.status(id)).toMatchObject({ term: 2, leader: "n1" });
  });
});

describe("Raft §5.2: each server votes for at most one candidate per term", () => {
  it("grants the first candidate of a term and refuses the second", () => {
    const network = new Network(3);
    network.settle();
    network.campaign("n1");
    network.campaign("n3");
    network.settle();
    expect(voteAnswer(network, "n2", "n1").map((m) => m.granted)).toEqual([true]);
    expect(voteAnswer(network, "n2", "n3").map((m) => m.granted)).toEqual([false]);
    expect(network.leaders()).toEqual(["n1"]);
    expect(network.status("n3")).toMatchObject({ role: "follower", term: 2, leader: "n1" });
  });

  it("remembers its vote across a crash and refuses another candidate of the same term", () => {
    const network = new Network(3);
    network.isolate("n3");
    network.electLeader("n1");
    network.crash("n2");
    network.restart("n2");
    expect(network.status("n2")).toMatchObject({ term: 2, vote: "n1", leader: null });
    network.inject(voteRequest("n3", "n2", 2, 100, 2));
    network.heal();
    network.settle();
    expect(voteAnswer(network, "n2", "n3").map((m) => m.granted)).toEqual([false]);
  });
});

describe("Raft §5.2: a candidate wins with votes from a majority", () => {
  it("wins with 3 of 5 votes", () => {
    const network = new Network(5);
    network.isolate("n4");
    network.isolate("n5");
    network.electLeader("n1");
    expect(network.status("n1")).toMatchObject({ role: "leader", term: 2 });
  });

  it("does not win with 2 of 5 votes, however many times it tries", () => {
    const network = new Network(5);
    network.settle();
    for (const id of ["n3", "n4", "n5"]) network.isolate(id);
    for (let election = 0; election < 4; election++) {
      network.campaign("n1");
      network.settle();
    }
    expect(network.status("n1")).toMatchObject({ role: "candidate", term: 5 });
    expect(network.leaders()).toEqual([]);
  });

  it("after a split vote nobody leads, and a new election in the next term elects a leader", () => {
    const network = new Network(4);
    network.settle();
    network.campaign("n1");
    network.campaign("n2");
    // n3 hears only n1 and n4 hears only n2: two votes each, three are needed.
    network.cutOneWay("n1", "n4");
    network.cutOneWay("n2", "n3");
    network.settle();
    expect(network.leaders()).toEqual([]);
    expect(network.status("n1")).toMatchObject({ role: "candidate", term: 2 });
    expect(network.status("n2")).toMatchObject({ role: "candidate", term: 2 });

    network.heal();
    network.campaign("n1");
    network.settle();
    expect(network.leaders()).toEqual(["n1"]);
    expect(network.status("n1").term).toBe(3);
    expect(network.status("n2")).toMatchObject({ role: "follower", term: 3, leader: "n1" });
  });
});

describe("Raft §5.2: terms order leaders", () => {
  it("a candidate that receives AppendEntries from a leader of its term becomes its follower", () => {
    const network = new Network(3);
    network.settle();
    network.campaign("n1");
    network.campaign("n3");
    expect(network.status("n3")).toMatchObject({ role: "candidate", term: 2 });
    // n3's vote requests and answers are lost; n1 wins with n2 and sends its no-op entry to n3.
    network.cutOneWay("n3", "n1");
    network.cutOneWay("n3", "n2");
    network.settle();
    expect(network.leaders()).toEqual(["n1"]);
    expect(network.status("n3")).toMatchObject({ role: "follower", term: 2, leader: "n1" });
    expect(network.status("n3").lastIndex).toBe(network.status("n1").lastIndex);
  });

  it.each(["leader", "candidate"] as const)(
    "a %s that sees a higher term becomes a follower of that term",
    (role) => {
      const network = new Network(3);
      if (role === "leader") network.electLeader("n1");
      else {
        network.settle();
        network.campaign("n1");
      }
      expect(network.status("n1").role).toBe(role);
      const higher: Message = voteRequest("n3", "n1", 7, 100, 6);
      network.inject(higher);
      expect(network.status("n1")).toMatchObject({ role: "follower", term: 7, vote: "n3" });
    },
  );

  it("a deposed leader steps down when a follower answers its heartbeat with a newer term", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n1");
    network.electLeader("n2");
    network.heal();
    network.tick("n1");
    network.settle();
    expect(network.status("n1")).toMatchObject({ role: "follower", term: 3 });
    network.tickAll();
    expect(network.leaders()).toEqual(["n2"]);
    expect(network.logTerms("n1")).toEqual(network.logTerms("n2"));
  });
});
