import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { InstanceRef, RegistryCommand } from "../../../server/fsm/registry.js";
import { Lessor, type LessorOptions } from "../../../server/lessor.js";
import { Log, snapshotOf, spec } from "./registry-log.js";

const ttlMs = 10_000;
const checkpointIntervalMs = 2000;
const electionTimeoutMs = 1000;
/** A checkpoint interval plus the longest election timeout (capped at TTL / 2). */
const graceMs = checkpointIntervalMs + electionTimeoutMs;
const deregisterAfterMs = 30_000;
const tickMs = 100;

/** A leader's lessor over a registry, with a hand-driven clock; proposals apply at once. */
class Bench {
  readonly log = new Log();
  now = 0;
  readonly proposed: RegistryCommand[] = [];
  readonly preservation: boolean[] = [];
  readonly stalls: [number, number][] = [];
  readonly lessor: Lessor;

  constructor(overrides: Partial<LessorOptions> = {}) {
    this.lessor = this.newLessor(overrides);
  }

  newLessor(overrides: Partial<LessorOptions> = {}): Lessor {
    return new Lessor(this.log.fsm, { ...this.optionsFor(), ...overrides });
  }

  optionsFor(): LessorOptions {
    return {
      graceMs,
      checkpointIntervalMs,
      stallMs: electionTimeoutMs,
      deregisterAfterMs,
      selfPreservationThreshold: 0.5,
      selfPreservationMinInstances: 10,
      now: () => this.now,
      wallClock: () => 1_000_000 + this.now,
      propose: async (command) => {
        this.proposed.push(command);
        return this.log.apply(command);
      },
      onSelfPreservation: (engaged) => this.preservation.push(engaged),
      onEvicted: () => undefined,
      onStall: (gapMs, graced) => this.stalls.push([gapMs, graced]),
    };
  }

  register(lessor: Lessor, service: string, id: string, ttl = ttlMs): InstanceRef {
    this.log.apply({ op: "register", instance: spec(service, id, ttl), now: this.now });
    lessor.registered({ service, id });
    return { service, id };
  }

  /** Let time pass in ticks, heartbeating `alive` every second. */
  async run(lessor: Lessor, ms: number, alive: readonly InstanceRef[] = []): Promise<void> {
    for (let elapsed = 0; elapsed < ms; elapsed += tickMs) {
      this.now += tickMs;
      if (this.now % 1000 === 0) for (const ref of alive) this.heartbeat(lessor, ref);
      lessor.tick();
      // Let proposals settle, as committed entries would.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  heartbeat(lessor: Lessor, ref: InstanceRef): void {
    const outcome = lessor.heartbeat(ref, undefined, "");
    if (outcome.command !== undefined) {
      this.proposed.push(outcome.command);
      this.log.apply(outcome.command);
    }
  }

  status(ref: InstanceRef) {
    return this.log.fsm.instance(ref)?.effectiveStatus ?? "gone";
  }

  /** When (clock time) `ref` turns critical, running until `limit`. */
  async criticalAt(lessor: Lessor, ref: InstanceRef, limit: number): Promise<number | null> {
    while (this.now < limit) {
      await this.run(lessor, tickMs);
      if (this.status(ref) === "critical") return this.now;
    }
    return null;
  }
}

describe("TTL lessor", () => {
  it("keeps an instance that heartbeats, marks a silent one critical after its TTL and evicts it after deregisterAfter", async () => {
    const bench = new Bench();
    const lessor = bench.lessor;
    lessor.becomeLeader();
    const live = bench.register(lessor, "web", "live");
    const silent = bench.register(lessor, "web", "silent");
    await bench.run(lessor, ttlMs - tickMs, [live]);
    expect(bench.status(silent)).toBe("passing");
    await bench.run(lessor, 2 * tickMs, [live]);
    expect(bench.status(silent)).toBe("critical");
    await bench.run(lessor, deregisterAfterMs + 1000, [live]);
    expect(bench.status(silent)).toBe("gone");
    expect(bench.status(live)).toBe("passing");
    // Expirations are batched: never one entry per heartbeat.
    const kinds = bench.proposed.map((command) => command.op);
    expect(kinds.filter((op) => op === "expire")).toHaveLength(1);
    expect(kinds.filter((op) => op === "set-status")).toHaveLength(0);
  });

  it("a heartbeat after expiry revives the instance through one status change", async () => {
    const bench = new Bench();
    bench.lessor.becomeLeader();
    const ref = bench.register(bench.lessor, "web", "a");
    await bench.run(bench.lessor, ttlMs + 500);
    expect(bench.status(ref)).toBe("critical");
    bench.heartbeat(bench.lessor, ref);
    expect(bench.status(ref)).toBe("passing");
    await bench.run(bench.lessor, 2000, [ref]);
    expect(bench.status(ref)).toBe("passing");
  });

  it("a heartbeat that races the expiry entry revives the instance once the expiry commits", async () => {
    const bench = new Bench();
    const held: { command: RegistryCommand; commit: () => void }[] = [];
    const lessor = bench.newLessor({
      propose: async (command) => {
        if (command.op === "expire") {
          // Committed only when the test says so.
          return new Promise((resolve) =>
            held.push({ command, commit: () => resolve(bench.log.apply(command)) }),
          );
        }
        bench.proposed.push(command);
        return bench.log.apply(command);
      },
    });
    lessor.becomeLeader();
    const ref = bench.register(lessor, "web", "a");
    await bench.run(lessor, ttlMs + 200);
    expect(held).toHaveLength(1);
    bench.heartbeat(lessor, ref);
    // The expiry decided before the heartbeat commits after it.
    for (const { commit } of held) commit();
    expect(bench.status(ref)).toBe("critical");
    await bench.run(lessor, 3 * tickMs);
    expect(bench.status(ref)).toBe("passing");
  });

  it("a leader that could not run for longer than an election timeout expires nothing for a grace: the heartbeats it held up come first", async () => {
    const bench = new Bench();
    const lessor = bench.lessor;
    lessor.becomeLeader();
    const live = bench.register(lessor, "web", "live");
    const silent = bench.register(lessor, "web", "silent");
    // Runs out after the stall: it keeps its own countdown.
    const later = bench.register(lessor, "web", "later", 3 * ttlMs);
    const session = "00000000-0000-4000-8000-000000000001";
    bench.log.apply({
      op: "session-create",
      session: { id: session, name: "s", ttlMs, behavior: "release", lockDelayMs: 0, client: "c" },
      maxPerClient: 10,
    });
    lessor.renewSession(session);
    await bench.run(lessor, 5000, [live]);
    // Frozen for longer than the TTL: the heartbeats sent meanwhile wait in its sockets.
    bench.now += ttlMs + 500;
    const resumedAt = bench.now;
    lessor.tick();
    bench.heartbeat(lessor, live);
    lessor.renewSession(session);
    const silentAt = await bench.criticalAt(lessor, silent, resumedAt + ttlMs);
    expect(silentAt).toBe(resumedAt + graceMs);
    await bench.run(lessor, ttlMs / 2, [live]);
    expect(bench.status(live)).toBe("passing");
    expect(bench.log.fsm.locks.session(session)).toBeDefined();
    expect(bench.proposed.some((command) => command.op === "session-end")).toBe(false);
    // live, silent and the session ran out during the stall.
    expect(bench.stalls).toEqual([[ttlMs + 500, 3]]);
    expect(await bench.criticalAt(lessor, later, 4 * ttlMs)).toBe(3 * ttlMs);
    // A stall shorter than half the TTL cannot have held up every heartbeat: no grace.
    const short = bench.register(lessor, "web", "short");
    await bench.run(lessor, ttlMs - 2000);
    bench.now += 4000;
    const shortAt = bench.now;
    lessor.tick();
    expect(bench.stalls[1]).toEqual([4000, 0]);
    expect(await bench.criticalAt(lessor, short, shortAt + ttlMs)).toBe(shortAt + tickMs);
    // A gap within the election timeout is no stall.
    bench.now += electionTimeoutMs - tickMs;
    lessor.tick();
    expect(bench.stalls).toHaveLength(2);
  });

  it("a new leader resumes each countdown where the applied entries left it, after a grace", async () => {
    const bench = new Bench();
    const first = bench.lessor;
    const second = bench.newLessor();
    first.becomeLeader();
    const early = bench.register(first, "web", "early");
    await bench.run(first, 4000);
    const late = bench.register(first, "web", "late");
    const live = bench.register(first, "web", "live");
    // The checkpoint at 6 s records 4 s left for "early" and 8 s for "late"; "live" heartbeats.
    await bench.run(first, 2000 + tickMs, [live]);
    first.stepDown();
    // 1.5 s later another node, which applied the same entries, wins the election.
    bench.now += 1500;
    const promotedAt = bench.now;
    second.becomeLeader();
    // Time passed during the election: "early" ran out at 10 s, so the grace decides.
    const earlyAt = await bench.criticalAt(second, early, promotedAt + 2 * ttlMs);
    expect(earlyAt).toBe(promotedAt + graceMs);
    // "late" runs out at 14 s, as it would have on the old leader: not a fresh TTL.
    const lateAt = await bench.criticalAt(second, late, promotedAt + 2 * ttlMs);
    expect(lateAt).toBe(14_000);
    await bench.run(second, 2 * ttlMs, [live]);
    expect(bench.status(live)).toBe("passing");
    // The checkpoints carried each countdown's heartbeat time too.
    expect(bench.log.fsm.instance(live)?.lastHeartbeatAt).toBeGreaterThan(1_000_000 + promotedAt);
  });

  it("a node that applies the entries late (a restart, a snapshot) counts from the leader's clock", async () => {
    const bench = new Bench();
    bench.lessor.becomeLeader();
    const ref = bench.register(bench.lessor, "web", "silent");
    // Checkpoints at 2 s and 4 s leave 8 s and 6 s; then the leader dies.
    await bench.run(bench.lessor, 5000);
    bench.lessor.stepDown();
    const snapshot = snapshotOf(bench.log.fsm);
    // 7 s later a node that was down catches up: it replays the log, or installs a snapshot.
    bench.now = 12_000;
    const replayed = new Log();
    const restored = new Log();
    restored.fsm.restore(snapshot);
    const lessors = [replayed, restored].map((log) => {
      const lessor = new Lessor(log.fsm, {
        ...bench.optionsFor(),
        propose: async (c) => log.apply(c),
      });
      return { log, lessor };
    });
    replayed.apply({ op: "register", instance: spec("web", "silent"), now: 1_000_000 });
    for (const command of bench.proposed) replayed.apply(command);
    for (const { log, lessor } of lessors) {
      lessor.becomeLeader();
      let criticalAt: number | null = null;
      for (let now = bench.now; now < 30_000 && criticalAt === null; now += tickMs) {
        bench.now = now;
        lessor.tick();
        await new Promise((resolve) => setImmediate(resolve));
        if (log.fsm.instance(ref)?.effectiveStatus === "critical") criticalAt = now;
      }
      // The TTL ran out at 10 s: only the grace after the election holds it (not 6 s more).
      expect(criticalAt).toBe(12_000 + graceMs);
      bench.now = 12_000;
    }
  });

  it("a leader elected again is not held back by batches it proposed before it was deposed", async () => {
    const bench = new Bench();
    let hang = true;
    const lessor = bench.newLessor({
      // Proposals of the first leadership never come back, as on a partitioned leader.
      propose: (command) => {
        bench.proposed.push(command);
        return hang ? new Promise(() => undefined) : Promise.resolve(bench.log.apply(command));
      },
    });
    lessor.becomeLeader();
    const ref = bench.register(lessor, "web", "silent");
    await bench.run(lessor, ttlMs + tickMs);
    expect(bench.proposed.filter((command) => command.op === "expire")).toHaveLength(1);
    expect(bench.status(ref)).toBe("passing");
    lessor.stepDown();
    hang = false;
    lessor.becomeLeader();
    const criticalAt = await bench.criticalAt(lessor, ref, bench.now + 2 * graceMs);
    expect(criticalAt).not.toBeNull();
  });

  it("a failover never evicts an instance heartbeating at a third of a long TTL", async () => {
    const bench = new Bench();
    const first = bench.lessor;
    const second = bench.newLessor();
    first.becomeLeader();
    const ref = bench.register(first, "web", "a", 60_000);
    // Heartbeats at 25 s, 45 s, 65 s, ...
    let beat = -50;
    const heartbeatEvery20s = async (lessor: Lessor, ms: number) => {
      for (let t = 0; t < ms; t += tickMs) {
        bench.now += tickMs;
        if (++beat % 200 === 0) bench.heartbeat(lessor, ref);
        lessor.tick();
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await heartbeatEvery20s(first, 50_000);
    first.stepDown();
    bench.now += 1000;
    second.becomeLeader();
    await heartbeatEvery20s(second, 120_000);
    expect(bench.proposed.some((command) => command.op === "expire")).toBe(false);
    expect(bench.status(ref)).toBe("passing");
  });

  it("leaders replaced one after another cannot keep a silent instance alive", async () => {
    const bench = new Bench();
    const nodes = [bench.lessor, bench.newLessor(), bench.newLessor()];
    let lessor = bench.lessor;
    lessor.becomeLeader();
    const ref = bench.register(lessor, "web", "silent");
    const lastHeartbeat = bench.now;
    // Each leader stays two checkpoint intervals; each election takes one election timeout.
    let critical: number | null = null;
    for (let leaders = 1; critical === null && leaders < 20; leaders++) {
      critical = await bench.criticalAt(lessor, ref, bench.now + 2 * checkpointIntervalMs);
      if (critical !== null) break;
      lessor.stepDown();
      lessor = nodes[leaders % nodes.length] ?? lessor;
      await bench.run(lessor, electionTimeoutMs);
      lessor.becomeLeader();
    }
    // The TTL, or the last election plus the grace, whichever is later.
    const bound = ttlMs + graceMs + electionTimeoutMs;
    expect(critical).not.toBeNull();
    expect((critical ?? 0) - lastHeartbeat).toBeLessThanOrEqual(bound + tickMs);
  });

  it("self-preservation stops removals, not expiry, when most instances go silent at once, and releases when they return", async () => {
    const bench = new Bench();
    const lessor = bench.lessor;
    lessor.becomeLeader();
    const refs = Array.from({ length: 20 }, (_, i) => bench.register(lessor, "web", `i${i}`));
    const steady = refs.slice(0, 6);
    const silent = refs.slice(6);
    await bench.run(lessor, 2000, refs);
    // 14 of 20 stop heartbeating, for longer than their TTL and deregisterAfter together.
    await bench.run(lessor, ttlMs + deregisterAfterMs + 5000, steady);
    expect(bench.preservation).toEqual([true]);
    expect(lessor.selfPreservation()).toMatchObject({ engaged: true, total: 20, atRisk: 14 });
    // Critical, never reported as passing; but none removed.
    expect(silent.map((ref) => bench.status(ref))).toEqual(silent.map(() => "critical"));
    expect(steady.every((ref) => bench.status(ref) === "passing")).toBe(true);
    expect(bench.proposed.some((command) => command.op === "evict")).toBe(false);
    // They come back: passing again, released, nothing was evicted.
    await bench.run(lessor, 2000, refs);
    expect(bench.preservation).toEqual([true, false]);
    expect(refs.every((ref) => bench.status(ref) === "passing")).toBe(true);
    expect(bench.proposed.some((command) => command.op === "evict")).toBe(false);
  });

  it("never engages below the minimum number of instances, and obeys the operator's override", async () => {
    const small = new Bench();
    small.lessor.becomeLeader();
    const few = Array.from({ length: 5 }, (_, i) => small.register(small.lessor, "web", `i${i}`));
    await small.run(small.lessor, ttlMs + 500);
    expect(few.every((ref) => small.status(ref) === "critical")).toBe(true);

    const forcedOff = new Bench();
    forcedOff.log.apply({ op: "self-preservation", mode: "off" });
    forcedOff.lessor.becomeLeader();
    const many = Array.from({ length: 20 }, (_, i) =>
      forcedOff.register(forcedOff.lessor, "web", `i${i}`),
    );
    await forcedOff.run(forcedOff.lessor, ttlMs + 500);
    expect(many.every((ref) => forcedOff.status(ref) === "critical")).toBe(true);

    const forcedOn = new Bench();
    forcedOn.log.apply({ op: "self-preservation", mode: "on" });
    forcedOn.lessor.becomeLeader();
    const one = forcedOn.register(forcedOn.lessor, "web", "a");
    await forcedOn.run(forcedOn.lessor, ttlMs + deregisterAfterMs + 1000);
    expect(forcedOn.status(one)).toBe("critical");
    expect(forcedOn.lessor.selfPreservation()).toMatchObject({ mode: "on", engaged: true });
  });

  it("counts at risk what a look at every instance would, without looking at every instance", async () => {
    const action = fc.oneof(
      fc.record({
        op: fc.constant("register" as const),
        id: fc.nat(11),
        ttl: fc.constantFrom(2000, 5000),
      }),
      fc.record({ op: fc.constant("heartbeat" as const), id: fc.nat(11) }),
      fc.record({ op: fc.constant("deregister" as const), id: fc.nat(11) }),
      fc.record({ op: fc.constant("wait" as const), ticks: fc.integer({ min: 1, max: 15 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(action, { maxLength: 80 }), async (actions) => {
        const bench = new Bench({ selfPreservationThreshold: 2, deregisterAfterMs: 4000 });
        const lessor = bench.lessor;
        lessor.becomeLeader();
        const listAll = bench.log.fsm.allInstances;
        bench.log.fsm.allInstances = () => {
          throw new Error("a tick listed the whole registry");
        };
        /** When the lessor last restarted each live instance's countdown. */
        const renewedAt = new Map<string, number>();
        const expected = () =>
          listAll
            .call(bench.log.fsm)
            .filter(
              (instance) =>
                instance.expiredAt !== null ||
                bench.now - (renewedAt.get(instance.id) as number) >= instance.ttlMs / 2,
            ).length;
        for (const step of actions) {
          const ref = { service: "web", id: `i${"id" in step ? step.id : 0}` };
          if (step.op === "register") {
            bench.register(lessor, "web", ref.id, step.ttl);
            renewedAt.set(ref.id, bench.now);
          } else if (step.op === "heartbeat") {
            if (bench.status(ref) === "gone") continue;
            bench.heartbeat(lessor, ref);
            renewedAt.set(ref.id, bench.now);
          } else if (step.op === "deregister") {
            bench.log.apply({ op: "deregister", ...ref });
          } else {
            for (let tick = 0; tick < step.ticks; tick++) {
              await bench.run(lessor, tickMs);
              expect(lessor.selfPreservation().atRisk).toBe(expected());
              expect(lessor.selfPreservation().total).toBe(listAll.call(bench.log.fsm).length);
            }
          }
        }
      }),
      { numRuns: 60 },
    );
  });

  it("a checkpoint carries the countdowns renewed since a committed one last did, and a lost one is carried again", async () => {
    const bench = new Bench();
    let refuse = 0;
    const checkpoints: string[][] = [];
    const lessor = bench.newLessor({
      propose: async (command) => {
        if (command.op === "checkpoint") {
          checkpoints.push(command.ttls.map((ttl) => ttl.id));
          if (refuse-- > 0) throw new Error("leadership lost");
        }
        bench.proposed.push(command);
        return bench.log.apply(command);
      },
    });
    lessor.becomeLeader();
    const live = bench.register(lessor, "web", "live");
    bench.register(lessor, "web", "silent");
    await bench.run(lessor, 3 * checkpointIntervalMs, [live]);
    expect(checkpoints).toEqual([["live", "silent"], ["live"], ["live"]]);
    // Not committed: what it carried is carried next time.
    bench.register(lessor, "web", "late");
    refuse = 1;
    await bench.run(lessor, 2 * checkpointIntervalMs, [live]);
    expect(checkpoints.slice(3)).toEqual([
      ["live", "late"],
      ["live", "late"],
    ]);
  });

  it("an entry that restarts a countdown without the lessor is carried by the next checkpoint, and a new lease counts from it", async () => {
    const bench = new Bench();
    const checkpoints: string[][] = [];
    const lessor = bench.newLessor({
      propose: async (command) => {
        if (command.op === "checkpoint") checkpoints.push(command.ttls.map((ttl) => ttl.id));
        bench.proposed.push(command);
        return bench.log.apply(command);
      },
    });
    lessor.becomeLeader();
    const a = bench.register(lessor, "web", "a");
    const b = bench.register(lessor, "web", "b");
    await bench.run(lessor, ttlMs + 500, [a]);
    expect(bench.status(b)).toBe("critical");
    // Committed, but the writers never heard back (a timeout): the lessor renewed nothing.
    bench.log.apply({ op: "set-status", ...a, status: "warning", output: "", now: 1_000_000 });
    const again = bench.now;
    bench.log.apply({ op: "register", instance: spec("web", "b"), now: 1_000_000 + again });
    const carried = checkpoints.length;
    await bench.run(lessor, checkpointIntervalMs);
    expect(checkpoints.slice(carried).flat()).toEqual(expect.arrayContaining(["a", "b"]));
    // b counts a whole TTL from its registration, not from its last life.
    const criticalAt = await bench.criticalAt(lessor, b, again + 2 * ttlMs);
    expect(criticalAt).not.toBeNull();
    expect((criticalAt as number) - again).toBeGreaterThanOrEqual(ttlMs);
  });
});
