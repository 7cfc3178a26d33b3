import { describe, expect, it } from "vitest";
import { type Balancer, balancerPolicies, createBalancer } from "../src/balancers.js";
import type { Instance } from "../src/types.js";

function instance(id: string, weight = 100): Instance {
  return {
    id,
    service: "api",
    address: "10.0.0.1",
    port: 8080,
    tags: [],
    meta: {},
    weight,
    version: "1.0.0",
    status: "passing",
    ttl: "10s",
    registeredAt: "2024-01-01T00:00:00.000Z",
    lastHeartbeatAt: "2024-01-01T00:00:00.000Z",
    createIndex: 1,
    modifyIndex: 1,
  };
}

/** Seeded uniform [0, 1). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function counts(balancer: Balancer, candidates: readonly Instance[], picks: number) {
  const byId = new Map<string, number>();
  for (let i = 0; i < picks; i++) {
    const id = balancer.pick(candidates)?.id ?? "none";
    byId.set(id, (byId.get(id) ?? 0) + 1);
  }
  return byId;
}

describe("every policy", () => {
  it("returns undefined for no candidates and only ever one of the candidates", () => {
    const pool = Array.from({ length: 8 }, (_, i) => instance(`i${i}`, 20 + i * 30));
    const random = mulberry32(1);
    for (const policy of balancerPolicies) {
      const balancer = createBalancer(policy, { random, now: () => 0 });
      expect(balancer.policy).toBe(policy);
      expect(balancer.pick(Object.freeze([]), "k")).toBeUndefined();
      for (let i = 0; i < 500; i++) {
        // A changing, frozen subset: instances come and go and the list must not be mutated.
        const candidates = Object.freeze(pool.filter(() => random() < 0.5));
        const picked = balancer.pick(candidates, `key-${i}`);
        if (candidates.length === 0) expect(picked).toBeUndefined();
        else expect(candidates).toContain(picked);
        if (picked !== undefined) {
          balancer.begin(picked.id);
          balancer.end(picked.id, 1 + random() * 50, random() < 0.9);
        }
      }
    }
  });

  it("rejects an unknown policy", () => {
    expect(() => createBalancer("fastest" as never)).toThrow(TypeError);
  });
});

describe("round-robin", () => {
  it("picks each of 4 instances exactly 2500 times in 10,000 picks, in rotation", () => {
    const candidates = ["a", "b", "c", "d"].map((id) => instance(id));
    const balancer = createBalancer("round-robin");
    const first = [0, 1, 2, 3, 4, 5, 6, 7].map(() => balancer.pick(candidates)?.id);
    expect(first.slice(4)).toEqual(first.slice(0, 4));
    expect(new Set(first).size).toBe(4);
    const byId = counts(balancer, candidates, 10_000);
    for (const id of ["a", "b", "c", "d"]) expect(byId.get(id)).toBe(2500);
  });
});

describe("weighted-round-robin", () => {
  it("gives nginx's smooth sequence for weights 5/1/1", () => {
    const candidates = [instance("a", 5), instance("b", 1), instance("c", 1)];
    const balancer = createBalancer("weighted-round-robin");
    const sequence = Array.from({ length: 14 }, () => balancer.pick(candidates)?.id).join("");
    expect(sequence).toBe("aabacaaaabacaa");
  });

  it.each([
    [100, 300, 600],
    [1, 2, 7],
    [250, 10, 740],
  ])("splits 10,000 picks within 1%% of weights %i/%i/%i", (...weights) => {
    const candidates = weights.map((weight, i) => instance(`i${i}`, weight));
    const total = weights.reduce((sum, weight) => sum + weight, 0);
    const byId = counts(createBalancer("weighted-round-robin"), candidates, 10_000);
    weights.forEach((weight, i) => {
      expect(Math.abs((byId.get(`i${i}`) ?? 0) / 10_000 - weight / total)).toBeLessThanOrEqual(
        0.01,
      );
    });
  });
});

describe("random", () => {
  it("follows the weights within 2 points over 10,000 seeded picks", () => {
    const weights = [100, 300, 600];
    const candidates = weights.map((weight, i) => instance(`i${i}`, weight));
    const byId = counts(createBalancer("random", { random: mulberry32(42) }), candidates, 10_000);
    weights.forEach((weight, i) => {
      expect(Math.abs((byId.get(`i${i}`) ?? 0) / 10_000 - weight / 1000)).toBeLessThan(0.02);
    });
  });
});

describe("least-outstanding", () => {
  it("picks the instance with the fewest calls in flight", () => {
    const candidates = ["a", "b", "c"].map((id) => instance(id));
    const balancer = createBalancer("least-outstanding", { random: mulberry32(7) });
    balancer.begin("a");
    balancer.begin("b");
    for (let i = 0; i < 10; i++) expect(balancer.pick(candidates)?.id).toBe("c");
    balancer.begin("c");
    balancer.begin("c");
    balancer.end("a", 10, true);
    expect(balancer.pick(candidates)?.id).toBe("a");
  });

  it("balances calls in flight once they end, breaking ties at random", () => {
    const candidates = ["a", "b", "c"].map((id) => instance(id));
    const balancer = createBalancer("least-outstanding", { random: mulberry32(7) });
    balancer.begin("a");
    balancer.end("a", 10, true);
    // Calls that stay in flight spread evenly.
    const inFlight = new Map<string, number>();
    for (let i = 0; i < 30; i++) {
      const id = balancer.pick(candidates)?.id ?? "none";
      balancer.begin(id);
      inFlight.set(id, (inFlight.get(id) ?? 0) + 1);
    }
    expect([...inFlight.values()]).toEqual([10, 10, 10]);
    for (const id of ["a", "b", "c"]) for (let i = 0; i < 10; i++) balancer.end(id, 10, true);
    // With nothing in flight every instance is a tie; a random winner, not always the first.
    const idle = counts(balancer, candidates, 3000);
    for (const id of ["a", "b", "c"]) expect(idle.get(id)).toBeGreaterThan(900);
  });
  it("keeps the state of an instance briefly away, and forgets one gone a while", () => {
    const [a, b, x] = ["a", "b", "x"].map((id) => instance(id)) as [Instance, Instance, Instance];
    const balancer = createBalancer("least-outstanding", { random: mulberry32(13) });
    // Calls whose end never comes, as when the caller lost track of them.
    for (let i = 0; i < 5; i++) balancer.begin("x");
    expect(counts(balancer, [a, b, x], 100).get("x")).toBeUndefined();
    counts(balancer, [a, b], 10);
    expect(counts(balancer, [a, b, x], 100).get("x")).toBeUndefined();
    counts(balancer, [a, b], 10_000);
    expect(counts(balancer, [a, b, x], 300).get("x")).toBeGreaterThan(50);
  });
});

describe("p2c", () => {
  /** Picks, then completes the call at once with the latency and outcome of the picked instance. */
  function run(
    balancer: Balancer,
    clock: { t: number },
    candidates: readonly Instance[],
    picks: number,
    behaviour: (id: string) => { latencyMs: number; ok: boolean },
  ): Map<string, number> {
    const byId = new Map<string, number>();
    for (let i = 0; i < picks; i++) {
      const picked = balancer.pick(candidates);
      if (picked === undefined) throw new Error("no pick");
      byId.set(picked.id, (byId.get(picked.id) ?? 0) + 1);
      const { latencyMs, ok } = behaviour(picked.id);
      balancer.begin(picked.id);
      clock.t += latencyMs;
      balancer.end(picked.id, latencyMs, ok);
    }
    return byId;
  }

  const candidates = ["fast1", "fast2", "other"].map((id) => instance(id));

  it("avoids a slow instance, and retries it once its latency has decayed", () => {
    const clock = { t: 0 };
    const balancer = createBalancer("p2c", { random: mulberry32(3), now: () => clock.t });
    const latency = (id: string) => ({ latencyMs: id === "other" ? 200 : 5, ok: true });
    const byId = run(balancer, clock, candidates, 2000, latency);
    expect(byId.get("other") ?? 0).toBeLessThan(200);
    expect(byId.get("fast1") ?? 0).toBeGreaterThan(600);
    expect(byId.get("fast2") ?? 0).toBeGreaterThan(600);
    // Ten half-lives later its 200 ms counts for less than the others' fresh 5 ms.
    clock.t += 100_000;
    expect(run(balancer, clock, candidates, 10, latency).get("other") ?? 0).toBeGreaterThan(0);
  });

  it("avoids an instance whose calls fail, however fast", () => {
    const clock = { t: 0 };
    const balancer = createBalancer("p2c", { random: mulberry32(5), now: () => clock.t });
    const byId = run(balancer, clock, candidates, 2000, (id) =>
      id === "other" ? { latencyMs: 1, ok: false } : { latencyMs: 5, ok: true },
    );
    expect(byId.get("other") ?? 0).toBeLessThan(200);
  });

  it("turns away from the fastest instance as soon as it starts failing", () => {
    const clock = { t: 0 };
    const balancer = createBalancer("p2c", { random: mulberry32(9), now: () => clock.t });
    const before = run(balancer, clock, candidates, 1000, (id) => ({
      latencyMs: id === "other" ? 2 : 5,
      ok: true,
    }));
    expect(before.get("other") ?? 0).toBeGreaterThan(500);
    const byId = run(balancer, clock, candidates, 1000, (id) =>
      id === "other" ? { latencyMs: 1, ok: false } : { latencyMs: 5, ok: true },
    );
    expect(byId.get("other") ?? 0).toBeLessThan(3);
  });

  it("weighs calls in flight", () => {
    const clock = { t: 0 };
    const balancer = createBalancer("p2c", { random: mulberry32(11), now: () => clock.t });
    const pair = [instance("a"), instance("b")];
    for (const id of ["a", "b"]) {
      balancer.begin(id);
      balancer.end(id, 10, true);
    }
    balancer.begin("a");
    for (let i = 0; i < 20; i++) expect(balancer.pick(pair)?.id).toBe("b");
  });
});

describe("consistent-hash", () => {
  const keys = Array.from({ length: 10_000 }, (_, i) => `user-${i}`);
  const ten = Array.from({ length: 10 }, (_, i) => instance(`node-${i}`));

  function mapping(balancer: Balancer, candidates: readonly Instance[]): string[] {
    return keys.map((key) => balancer.pick(candidates, key)?.id ?? "none");
  }

  it("moves only the keys of a removed instance, about a tenth of them, and back on return", () => {
    const balancer = createBalancer("consistent-hash");
    const before = mapping(balancer, ten);
    const removed = "node-3";
    const after = mapping(
      balancer,
      ten.filter((candidate) => candidate.id !== removed),
    );
    let moved = 0;
    before.forEach((id, i) => {
      if (id === after[i]) return;
      moved++;
      expect(id).toBe(removed);
    });
    expect(after).not.toContain(removed);
    expect(moved).toBe(before.filter((id) => id === removed).length);
    expect(moved).toBeGreaterThan(500);
    expect(moved).toBeLessThanOrEqual(1500);
    expect(mapping(balancer, ten)).toEqual(before);
  });

  it("maps a key to the same instance every time, in any balancer and any order", () => {
    const before = mapping(createBalancer("consistent-hash"), ten);
    expect(mapping(createBalancer("consistent-hash"), [...ten].reverse())).toEqual(before);
    expect(new Set(before).size).toBe(10);
  });

  it("gives an instance of weight 200 about twice the keys of one of weight 100", () => {
    const candidates = [instance("heavy", 200), ...ten.slice(0, 4)];
    const byId = new Map<string, number>();
    for (const id of mapping(createBalancer("consistent-hash"), candidates))
      byId.set(id, (byId.get(id) ?? 0) + 1);
    const light = (10_000 - (byId.get("heavy") ?? 0)) / 4;
    const ratio = (byId.get("heavy") ?? 0) / light;
    expect(ratio).toBeGreaterThanOrEqual(1.5);
    expect(ratio).toBeLessThanOrEqual(2.5);
  });

  it("needs a key", () => {
    const balancer = createBalancer("consistent-hash");
    expect(() => balancer.pick(ten)).toThrow(TypeError);
    expect(() => balancer.pick(ten)).toThrow(/key/);
  });
});
