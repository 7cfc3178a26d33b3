import { describe, expect, it } from "vitest";
import {
  type CheckResult,
  checkOperations,
  type Model,
  type Operation,
  type RegisterInput,
  type RegisterOutput,
  registerModel,
} from "./linearizability.js";

type Op = Operation<RegisterInput, RegisterOutput>;

/** mulberry32: a small seeded PRNG, floats in [0, 1). */
function mulberry32(seed: number): () => number {
  let a: number = seed >>> 0;
  return (): number => {
    a = (a + 0x6d2b79f5) | 0;
    let t: number = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function put(client: number, key: string, value: string, call: number, ret: number): Op {
  return { client, input: { op: "put", key, value }, output: { value: null }, call, return: ret };
}

function del(client: number, key: string, call: number, ret: number): Op {
  return { client, input: { op: "delete", key }, output: { value: null }, call, return: ret };
}

function read(client: number, key: string, value: string | null, call: number, ret: number): Op {
  return { client, input: { op: "read", key }, output: { value }, call, return: ret };
}

function check(history: readonly Op[], timeoutMs?: number): CheckResult {
  return checkOperations(registerModel, history, { timeoutMs: timeoutMs ?? 10_000 });
}

interface Plan {
  readonly clients: number;
  readonly opsPerClient: number;
  readonly keys: number;
  /** The chance that an operation times out (return = Infinity). */
  readonly indeterminate: number;
}

interface Planned {
  readonly client: number;
  readonly input: RegisterInput;
  readonly call: number;
  readonly return: number;
  /** The linearization point; undefined for a timed-out operation that never took effect. */
  readonly point: number | undefined;
}

/**
 * A linearizable history by construction: each operation gets a linearization point inside
 * [call, return] (timed-out ones: any time after call, or never), and outputs come from running
 * a sequential register in point order. Integer times, so intervals often touch. Values are
 * unique per seed, so a value can only be seen on the key it was put to.
 */
function generateHistory(seed: number, plan: Plan): Op[] {
  const random: () => number = mulberry32(seed);
  const int = (bound: number): number => Math.floor(random() * bound);
  const planned: Planned[] = [];
  let values = 0;
  for (let client = 0; client < plan.clients; client++) {
    let t: number = int(5);
    for (let i = 0; i < plan.opsPerClient; i++) {
      const key = `k${int(plan.keys)}`;
      const roll: number = random();
      const input: RegisterInput =
        roll < 0.4
          ? { op: "put", key, value: `s${seed}-v${values++}` }
          : roll < 0.55
            ? { op: "delete", key }
            : { op: "read", key };
      const call: number = t + int(4);
      if (random() < plan.indeterminate) {
        // Took effect at some time after the call, possibly after the client gave up, or never.
        const point: number | undefined = random() < 0.5 ? call + int(60) : undefined;
        planned.push({ client, input, call, return: Infinity, point });
        t = call + 20;
      } else {
        const point: number = call + int(5);
        const ret: number = point + int(5);
        planned.push({ client, input, call, return: ret, point });
        t = ret;
      }
    }
  }
  const register = new Map<string, string>();
  const seen = new Map<Planned, string | null>();
  const effective: Planned[] = planned.filter((p: Planned): boolean => p.point !== undefined);
  effective.sort((a: Planned, b: Planned): number => (a.point ?? 0) - (b.point ?? 0));
  for (const p of effective) {
    if (p.input.op === "put") register.set(p.input.key, p.input.value);
    else if (p.input.op === "delete") register.delete(p.input.key);
    else seen.set(p, register.get(p.input.key) ?? null);
  }
  const history: Op[] = planned.map(
    (p: Planned): Op => ({
      client: p.client,
      input: p.input,
      output: { value: seen.get(p) ?? null },
      call: p.call,
      return: p.return,
    }),
  );
  // The checker must not depend on the order operations are listed in.
  for (let i = history.length - 1; i > 0; i--) {
    const j: number = int(i + 1);
    [history[i], history[j]] = [history[j] as Op, history[i] as Op];
  }
  return history;
}

type Mutation = "never written" | "other key" | "future put";

/**
 * One completed read changed to a value it cannot have seen: one never written, one put only
 * to other keys, or one put to its key by a put called after the read returned (values are
 * unique, so each is impossible).
 */
function mutate(history: readonly Op[], seed: number): { history: Op[]; mutation: Mutation } {
  const random: () => number = mulberry32(seed ^ 0x5bd1e995);
  const reads: number[] = [];
  history.forEach((op: Op, i: number): void => {
    if (op.input.op === "read" && op.return !== Infinity) reads.push(i);
  });
  const index: number | undefined = reads[Math.floor(random() * reads.length)];
  if (index === undefined) throw new Error(`history ${seed} has no completed read`);
  const target = history[index] as Op;
  const putValues = (keep: (op: Op) => boolean): string[] =>
    history.flatMap((op: Op): string[] =>
      op.input.op === "put" && keep(op) ? [op.input.value] : [],
    );
  const choices: Record<Mutation, string[]> = {
    "never written": [`never-${seed}`],
    "other key": putValues((op: Op): boolean => op.input.key !== target.input.key),
    "future put": putValues(
      (op: Op): boolean => op.input.key === target.input.key && op.call > target.return,
    ),
  };
  const wanted: Mutation = (["never written", "other key", "future put"] as const)[
    seed % 3
  ] as Mutation;
  const mutation: Mutation = choices[wanted].length > 0 ? wanted : "never written";
  const options: string[] = choices[mutation];
  const value = options[Math.floor(random() * options.length)] as string;
  const mutated: Op[] = history.slice();
  mutated[index] = { ...target, output: { value } };
  return { history: mutated, mutation };
}

const small: Plan = { clients: 5, opsPerClient: 40, keys: 3, indeterminate: 0 };
const smallWithTimeouts: Plan = { ...small, indeterminate: 0.05 };
const seeds: number[] = Array.from({ length: 200 }, (_: unknown, i: number): number => i + 1);

describe("linearizable histories pass", () => {
  it("sequential put, read, delete, read", () => {
    expect(
      check([
        put(1, "k", "a", 0, 10),
        read(1, "k", "a", 20, 30),
        del(2, "k", 40, 50),
        read(1, "k", null, 60, 70),
      ]),
    ).toEqual({ result: "ok" });
  });

  it("a read concurrent with a put sees the old or the new value", () => {
    for (const seen of [null, "a"]) {
      expect(check([put(1, "k", "a", 0, 10), read(2, "k", seen, 5, 15)])).toEqual({
        result: "ok",
      });
    }
  });

  it("a read concurrent with two puts sees either", () => {
    for (const seen of ["a", "b"]) {
      const history: Op[] = [
        put(0, "k", "init", 0, 1),
        put(1, "k", "a", 10, 30),
        put(2, "k", "b", 12, 28),
        read(3, "k", seen, 15, 25),
      ];
      expect(check(history)).toEqual({ result: "ok" });
    }
  });

  it("after two concurrent puts, a later read sees either", () => {
    // Both orders of the puts reach the same set of linearized ops in different states.
    for (const seen of ["a", "b"]) {
      const history: Op[] = [
        put(1, "k", "a", 0, 10),
        put(2, "k", "b", 0, 10),
        read(3, "k", seen, 20, 30),
      ];
      expect(check(history)).toEqual({ result: "ok" });
    }
  });

  it("an operation called at the instant another returns is concurrent with it", () => {
    expect(check([put(1, "k", "a", 0, 10), read(2, "k", null, 10, 20)])).toEqual({
      result: "ok",
    });
    expect(check([put(1, "k", "a", 0, 10), read(2, "k", null, 11, 20)]).result).toBe("illegal");
  });

  it("200 random histories of 5 clients x 40 ops over 3 keys", () => {
    for (const seed of seeds) {
      expect(check(generateHistory(seed, small)), `seed ${seed}`).toEqual({ result: "ok" });
    }
  });
});

describe("non-linearizable histories are illegal", () => {
  it("a stale read after a completed put", () => {
    const result: CheckResult = check([put(1, "k", "a", 0, 10), read(2, "k", null, 20, 30)]);
    expect(result).toMatchObject({ result: "illegal", partition: 0, longestPrefix: 1 });
    if (result.result !== "illegal") return;
    expect(result.explanation).toContain("partition 0");
    expect(result.explanation).toContain('{"op":"read","key":"k"} -> {"value":null} [20, 30]');
    expect(result.explanation).toContain('state "a"');
  });

  it("two sequential reads going back in time", () => {
    const history: Op[] = [
      put(1, "k", "a", 0, 10),
      put(1, "k", "b", 20, 100),
      read(2, "k", "b", 30, 40),
      read(2, "k", "a", 50, 60),
    ];
    expect(check(history).result).toBe("illegal");
  });

  it("a read of a value never written", () => {
    expect(check([put(1, "k", "a", 0, 10), read(2, "k", "z", 5, 15)]).result).toBe("illegal");
  });

  it("a read of a deleted value after the delete returned", () => {
    const history: Op[] = [put(1, "k", "a", 0, 10), del(1, "k", 20, 30), read(2, "k", "a", 40, 50)];
    expect(check(history).result).toBe("illegal");
  });

  it("reads by different clients see new then old while a write is in flight", () => {
    const history: Op[] = [
      put(0, "k", "old", 0, 5),
      put(1, "k", "new", 10, 100),
      read(2, "k", "new", 20, 30),
      read(3, "k", "old", 40, 50),
    ];
    expect(check(history).result).toBe("illegal");
  });

  it("reads by different clients order two overlapping writes both ways", () => {
    const history: Op[] = [
      put(1, "k", "a", 10, 100),
      put(2, "k", "b", 10, 100),
      read(3, "k", "a", 20, 30),
      read(4, "k", "b", 35, 45),
      read(5, "k", "a", 50, 60),
    ];
    expect(check(history).result).toBe("illegal");
  });

  it("each of the 200 random histories with one read changed to an impossible value", () => {
    const used = new Set<Mutation>();
    for (const seed of seeds) {
      const { history, mutation } = mutate(generateHistory(seed, small), seed);
      used.add(mutation);
      expect(check(history).result, `seed ${seed}, ${mutation}`).toBe("illegal");
    }
    expect(used.size).toBe(3);
  });
});

describe("indeterminate operations", () => {
  it("a timed-out put whose value is later read", () => {
    expect(check([put(1, "k", "a", 0, Infinity), read(2, "k", "a", 50, 60)])).toEqual({
      result: "ok",
    });
  });

  it("a timed-out put never read", () => {
    const history: Op[] = [
      put(1, "k", "a", 0, Infinity),
      read(2, "k", null, 50, 60),
      read(2, "k", null, 70, 80),
    ];
    expect(check(history)).toEqual({ result: "ok" });
  });

  it("many timed-out puts that no read saw are checked at once", () => {
    const history: Op[] = [put(0, "k", "first", 0, 5)];
    // 200 writes of unknown outcome, all concurrent: every order and subset would be tried.
    for (let i = 1; i <= 200; i++) history.push(put(i, "k", `lost${i}`, 10, Infinity));
    history.push(read(300, "k", "first", 20, 30), read(301, "k", null, 40, 50));
    expect(check(history)).toMatchObject({ result: "illegal" });
    history.push(del(302, "k", 35, 36));
    expect(check(history, 1000)).toEqual({ result: "ok" });
  });

  it("many timed-out deletes and a late read of a timed-out put are checked at once", () => {
    // 30 deletes of unknown outcome, any subset of which may have landed anywhere, and a put
    // of unknown outcome that must have landed after 30 acknowledged puts.
    const history: Op[] = [];
    for (let i = 0; i < 30; i++) history.push(del(i, "k", 0, Infinity));
    history.push(put(30, "k", "late", 0, Infinity));
    for (let j = 0; j < 30; j++) {
      history.push(put(31, "k", `v${j}`, 10 * j + 1, 10 * j + 2));
      history.push(read(32, "k", `v${j}`, 10 * j + 3, 10 * j + 4));
    }
    history.push(read(33, "k", "late", 1000, 1001));
    expect(check(history)).toEqual({ result: "ok" });
    history.push(read(33, "k", "v29", 1002, 1003));
    expect(check(history)).toMatchObject({ result: "illegal" });
  });

  it("timed-out deletes each land at most once, wherever they are needed", () => {
    const history: Op[] = [
      put(1, "k", "a", 0, 1),
      del(2, "k", 2, Infinity),
      read(3, "k", null, 4, 5),
      put(1, "k", "b", 6, 7),
      read(3, "k", null, 8, 9),
    ];
    // One timed-out delete cannot empty the key twice.
    expect(check(history)).toMatchObject({ result: "illegal" });
    // A second one can, though it was called after the first.
    expect(check([...history, del(4, "k", 3, Infinity)])).toEqual({ result: "ok" });
    // One called only after the last read returned cannot be what that read saw.
    expect(check([...history, del(4, "k", 10, Infinity)])).toMatchObject({ result: "illegal" });
  });

  it("a timed-out put whose value a read saw still counts, before and after other writes", () => {
    const history: Op[] = [
      put(1, "k", "seen", 0, Infinity),
      put(2, "k", "lost", 0, Infinity),
      put(3, "k", "b", 10, 20),
      read(4, "k", "seen", 30, 40),
      read(4, "k", "b", 50, 60),
    ];
    // "seen" landed after "b", and "b" was read later still: impossible.
    expect(check(history)).toMatchObject({ result: "illegal" });
  });

  it("a timed-out put read, then a later read sees the older value", () => {
    const history: Op[] = [
      put(1, "k", "old", 0, 5),
      put(1, "k", "new", 10, Infinity),
      read(2, "k", "new", 20, 30),
      read(3, "k", "old", 40, 50),
    ];
    expect(check(history).result).toBe("illegal");
  });

  it("a timed-out put cannot be seen before it was called", () => {
    expect(check([read(2, "k", "a", 0, 10), put(1, "k", "a", 20, Infinity)]).result).toBe(
      "illegal",
    );
  });

  it("a timed-out read constrains nothing", () => {
    expect(check([put(1, "k", "a", 0, 10), read(2, "k", null, 20, Infinity)])).toEqual({
      result: "ok",
    });
  });

  it("a timed-out operation may never take effect, even where it could not take effect later", () => {
    // A cell written at most once: the timed-out write can neither precede nor follow "b".
    type CellInput = { readonly op: "write"; readonly value: string } | { readonly op: "read" };
    const writeOnce: Model<string | null, CellInput, string | null> = {
      init: (): string | null => null,
      step(
        state: string | null,
        input: CellInput,
        output: string | null,
        indeterminate: boolean,
      ): string | null | undefined {
        if (input.op === "write") return state === null ? input.value : undefined;
        return indeterminate || output === state ? state : undefined;
      },
      key: (state: string | null): string => (state === null ? "absent" : `"${state}"`),
    };
    type CellOp = Operation<CellInput, string | null>;
    const op = (input: CellInput, output: string | null, call: number, ret: number): CellOp => ({
      client: 0,
      input,
      output,
      call,
      return: ret,
    });
    const history: CellOp[] = [
      op({ op: "write", value: "a" }, null, 0, Infinity),
      op({ op: "write", value: "b" }, null, 10, 20),
      op({ op: "read" }, "b", 30, 40),
    ];
    expect(checkOperations(writeOnce, history)).toEqual({ result: "ok" });
    const completed: CellOp[] = [{ ...(history[0] as CellOp), return: 5 }];
    expect(checkOperations(writeOnce, [...completed, ...history.slice(1)]).result).toBe("illegal");
  });

  it("200 random histories with 5% timeouts pass, and fail with one read changed", () => {
    for (const seed of seeds) {
      const history: Op[] = generateHistory(seed, smallWithTimeouts);
      expect(check(history), `seed ${seed}`).toEqual({ result: "ok" });
      const { history: mutated, mutation } = mutate(history, seed);
      expect(check(mutated).result, `seed ${seed}, ${mutation}`).toBe("illegal");
    }
  });
});

describe("partitioning", () => {
  const history: Op[] = [
    put(1, "k1", "a", 0, 10),
    read(2, "k2", null, 20, 30),
    read(2, "k1", "a", 40, 50),
  ];

  it("operations on different keys do not interfere", () => {
    expect(check(history)).toEqual({ result: "ok" });
    // One register for all keys: the same history is then illegal.
    const unpartitioned = { ...registerModel, partition: undefined };
    expect(checkOperations(unpartitioned, history).result).toBe("illegal");
  });

  it("names the partition that is illegal", () => {
    const bad: Op[] = [...history, del(3, "k2", 60, 70), read(3, "k2", "b", 80, 90)];
    expect(check(bad)).toMatchObject({ result: "illegal", partition: 1 });
  });

  it("a 20,000-operation history over 50 keys", () => {
    const plan: Plan = { clients: 100, opsPerClient: 200, keys: 50, indeterminate: 0 };
    const history: Op[] = generateHistory(20_000, plan);
    expect(history).toHaveLength(20_000);
    const started: number = performance.now();
    const result: CheckResult = check(history, 60_000);
    const elapsed: number = performance.now() - started;
    console.log(`20,000 operations over 50 keys checked in ${elapsed.toFixed(0)} ms`);
    expect(result).toEqual({ result: "ok" });
    const { history: mutated } = mutate(history, 20_000);
    expect(check(mutated, 60_000).result).toBe("illegal");
  });
});

describe("timeout", () => {
  it("gives up on a pathological history", () => {
    const history: Op[] = [];
    for (let i = 0; i < 60; i++) history.push(put(i, "k", `v${i}`, 0, 100));
    for (let i = 0; i < 20; i++) history.push(read(60 + i, "k", `v${(i * 7) % 60}`, 0, 100));
    // Impossible, but only found so after trying every order of the puts.
    history.push(read(80, "k", "never", 200, 210));
    expect(check(history, 1)).toEqual({ result: "timeout", partition: 0 });
  });
});

describe("input", () => {
  it("rejects a return before its call", () => {
    expect(() => check([put(1, "k", "a", 10, 5)])).toThrow(RangeError);
  });
});
