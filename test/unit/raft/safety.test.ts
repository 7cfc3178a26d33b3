import { describe, expect, it } from "vitest";
import { bootstrapState, Raft } from "../../../raft/core/raft.js";
import type { Entry, PlantedBug } from "../../../raft/core/types.js";
import { Prng } from "../../sim/prng.js";
import { Network, raftOptions, texts } from "./harness.js";

/** A follower in term 2 whose log is [1: term 1, 2: term 2, 3: term 2]. */
function followerWithLog(plantedBug?: PlantedBug): Raft {
  const [bootstrap] = bootstrapState(["n1", "n2", "n3"]).entries;
  if (bootstrap === undefined) throw new Error("bootstrap state has no entry");
  const entries: Entry[] = [
    bootstrap,
    { type: "noop", term: 2, index: 2 },
    { type: "normal", term: 2, index: 3, data: new Uint8Array([1]) },
  ];
  const options = raftOptions("n1", new Prng(1), plantedBug === undefined ? {} : { plantedBug });
  const raft = new Raft(options, {
    hardState: { term: 2, vote: null, commit: 3 },
    snapshot: null,
    entries,
  });
  raft.advance(raft.ready());
  return raft;
}

function voteGranted(raft: Raft, lastIndex: number, lastTerm: number): boolean | undefined {
  raft.step({ type: "vote", from: "n2", to: "n1", term: 3, lastIndex, lastTerm, transfer: false });
  const answer = raft.ready().messagesAfterPersist.find((m) => m.type === "vote-response");
  return answer?.type === "vote-response" ? answer.granted : undefined;
}

describe("Raft §5.4.1: election restriction", () => {
  it.each([
    { lastTerm: 1, lastIndex: 10, granted: false, why: "an older last term, however long" },
    { lastTerm: 2, lastIndex: 2, granted: false, why: "the same last term but shorter" },
    { lastTerm: 2, lastIndex: 3, granted: true, why: "the same last term and length" },
    { lastTerm: 2, lastIndex: 4, granted: true, why: "the same last term and longer" },
    { lastTerm: 3, lastIndex: 2, granted: true, why: "a newer last term, though shorter" },
  ])("a voter whose log ends at (3, term 2) answers $granted to a log with $why", (row) => {
    expect(voteGranted(followerWithLog(), row.lastIndex, row.lastTerm)).toBe(row.granted);
  });

  it("catches a voter that skips the log check (planted bug)", () => {
    expect(voteGranted(followerWithLog("vote-without-log-check"), 10, 1)).toBe(true);
  });

  it("a node that missed committed entries is refused by the voters that hold them", () => {
    const network = new Network(3);
    network.electLeader("n1");
    network.isolate("n3");
    network.proposeAll("n1", texts("committed", 3));
    network.crash("n1");
    network.heal();
    for (let election = 0; election < 3; election++) {
      network.campaign("n3");
      network.settle();
    }
    expect(network.leaders()).toEqual([]);
    const answers = network.trace
      .map((sent) => sent.message)
      .filter((m) => m.type === "vote-response" && m.from === "n2" && m.to === "n3");
    expect(answers.length).toBe(3);
    expect(answers.every((m) => m.type === "vote-response" && !m.granted)).toBe(true);
    network.electLeader("n2");
    network.tickAll();
    expect(network.texts("n3")).toEqual(texts("committed", 3));
  });
});

/**
 * The paper's Figure 8, with index 2 as the contested entry (index 1 is the bootstrap
 * configuration). One entry per append, so that index 2 can travel without index 3.
 */
function figure8UpToC(plantedBug?: PlantedBug): Network {
  const network = new Network(5, { maxEntriesPerAppend: 1, ...(plantedBug ? { plantedBug } : {}) });
  // (a) n1 leads term 2; its entry at index 2 reaches n2 only.
  network.dropIf((m) => m.type === "append" && m.from === "n1" && m.to !== "n2");
  network.electLeader("n1");
  expect(network.status("n1")).toMatchObject({ term: 2, lastIndex: 2, commit: 1 });
  expect(network.raft("n2").termAt(2)).toBe(2);

  // (b) n1 crashes; n5 wins term 3 with n3 and n4; its entry at index 2 reaches nobody.
  network.crash("n1");
  network.dropIf((m) => m.type === "append" && m.from === "n5");
  network.electLeader("n5");
  expect(network.status("n5")).toMatchObject({ term: 3, lastIndex: 2 });
  network.crash("n5");

  // (c) n1 restarts and wins term 4. Index 2 (term 2) reaches n3 and n4, so it is on a
  // majority, but n1's own entry at index 3 reaches nobody.
  network.heal();
  network.restart("n1");
  network.dropIf(
    (m) =>
      m.type === "append" &&
      m.entries.some((entry) => entry.index === 3) &&
      network.status(m.to).lastIndex >= 2,
  );
  network.electLeader("n1");
  expect(network.status("n1")).toMatchObject({ role: "leader", term: 4, lastIndex: 3 });
  for (const id of ["n1", "n2", "n3", "n4"]) expect(network.raft(id).termAt(2)).toBe(2);
  return network;
}

describe("Raft §5.4.2: committing entries from previous terms (Figure 8)", () => {
  it("a leader does not commit an entry of an earlier term by counting its replicas", () => {
    const network = figure8UpToC();
    expect(network.status("n1").commit).toBe(1);
  });

  it("catches a leader that commits by counting replicas of an earlier term (planted bug)", () => {
    const network = figure8UpToC("commit-previous-term");
    expect(network.status("n1").commit).toBe(2);
  });

  it("(d) the uncommitted entry may then be replaced by a leader of a later term, and was never applied", () => {
    const network = figure8UpToC();
    network.crash("n1");
    network.heal();
    network.restart("n5");
    network.electLeader("n5");
    network.tickAll();
    for (const id of ["n2", "n3", "n4", "n5"]) {
      expect(network.raft(id).termAt(2)).toBe(3);
      expect(network.status(id).commit).toBeGreaterThanOrEqual(3);
    }
    for (const id of network.ids()) {
      expect(network.applied(id).some((entry) => entry.index === 2 && entry.term === 2)).toBe(
        false,
      );
    }
  });

  it("(d) with the planted bug the overwritten entry had been applied: the harness reports it", () => {
    const network = figure8UpToC("commit-previous-term");
    network.crash("n1");
    network.heal();
    network.restart("n5");
    expect(() => {
      network.electLeader("n5");
      network.tickAll();
    }).toThrow(/state machine safety/);
  });

  it("(e) once an entry of its own term is on a majority, both commit and n5 can no longer win", () => {
    const network = figure8UpToC();
    network.heal();
    network.tickAll();
    expect(network.status("n1").commit).toBe(3);
    const appliedSinceRestart = network.applied("n1").slice(-2);
    expect(appliedSinceRestart.map((entry) => `${entry.index}:${entry.term}`)).toEqual([
      "2:2",
      "3:4",
    ]);
    network.crash("n1");
    network.restart("n5");
    network.settle();
    for (let election = 0; election < 3; election++) {
      network.campaign("n5");
      network.settle();
      expect(network.status("n5").role).not.toBe("leader");
    }
    const leader = network.tickUntilLeader();
    expect(["n2", "n3", "n4"]).toContain(leader);
    expect(network.raft(leader).termAt(2)).toBe(2);
  });
});

describe("Raft §5.4.2 and §8: a new leader's no-op entry", () => {
  it("a new leader appends a no-op of its term, which commits the earlier entries it holds", () => {
    const network = new Network(5);
    network.electLeader("n1");
    for (const id of ["n3", "n4", "n5"]) network.cut("n1", id);
    network.proposeAll("n1", ["x"]);
    expect(network.texts("n2")).toEqual([]);
    network.crash("n1");
    network.heal();
    network.electLeader("n2");
    const last = network.entries("n2").at(-1);
    expect(last).toMatchObject({ type: "noop", term: 3 });
    network.tickAll();
    for (const id of ["n2", "n3", "n4", "n5"]) expect(network.texts(id)).toEqual(["x"]);
  });
});

describe("Raft §5.4.3: committed entries never change", () => {
  it.each([1, 2, 3, 4, 5, 6])(
    "through seeded crashes, partitions, compactions and elections (seed %i)",
    (seed) => {
      const network = new Network(5, { seed, preVote: true, checkQuorum: true });
      const random = new Prng(seed);
      const crashed = new Set<string>();
      let proposals = 0;
      for (let step = 0; step < 300; step++) {
        const id = random.pick(network.ids());
        switch (random.int(10)) {
          case 0:
            if (!crashed.has(id) && crashed.size < 2) {
              network.crash(id);
              crashed.add(id);
            }
            break;
          case 1:
            if (crashed.has(id)) {
              network.restart(id);
              crashed.delete(id);
            }
            break;
          case 2:
            network.isolate(id);
            break;
          case 3:
            network.heal();
            break;
          case 4:
            if (!crashed.has(id) && network.status(id).applied >= network.status(id).firstIndex) {
              network.compact(id);
            }
            break;
          default:
            break;
        }
        if (random.chance(0.5)) {
          for (const leader of network.leaders()) network.propose(leader, `v${proposals++}`);
        }
        network.tickAll();
      }
      network.heal();
      for (const id of crashed) network.restart(id);
      const leader = network.tickUntilLeader();
      network.proposeAll(leader, ["final"]);
      network.tickAll(3);
      for (const id of network.ids()) {
        expect(network.texts(id)).toEqual(network.texts(leader));
        expect(network.texts(id).at(-1)).toBe("final");
      }
      expect(proposals).toBeGreaterThan(50);
    },
  );
});
