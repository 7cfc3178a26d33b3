import { readFile } from "node:fs/promises";
import { Agent as HttpAgent, type IncomingHttpHeaders, request } from "node:http";
import { dirname, join } from "node:path";
import fc from "fast-check";
import { AgentCluster, eventually, sleep } from "../integration/agents.js";

/**
 * Shared pieces of the fuzz tests: one seed per run (printed, overridable with
 * MUSTER_FUZZ_SEED), a three-node cluster with the timings that keep its state still while
 * the fuzz runs, liveness checks, a bounded-concurrency runner and a keep-alive HTTP client.
 */

export const nodeIds = ["n1", "n2", "n3"] as const;
export type NodeId = (typeof nodeIds)[number];

/** The seed of this run: MUSTER_FUZZ_SEED when set, else a fresh one; printed either way. */
export function fuzzSeed(surface: string): number {
  const raw = process.env.MUSTER_FUZZ_SEED;
  const seed =
    raw !== undefined && raw !== ""
      ? Number(raw)
      : (Date.now() ^ Math.floor(Math.random() * 2 ** 31)) & 0x7fffffff;
  if (!Number.isSafeInteger(seed)) throw new Error(`MUSTER_FUZZ_SEED is not an integer: ${raw}`);
  console.log(`[fuzz ${surface}] seed ${seed} (rerun with MUSTER_FUZZ_SEED=${seed})`);
  return seed | 0;
}

/** `count` values of `arbitrary`, the same ones for the same seed and stream. */
export function samples<T>(
  arbitrary: fc.Arbitrary<T>,
  seed: number,
  stream: number,
  count: number,
) {
  return fc.sample(arbitrary, { seed: (seed + stream * 0x9e3779b1) | 0, numRuns: count });
}

/** A tiny PRNG for choices made while sending (splitting writes, picking nodes). */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * TTL checkpoints and evictions are log entries that move the state hash: keep them out of
 * the fuzz window, so that any change of the hash is the fuzz's doing.
 */
export const quietArgs = ["--ttl-checkpoint-interval=1h", "--deregister-after=1h"];

/**
 * The product's default heartbeat and election timeout, for fuzzers that count an answer of
 * "unavailable" as a failure: they test answers to hostile input, not failover, and a busy
 * machine's stalls of a few hundred ms must not cost the leader its lease.
 */
export const productTimingArgs = ["--heartbeat-interval=50ms", "--election-timeout=500ms"];

/** A three-node cluster with an agreed leader, every member's addresses recorded. */
export async function startCluster(args: readonly string[] = []): Promise<AgentCluster> {
  const cluster = await AgentCluster.create({ args: [...quietArgs, ...args] });
  await cluster.bootstrap([...nodeIds]);
  await cluster.leader(40_000);
  return cluster;
}

/** The cluster's state once it holds still: every node agrees and nothing is pending. */
export async function settled(
  cluster: AgentCluster,
): Promise<{ appliedIndex: number; hash: string }> {
  return eventually(
    "the cluster to settle",
    async () => {
      const before = await cluster.converged();
      const members = await Promise.all(
        nodeIds.map((id) => cluster.request(id, "GET", "/v1/cluster/members")),
      );
      const recorded = members.every((answer) =>
        (answer.body.members as { http: string | null }[]).every((member) => member.http !== null),
      );
      await sleep(300);
      const after = await cluster.converged();
      return recorded && before.hash === after.hash && before.appliedIndex === after.appliedIndex
        ? after
        : undefined;
    },
    30_000,
  );
}

/** Every node's idea of the leader and term: one entry per node, "down" when unreachable. */
export async function leaderView(cluster: AgentCluster): Promise<Record<string, string>> {
  const views = await Promise.all(
    nodeIds.map(async (id) => {
      try {
        const answer = await cluster.request(id, "GET", "/v1/cluster/leader");
        const leader = answer.body.leader as { id: string } | null;
        return `leader ${leader?.id ?? "none"} term ${String(answer.body.term)}`;
      } catch (error) {
        return `down (${(error as Error).message})`;
      }
    }),
  );
  // Keys in node order, so that two views compare equal as text too.
  return Object.fromEntries(nodeIds.map((id, i) => [id, views[i] as string]));
}

/** Why the cluster is not alive and well (empty when it is): processes, /healthz, /readyz. */
export async function liveness(cluster: AgentCluster): Promise<string[]> {
  const problems: string[] = [];
  for (const id of nodeIds) {
    const child = cluster.get(id).process;
    if (child === null) {
      problems.push(`${id}: no process`);
      continue;
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      problems.push(`${id}: exited (code ${child.exitCode}, signal ${child.signalCode})`);
      continue;
    }
    try {
      const health = await cluster.request(id, "GET", "/healthz");
      if (health.status !== 200 || health.body.status !== "ok")
        problems.push(`${id}: /healthz ${health.status} ${JSON.stringify(health.body)}`);
      // Readiness needs a leader and the log applied: give a busy machine a moment.
      await eventually(
        `${id} /readyz`,
        async () =>
          (await cluster.request(id, "GET", "/readyz")).status === 200 ? true : undefined,
        10_000,
      );
    } catch (error) {
      problems.push(`${id}: ${(error as Error).message}`);
    }
  }
  return problems;
}

/** The last lines of an agent's log that say why it stopped, for a failure message. */
export async function fatalLines(cluster: AgentCluster, id: string): Promise<string> {
  const log = join(dirname(cluster.get(id).dataDir), `${id}.log`);
  const text = await readFile(log, "utf8").catch(() => "");
  return text
    .split("\n")
    .filter((line) => /"level":(50|60)|Error|error:/.test(line))
    .slice(-3)
    .map((line) => line.slice(0, 600))
    .join("\n");
}

/** Run `work` on every item, `concurrency` at a time, until done or `deadline` (ms epoch). */
export async function pool<T>(
  items: readonly T[],
  concurrency: number,
  deadline: number,
  work: (item: T, index: number) => Promise<void>,
): Promise<number> {
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < items.length && Date.now() < deadline) {
      const index = next++;
      await work(items[index] as T, index);
      done++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return done;
}

// ---- HTTP -------------------------------------------------------------------------------

export interface HttpReply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

export const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: 64 });

/** One request over the keep-alive pool; rejects on a dropped connection or a timeout. */
export function httpCall(
  address: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: Buffer,
  timeoutMs = 10_000,
): Promise<HttpReply> {
  const at = address.lastIndexOf(":");
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: address.slice(0, at),
        port: Number(address.slice(at + 1)),
        method,
        path,
        headers: { ...headers, ...(body === undefined ? {} : { "content-length": body.length }) },
        agent: keepAlive,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
          }),
        );
        res.on("error", reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

export interface ApiError {
  readonly code: string;
  readonly message: string;
  readonly field?: string;
}

/** The API's error body `{error: {code, message, field?}}`, or why the reply is not one. */
export function apiError(reply: HttpReply): ApiError | string {
  const type = String(reply.headers["content-type"] ?? "");
  if (!type.startsWith("application/json")) return `content-type "${type}"`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(reply.body.toString("utf8"));
  } catch {
    return `body is not JSON: ${reply.body.toString("utf8").slice(0, 200)}`;
  }
  const error = (parsed as { error?: unknown }).error;
  if (typeof error !== "object" || error === null)
    return `no {error: {...}} object: ${JSON.stringify(parsed).slice(0, 200)}`;
  const { code, message, field } = error as Record<string, unknown>;
  if (typeof code !== "string" || !/^MUSTER_ERR_[A-Z_]+$/.test(code))
    return `error.code ${JSON.stringify(code)}`;
  if (typeof message !== "string" || message === "") return "error.message missing";
  if (field !== undefined && typeof field !== "string") return "error.field not a string";
  return field === undefined ? { code, message } : { code, message, field };
}

/** Percent-encode every byte of `bytes` that is not unreserved. */
export function percentEncode(bytes: Uint8Array): string {
  let out = "";
  for (const byte of bytes) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._~-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** Collects failures with the input that caused them, keeping the first few in full. */
export class Failures {
  readonly kinds = new Map<string, number>();
  readonly examples: string[] = [];

  constructor(private readonly keep = 20) {}

  add(kind: string, detail: string): void {
    this.kinds.set(kind, (this.kinds.get(kind) ?? 0) + 1);
    if (this.examples.length < this.keep) this.examples.push(`${kind}: ${detail}`);
  }

  get count(): number {
    let total = 0;
    for (const count of this.kinds.values()) total += count;
    return total;
  }

  summary(): string {
    const kinds = [...this.kinds].map(([kind, count]) => `  ${count} x ${kind}`).join("\n");
    return `${this.count} failures\n${kinds}\nfirst examples:\n${this.examples.join("\n")}`;
  }
}

export function shown(value: unknown, max = 300): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text === undefined
    ? String(value)
    : text.length > max
      ? `${text.slice(0, max)}... (${text.length} chars)`
      : text;
}

// ---- what the API documents (DESIGN.md and the schemas) --------------------------------------

export const patterns = {
  /** Services and tags are DNS labels. */
  label: /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/,
  instanceId: /^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$/,
  sessionId: /^[0-9a-f-]{36}$/,
  metaKey: /^[A-Za-z0-9._/-]{1,128}$/,
  duration: /^\d{1,9}(ms|s|m|h)$/,
};
export const statuses = ["passing", "warning", "critical", "maintenance"];
const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function durationMs(text: string): number {
  const match = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (match === null) return Number.NaN;
  return Number(match[1]) * (units[match[2] as string] ?? Number.NaN);
}

export function formatMs(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** Length as JSON Schema counts it: code points. */
export const chars = (text: string) => [...text].length;

/**
 * Whether a parsed JSON value holds what the API's JSON parser refuses as naming a prototype: a
 * "__proto__" key, or a "constructor" key whose value has a "prototype" key.
 */
export function poisoned(value: unknown): boolean {
  if (typeof value !== "object" || value === null) return false;
  return Object.entries(value).some(
    ([key, inner]) =>
      key === "__proto__" ||
      (key === "constructor" &&
        typeof inner === "object" &&
        inner !== null &&
        Object.hasOwn(inner, "prototype")) ||
      poisoned(inner),
  );
}

/**
 * The documented verdict on a registration of instance `id` with this body (as the server
 * decodes it): null when valid, else the first bad part.
 */
export function registrationVerdict(id: string, body: Record<string, unknown>): string | null {
  const { label, instanceId, sessionId, metaKey, duration } = patterns;
  // "." and ".." match the id pattern, but a URL path cannot carry them: they are resolved
  // as dot segments (RFC 3986) on the way, encoded or not. Reported separately.
  if (!instanceId.test(id) || id === "." || id === "..") return "id";
  if (poisoned(body)) return "__proto__";
  const allowed = [
    "address",
    "port",
    "tags",
    "meta",
    "weight",
    "version",
    "ttl",
    "status",
    "session",
  ];
  for (const key of Object.keys(body)) if (!allowed.includes(key)) return key;
  const { address, port, tags, meta, weight, version, ttl, status, session } = body;
  if (typeof address !== "string" || address === "" || chars(address) > 253 || /\s/u.test(address))
    return "address";
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535)
    return "port";
  if (tags !== undefined) {
    if (!Array.isArray(tags) || tags.length > 64) return "tags";
    if (tags.some((tag) => typeof tag !== "string" || !label.test(tag))) return "tags";
  }
  if (meta !== undefined) {
    if (typeof meta !== "object" || meta === null || Array.isArray(meta)) return "meta";
    const entries = Object.entries(meta);
    if (entries.length > 64) return "meta";
    for (const [key, value] of entries) {
      if (!metaKey.test(key) || typeof value !== "string" || Buffer.byteLength(value) > 512)
        return "meta";
    }
  }
  if (
    weight !== undefined &&
    (typeof weight !== "number" || !Number.isInteger(weight) || weight < 1 || weight > 1000)
  )
    return "weight";
  if (version !== undefined && (typeof version !== "string" || chars(version) > 128))
    return "version";
  if (ttl !== undefined) {
    if (typeof ttl !== "string" || !duration.test(ttl)) return "ttl";
    const ms = durationMs(ttl);
    if (ms < 2000 || ms > 86_400_000) return "ttl";
  }
  if (status !== undefined && (typeof status !== "string" || !statuses.includes(status)))
    return "status";
  if (session !== undefined && (typeof session !== "string" || !sessionId.test(session)))
    return "session";
  return null;
}
