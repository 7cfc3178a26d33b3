import type { Instance } from "./types.js";

export type BalancerPolicy =
  | "round-robin"
  | "weighted-round-robin"
  | "random"
  | "least-outstanding"
  | "p2c"
  | "consistent-hash";

export const balancerPolicies: readonly BalancerPolicy[] = [
  "round-robin",
  "weighted-round-robin",
  "random",
  "least-outstanding",
  "p2c",
  "consistent-hash",
];

export interface BalancerOptions {
  /** Uniform random in [0, 1); Math.random by default (tests pass a seeded one). */
  readonly random?: () => number;
  /** consistent-hash: points on the ring per unit of weight 100 (default 160). */
  readonly pointsPerInstance?: number;
  /** p2c: half-life of the latency EWMA in ms (default 10_000) */
  readonly decayMs?: number;
  /** p2c: clock in ms, performance.now by default (tests pass their own). */
  readonly now?: () => number;
}

export interface Balancer {
  readonly policy: BalancerPolicy;
  /**
   * One of `candidates` (undefined when empty). `key` is required by consistent-hash (throws
   * TypeError naming "key" without it) and ignored by the others.
   */
  pick(candidates: readonly Instance[], key?: string): Instance | undefined;
  /** A call to the instance with this id began. */
  begin(id: string): void;
  /** That call ended after latencyMs; ok is false when it failed. */
  end(id: string, latencyMs: number, ok: boolean): void;
}

export function createBalancer(policy: BalancerPolicy, options: BalancerOptions = {}): Balancer {
  const random = options.random ?? Math.random;
  switch (policy) {
    case "round-robin":
      return roundRobin();
    case "weighted-round-robin":
      return weightedRoundRobin();
    case "random":
      return weightedRandom(random);
    case "least-outstanding":
      return leastOutstanding(random);
    case "p2c":
      return powerOfTwoChoices(
        random,
        positive(options.decayMs ?? 10_000, "decayMs"),
        options.now ?? (() => performance.now()),
      );
    case "consistent-hash":
      return consistentHash(positive(options.pointsPerInstance ?? 160, "pointsPerInstance"));
  }
  // For callers without the type checker.
  throw new TypeError(`unknown balancer policy: ${String(policy)}`);
}

function positive(value: number, field: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new TypeError(`${field} must be positive`);
  return value;
}

/** Registry weights are 1..1000; anything else counts as 1 rather than starve or divide by 0. */
function weightOf(instance: Instance): number {
  return Number.isFinite(instance.weight) && instance.weight > 0 ? instance.weight : 1;
}

const noop = (): void => {};

function roundRobin(): Balancer {
  let cursor = 0;
  return {
    policy: "round-robin",
    pick(candidates) {
      if (candidates.length === 0) return undefined;
      const index = cursor % candidates.length;
      cursor = index + 1;
      return candidates[index];
    },
    begin: noop,
    end: noop,
  };
}

/** Picks between sweeps for instances that went away. */
const sweepEvery = 1024;

/**
 * Per-instance state by id. Each sweep drops the ids that were neither used since the previous
 * sweep nor among the candidates at this one, so instances that went away do not pile up.
 */
class InstanceStates<S> {
  private readonly entries = new Map<string, { readonly state: S; epoch: number }>();
  private epoch = 0;
  private picks = 0;

  constructor(private readonly create: () => S) {}

  get(id: string): S {
    const entry = this.entries.get(id);
    if (entry !== undefined) {
      entry.epoch = this.epoch;
      return entry.state;
    }
    const state = this.create();
    this.entries.set(id, { state, epoch: this.epoch });
    return state;
  }

  /** Counts a pick over `candidates`. */
  picked(candidates: readonly Instance[]): void {
    if (++this.picks < sweepEvery) return;
    this.picks = 0;
    for (const candidate of candidates) {
      const entry = this.entries.get(candidate.id);
      if (entry !== undefined) entry.epoch = this.epoch;
    }
    for (const [id, entry] of this.entries) if (entry.epoch < this.epoch) this.entries.delete(id);
    this.epoch++;
  }
}

/** nginx's smooth weighted round-robin: heavy instances are interleaved, not picked in bursts. */
function weightedRoundRobin(): Balancer {
  const current = new InstanceStates<{ weight: number }>(() => ({ weight: 0 }));
  return {
    policy: "weighted-round-robin",
    pick(candidates) {
      let total = 0;
      let best: Instance | undefined;
      let bestState: { weight: number } | undefined;
      for (const candidate of candidates) {
        const state = current.get(candidate.id);
        const weight = weightOf(candidate);
        state.weight += weight;
        total += weight;
        if (bestState === undefined || state.weight > bestState.weight) {
          best = candidate;
          bestState = state;
        }
      }
      if (bestState === undefined) return undefined;
      bestState.weight -= total;
      current.picked(candidates);
      return best;
    },
    begin: noop,
    end: noop,
  };
}

function weightedRandom(random: () => number): Balancer {
  return {
    policy: "random",
    pick(candidates) {
      if (candidates.length === 0) return undefined;
      let total = 0;
      for (const candidate of candidates) total += weightOf(candidate);
      let point = random() * total;
      for (const candidate of candidates) {
        point -= weightOf(candidate);
        if (point < 0) return candidate;
      }
      // Rounding can leave point at a hair above zero.
      return candidates[candidates.length - 1];
    },
    begin: noop,
    end: noop,
  };
}

interface Load {
  outstanding: number;
  /** Peak EWMA of latency in ms as of `sampledAt`. */
  latency: number;
  /** undefined until the first call ends. */
  sampledAt: number | undefined;
}

function newLoads(): InstanceStates<Load> {
  return new InstanceStates<Load>(() => ({ outstanding: 0, latency: 0, sampledAt: undefined }));
}

function callEnded(loads: InstanceStates<Load>, id: string): Load {
  const load = loads.get(id);
  // An instance forgotten while its call was in flight comes back at zero.
  load.outstanding = Math.max(0, load.outstanding - 1);
  return load;
}

function leastOutstanding(random: () => number): Balancer {
  const loads = newLoads();
  return {
    policy: "least-outstanding",
    pick(candidates) {
      let best: Instance | undefined;
      let fewest = Number.POSITIVE_INFINITY;
      let ties = 0;
      for (const candidate of candidates) {
        const outstanding = loads.get(candidate.id).outstanding;
        if (outstanding < fewest) {
          best = candidate;
          fewest = outstanding;
          ties = 1;
        } else if (outstanding === fewest && random() * ++ties < 1) {
          // Reservoir sampling: each of the tied candidates wins with probability 1 / ties.
          best = candidate;
        }
      }
      if (best !== undefined) loads.picked(candidates);
      return best;
    },
    begin(id) {
      loads.get(id).outstanding++;
    },
    end(id) {
      callEnded(loads, id);
    },
  };
}

/** Least latency in ms charged for a failed call (twice the observed one when that is more). */
const failurePenaltyMs = 1000;

function powerOfTwoChoices(random: () => number, decayMs: number, now: () => number): Balancer {
  const loads = newLoads();
  /** Share of an estimate still standing `elapsed` ms after it was made. */
  const kept = (elapsed: number): number => 2 ** (-Math.max(0, elapsed) / decayMs);
  // Idle time decays the estimate towards zero, so an instance that was slow is retried later.
  const estimate = (load: Load, at: number): number =>
    load.sampledAt === undefined ? 0 : load.latency * kept(at - load.sampledAt);
  const cost = (load: Load, at: number): number => estimate(load, at) * (load.outstanding + 1);
  return {
    policy: "p2c",
    pick(candidates) {
      const n = candidates.length;
      if (n <= 1) return candidates[0];
      const first = Math.floor(random() * n);
      const other = Math.floor(random() * (n - 1));
      const second = other >= first ? other + 1 : other;
      const a = candidates[first] as Instance;
      const b = candidates[second] as Instance;
      const at = now();
      const chosen = cost(loads.get(b.id), at) < cost(loads.get(a.id), at) ? b : a;
      loads.picked(candidates);
      return chosen;
    },
    begin(id) {
      loads.get(id).outstanding++;
    },
    end(id, latencyMs, ok) {
      const load = callEnded(loads, id);
      const at = now();
      const sample = ok ? latencyMs : Math.max(latencyMs * 2, failurePenaltyMs);
      const previous = estimate(load, at);
      // Peak-sensitive: a slower sample (or a failure) counts at once, a faster one blends in
      // over time, so an instance loses as soon as it degrades and wins back only gradually.
      load.latency =
        load.sampledAt === undefined || sample > previous
          ? sample
          : previous + sample * (1 - kept(at - load.sampledAt));
      load.sampledAt = at;
    },
  };
}

/** FNV-1a over UTF-16 code units, then murmur3's fmix32 so similar strings spread over the ring. */
function hash32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

interface Ring {
  /** Candidates with the ids and weights it was built from, in that order: `owners` index them. */
  candidates: readonly Instance[];
  /** Point hashes in ascending order. */
  readonly hashes: Uint32Array;
  readonly owners: Uint32Array;
}

function buildRing(candidates: readonly Instance[], pointsPerInstance: number): Ring {
  const points: { hash: number; owner: number; id: string }[] = [];
  candidates.forEach((candidate, owner) => {
    const count = Math.max(1, Math.round((pointsPerInstance * weightOf(candidate)) / 100));
    for (let i = 0; i < count; i++)
      points.push({ hash: hash32(`${candidate.id}#${i}`), owner, id: candidate.id });
  });
  // Ties go by id so the ring does not depend on the order of the candidates.
  points.sort((x, y) => x.hash - y.hash || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  return {
    candidates,
    hashes: Uint32Array.from(points, (point) => point.hash),
    owners: Uint32Array.from(points, (point) => point.owner),
  };
}

/** Same ids and weights in the same order: the ring can stay. */
function sameSet(a: readonly Instance[], b: readonly Instance[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  return a.every((instance, i) => instance.id === b[i]?.id && instance.weight === b[i]?.weight);
}

function consistentHash(pointsPerInstance: number): Balancer {
  let ring: Ring | undefined;
  return {
    policy: "consistent-hash",
    pick(candidates, key) {
      if (typeof key !== "string") throw new TypeError("consistent-hash needs a key to pick by");
      if (candidates.length === 0) return undefined;
      if (ring === undefined || !sameSet(ring.candidates, candidates))
        ring = buildRing(candidates, pointsPerInstance);
      ring.candidates = candidates;
      const { hashes, owners } = ring;
      // The first point at or after the key's hash, wrapping around.
      const target = hash32(key);
      let low = 0;
      let high = hashes.length;
      while (low < high) {
        const mid = (low + high) >>> 1;
        if ((hashes[mid] as number) < target) low = mid + 1;
        else high = mid;
      }
      return candidates[owners[low === hashes.length ? 0 : low] as number];
    },
    begin: noop,
    end: noop,
  };
}
