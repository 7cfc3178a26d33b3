/**
 * A linearizability checker in the style of Porcupine (anishathalye/porcupine, `checkSingle`):
 * Wing & Gong's depth-first search with Lowe's memoisation, run on each partition of the history.
 *
 * Real-time order: A precedes B only when A returns strictly before B is called. At equal times
 * calls sort before returns (as in Porcupine), so an operation called at the instant another
 * returns is concurrent with it.
 *
 * Indeterminate operations (return = Infinity) are handled like Knossos' and Porcupine's "info"
 * operations: their return entry sorts after every determinate one, so they stay candidates from
 * their call to the end of the search and may be linearized at any point after it (the model
 * steps them with `indeterminate = true`), or never: the search succeeds as soon as every
 * determinate operation is linearized.
 *
 * Two reductions keep indeterminate operations from multiplying the search's states, both
 * sound because such an operation constrains nothing but its call time:
 * - one whose step leaves the state unchanged is not linearized there: leaving it pending
 *   allows everything linearizing it would;
 * - of those with equal inputs, only the earliest called still pending is a candidate: any
 *   linearization using a later one can use the earlier one in its place.
 */

/** One completed (or indeterminate) operation of a history. Times are from one monotonic clock. */
export interface Operation<I, O> {
  readonly client: number;
  readonly input: I;
  /** The observed output; ignored when the operation is indeterminate. */
  readonly output: O;
  readonly call: number;
  /** Infinity when the outcome is unknown (timeout, connection lost): it may have taken effect at any time after `call`, or never. */
  readonly return: number;
}

export interface Model<S, I, O> {
  init(): S;
  /** Whether applying `input` in `state` can produce `output` (for indeterminate ops output is not checked: step is called with `indeterminate = true` and must return the state after the op took effect); returns the next state or undefined when illegal. */
  step(state: S, input: I, output: O, indeterminate: boolean): S | undefined;
  /** A key for memoisation: equal states give equal keys. */
  key(state: S): string;
  /** Split the history into independent sub-histories (P-compositionality, e.g. per key); default: one partition. */
  partition?(history: readonly Operation<I, O>[]): Operation<I, O>[][];
}

/**
 * `partition` indexes the array returned by the model's `partition` (0 without one).
 * `longestPrefix` is the most operations of that partition the search managed to linearize.
 */
export type CheckResult =
  | { readonly result: "ok" }
  | {
      readonly result: "illegal";
      readonly partition: number;
      readonly longestPrefix: number;
      readonly explanation: string;
    }
  | { readonly result: "timeout"; readonly partition: number };

/**
 * Checks partitions in order and stops at the first that is illegal or runs out of time;
 * `timeoutMs` bounds the wall time of the whole check.
 */
export function checkOperations<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  options?: { timeoutMs?: number },
): CheckResult {
  for (const op of history) {
    if (!Number.isFinite(op.call) || Number.isNaN(op.return) || op.return < op.call) {
      throw new RangeError(`operation of client ${op.client} has times [${op.call}, ${op.return}]`);
    }
  }
  const deadline: number = performance.now() + (options?.timeoutMs ?? Infinity);
  const partitions: Operation<I, O>[][] = model.partition
    ? model.partition(history)
    : [history.slice()];
  for (let p = 0; p < partitions.length; p++) {
    const result: CheckResult = checkPartition(model, partitions[p] ?? [], p, deadline);
    if (result.result !== "ok") return result;
  }
  return { result: "ok" };
}

/** Where the deepest search got stuck: enough to tell a human why the history is illegal. */
interface Stuck {
  readonly depth: number;
  /** The last few operations of the linearized prefix, in order. */
  readonly recent: readonly number[];
  readonly stateKey: string;
  /** The operation whose return came before any pending operation could be linearized. */
  readonly blocking: number;
  /** The pending operations, none of which could be linearized next. */
  readonly candidates: readonly number[];
}

const recentShown = 6;
const candidatesShown = 8;
/** How many search steps run between two looks at the clock. */
const clockEvery = 256;

/**
 * Entries are numbered 0..n-1 for the calls of ops 0..n-1 and n..2n-1 for their returns, with
 * 2n the list's head, so an entry's op and match are arithmetic rather than lookups.
 */
function checkPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  partition: number,
  deadline: number,
): CheckResult {
  const n: number = ops.length;
  const head: number = 2 * n;
  const nil = -1;
  const opAt = (i: number): Operation<I, O> => ops[i] as Operation<I, O>;
  const time = (e: number): number => (e < n ? opAt(e).call : opAt(e - n).return);
  const sorted: number[] = Array.from({ length: 2 * n }, (_: unknown, e: number) => e);
  sorted.sort((a: number, b: number): number => {
    const ta: number = time(a);
    const tb: number = time(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    // Calls before returns at equal times: touching intervals are concurrent.
    return (a < n ? 0 : 1) - (b < n ? 0 : 1) || a - b;
  });
  const next = new Int32Array(2 * n + 1);
  const prev = new Int32Array(2 * n + 1);
  let last: number = head;
  for (const e of sorted) {
    next[last] = e;
    prev[e] = last;
    last = e;
  }
  next[last] = nil;

  const indeterminate = new Uint8Array(n);
  let remaining = 0;
  for (let i = 0; i < n; i++) {
    if (opAt(i).return === Infinity) indeterminate[i] = 1;
    else remaining++;
  }
  // Indeterminate operations grouped by input, each group in call order: `rank` is an
  // operation's place in its group and `firstPending` the place of the group's next candidate.
  const group = new Int32Array(n);
  const rank = new Int32Array(n);
  const groups = new Map<string, number>();
  const groupSizes: number[] = [];
  for (const e of sorted) {
    if (e >= n || indeterminate[e] === 0) continue;
    const input: string = JSON.stringify(opAt(e).input);
    let g: number | undefined = groups.get(input);
    if (g === undefined) {
      g = groupSizes.length;
      groups.set(input, g);
      groupSizes.push(0);
    }
    group[e] = g;
    rank[e] = groupSizes[g] as number;
    groupSizes[g] = (groupSizes[g] as number) + 1;
  }
  const firstPending = new Int32Array(groupSizes.length);
  const movePending = (e: number, by: number): void => {
    const g: number = group[e] as number;
    firstPending[g] = (firstPending[g] as number) + by;
  };
  // Zobrist hashing: the hash of the linearized set is updated in O(1) per step.
  const zobrist = new Uint32Array(n);
  for (let i = 0; i < n; i++) zobrist[i] = mix32(i + 0x9e3779b9);

  // Removes a call and its return from the list; they keep their links for `unlift`.
  const lift = (e: number): void => {
    const m: number = e + n;
    next[prev[e] as number] = next[e] as number;
    prev[next[e] as number] = prev[e] as number;
    next[prev[m] as number] = next[m] as number;
    if (next[m] !== nil) prev[next[m] as number] = prev[m] as number;
  };
  const unlift = (e: number): void => {
    const m: number = e + n;
    next[prev[m] as number] = m;
    if (next[m] !== nil) prev[next[m] as number] = m;
    next[prev[e] as number] = e;
    prev[next[e] as number] = e;
  };

  const bits = new Uint32Array(Math.ceil(n / 32));
  const cache = new Map<number, CacheEntry[]>();
  const stackEntry = new Int32Array(n);
  const stackState: S[] = [];
  const stackKey: string[] = [];
  let depth = 0;
  let state: S = model.init();
  let stateKey: string = model.key(state);
  let setHash = 0;
  let stuck: Stuck | undefined;
  let steps = 0;
  let entry: number = next[head] as number;

  while (remaining > 0) {
    if (++steps % clockEvery === 0 && performance.now() > deadline) {
      return { result: "timeout", partition };
    }
    if (entry < n) {
      const op: Operation<I, O> = opAt(entry);
      const unknown: boolean = indeterminate[entry] === 1;
      if (unknown && rank[entry] !== firstPending[group[entry] as number]) {
        entry = next[entry] as number;
        continue;
      }
      const nextState: S | undefined = model.step(state, op.input, op.output, unknown);
      const nextKey: string | undefined =
        nextState === undefined ? undefined : model.key(nextState);
      if (nextKey !== undefined && !(unknown && nextKey === stateKey)) {
        const word: number = entry >>> 5;
        const bit: number = 1 << (entry & 31);
        bits[word] = (bits[word] as number) | bit;
        const nextSetHash: number = (setHash ^ (zobrist[entry] as number)) >>> 0;
        if (remember(cache, (nextSetHash ^ hashString(nextKey)) >>> 0, nextKey, bits)) {
          stackEntry[depth] = entry;
          stackState[depth] = state;
          stackKey[depth] = stateKey;
          depth++;
          state = nextState as S;
          stateKey = nextKey;
          setHash = nextSetHash;
          if (unknown) movePending(entry, 1);
          else remaining--;
          lift(entry);
          entry = next[head] as number;
          continue;
        }
        bits[word] = (bits[word] as number) & ~bit;
      }
      entry = next[entry] as number;
    } else {
      // A return with no pending call able to go first: this prefix is a dead end.
      if (stuck === undefined || depth > stuck.depth) {
        const candidates: number[] = [];
        for (let e: number = next[head] as number; e !== entry; e = next[e] as number) {
          candidates.push(e);
        }
        stuck = {
          depth,
          recent: Array.from(stackEntry.subarray(Math.max(0, depth - recentShown), depth)),
          stateKey,
          blocking: entry - n,
          candidates,
        };
      }
      if (depth === 0) {
        return {
          result: "illegal",
          partition,
          longestPrefix: stuck.depth,
          explanation: explain(ops, partition, stuck),
        };
      }
      depth--;
      entry = stackEntry[depth] as number;
      state = stackState[depth] as S;
      stateKey = stackKey[depth] as string;
      const word: number = entry >>> 5;
      bits[word] = (bits[word] as number) & ~(1 << (entry & 31));
      setHash = (setHash ^ (zobrist[entry] as number)) >>> 0;
      if (indeterminate[entry] === 1) movePending(entry, -1);
      else remaining++;
      unlift(entry);
      entry = next[entry] as number;
    }
  }
  return { result: "ok" };
}

interface CacheEntry {
  readonly bits: Uint32Array;
  readonly key: string;
}

/** Adds (linearized set, state) to the cache; false when it was already there. */
function remember(
  cache: Map<number, CacheEntry[]>,
  hash: number,
  key: string,
  bits: Uint32Array,
): boolean {
  const bucket: CacheEntry[] | undefined = cache.get(hash);
  if (bucket === undefined) {
    cache.set(hash, [{ bits: bits.slice(), key }]);
    return true;
  }
  for (const cached of bucket) {
    if (cached.key === key && sameBits(cached.bits, bits)) return false;
  }
  bucket.push({ bits: bits.slice(), key });
  return true;
}

function sameBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** murmur3's finaliser: spreads consecutive integers over 32 bits. */
function mix32(x: number): number {
  let h: number = x >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** FNV-1a. */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function describeOp<I, O>(ops: readonly Operation<I, O>[], i: number): string {
  const op = ops[i] as Operation<I, O>;
  const outcome: string =
    op.return === Infinity ? "outcome unknown" : `-> ${JSON.stringify(op.output)}`;
  const end: string = op.return === Infinity ? "∞" : String(op.return);
  return `#${i} client ${op.client} ${JSON.stringify(op.input)} ${outcome} [${op.call}, ${end}]`;
}

function explain<I, O>(ops: readonly Operation<I, O>[], partition: number, stuck: Stuck): string {
  const list = (ids: readonly number[], shown: number): string =>
    ids
      .slice(0, shown)
      .map((i: number): string => describeOp(ops, i))
      .join("; ") + (ids.length > shown ? `; and ${ids.length - shown} more` : "");
  const prefix: string =
    stuck.depth === 0
      ? "no operation can be linearized first"
      : `at most ${stuck.depth} can be linearized, the deepest attempt ending ${list(stuck.recent, recentShown)}`;
  return (
    `partition ${partition} (${ops.length} operations, #i = index in the partition): ${prefix}; ` +
    `in state ${stuck.stateKey} none of the pending operations (${list(stuck.candidates, candidatesShown)}) ` +
    `can come next, yet ${describeOp(ops, stuck.blocking)} has returned`
  );
}

/** The registry's per-instance register: a value (e.g. the instance's address) or absent. */
export type RegisterInput =
  | { readonly op: "put"; readonly key: string; readonly value: string }
  | { readonly op: "delete"; readonly key: string }
  | { readonly op: "read"; readonly key: string };
/** Reads: what was seen; puts/deletes: ignored. */
export type RegisterOutput = { readonly value: string | null };

/** Partitions by key; init null. Each put writes a value no other put writes. */
export const registerModel: Model<string | null, RegisterInput, RegisterOutput> = {
  init(): string | null {
    return null;
  },
  step(
    state: string | null,
    input: RegisterInput,
    output: RegisterOutput,
    indeterminate: boolean,
  ): string | null | undefined {
    switch (input.op) {
      case "put":
        return input.value;
      case "delete":
        return null;
      case "read":
        return indeterminate || output.value === state ? state : undefined;
    }
  },
  key(state: string | null): string {
    // Quoted values cannot collide with the unquoted "absent".
    return state === null ? "absent" : `"${state}"`;
  },
  partition(
    history: readonly Operation<RegisterInput, RegisterOutput>[],
  ): Operation<RegisterInput, RegisterOutput>[][] {
    const seen = new Set<string>();
    for (const op of history)
      if (op.input.op === "read" && op.return !== Infinity && op.output.value !== null)
        seen.add(`${op.input.key}\u0000${op.output.value}`);
    const byKey = new Map<string, Operation<RegisterInput, RegisterOutput>[]>();
    for (const op of history) {
      // A read with an unknown outcome changes nothing and constrains nothing: leaving it out
      // keeps it from multiplying the search's states.
      if (op.input.op === "read" && op.return === Infinity) continue;
      // Nor does a put with an unknown outcome whose value no read saw, when values are never
      // written twice: had it taken effect, no read came before the next write covered it.
      if (
        op.input.op === "put" &&
        op.return === Infinity &&
        !seen.has(`${op.input.key}\u0000${op.input.value}`)
      )
        continue;
      const ops = byKey.get(op.input.key);
      if (ops === undefined) byKey.set(op.input.key, [op]);
      else ops.push(op);
    }
    return [...byKey.values()];
  },
};
