import type { FaultCluster } from "./fault-cluster.js";
import { nodeIds } from "./fault-cluster.js";
import type { Operation, RegisterInput, RegisterOutput } from "./linearizability.js";
import type { Random } from "./random.js";

export type RegistryOp = Operation<RegisterInput, RegisterOutput>;

/** A stale read: which node answered, in which incarnation, at which index. */
export interface StaleRead {
  readonly node: string;
  readonly incarnation: number;
  readonly key: string;
  readonly index: number;
  readonly call: number;
  readonly at: number;
}

export interface WorkloadResult {
  readonly history: RegistryOp[];
  readonly staleReads: StaleRead[];
  readonly counts: Record<string, number>;
}

const requestTimeoutMs = 2000;
/** How long a client waits after a node refused it, rather than spin while the node is down. */
const refusedBackoffMs = 10;

function backOff(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, refusedBackoffMs));
}

/** Each key is a service with one instance, "x", whose `version` carries the value. */
function servicePath(key: string): string {
  return `/v1/services/lin-${key}`;
}

interface Answer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  readonly index: number;
}

async function send(address: string, method: string, path: string, body?: unknown) {
  const response = await fetch(`http://${address}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(requestTimeoutMs),
  });
  const text = await response.text();
  return {
    status: response.status,
    body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>),
    index: Number(response.headers.get("x-muster-index") ?? "-1"),
  } satisfies Answer;
}

/**
 * Whether a request failed because no connection could be made (the node was down): nothing
 * was sent, so the operation certainly did not take effect.
 */
export function refused(error: unknown): boolean {
  return (error as { cause?: { code?: unknown } } | null)?.cause?.code === "ECONNREFUSED";
}

/** The answer; null when the outcome is unknown; "refused" when nothing was sent. */
function attempt(address: string, method: string, path: string, body?: unknown) {
  return send(address, method, path, body).catch((error: unknown) =>
    refused(error) ? ("refused" as const) : null,
  );
}

/** The value a read of a key's service saw: the version of its instance "x", or null. */
export function observedValue(answer: {
  status: number;
  body: Record<string, unknown>;
}): string | null {
  if (answer.status === 404) return null;
  const instances = (answer.body.instances ?? []) as { id: string; version: string }[];
  return instances.find((instance) => instance.id === "x")?.version ?? null;
}

/**
 * Clients writing unique values to a few keys and reading them back through random nodes,
 * each operation recorded with its invocation and completion time. A write whose outcome
 * is unknown (timeout, lost connection, 5xx) is recorded as indeterminate: it may or may not
 * have taken effect.
 */
export async function runRegistryWorkload(
  cluster: FaultCluster,
  random: Random,
  options: {
    clients: number;
    keys: number;
    signal: AbortSignal;
    incarnation: (id: string) => number;
  },
): Promise<WorkloadResult> {
  const history: RegistryOp[] = [];
  const staleReads: StaleRead[] = [];
  const counts: Record<string, number> = {};
  const count = (what: string) => {
    counts[what] = (counts[what] ?? 0) + 1;
  };
  const keys = Array.from({ length: options.keys }, (_, i) => `k${i}`);

  const client = async (clientId: number) => {
    let sequence = 0;
    while (!options.signal.aborted) {
      const key = random.pick(keys);
      const node = random.pick(nodeIds);
      const address = cluster.agents.get(node).http;
      const roll = random.next();
      const call = performance.now();
      if (roll < 0.35) {
        const value = `c${clientId}-${sequence++}`;
        const input: RegisterInput = { op: "put", key, value };
        const answer = await attempt(address, "PUT", `${servicePath(key)}/instances/x`, {
          address: "127.0.0.1",
          port: 1,
          version: value,
          ttl: "1h",
        });
        if (answer === "refused") {
          count("put refused");
          await backOff();
          continue;
        }
        const done = answer?.status === 200;
        if (answer !== null && answer.status >= 400 && answer.status < 500)
          throw new Error(`put answered ${answer.status}: ${JSON.stringify(answer.body)}`);
        history.push({
          client: clientId,
          input,
          output: { value: null },
          call,
          return: done ? performance.now() : Number.POSITIVE_INFINITY,
        });
        count(done ? "put ok" : "put unknown");
      } else if (roll < 0.5) {
        const answer = await attempt(address, "DELETE", `${servicePath(key)}/instances/x`);
        const end = performance.now();
        if (answer === "refused") {
          count("delete refused");
          await backOff();
          continue;
        }
        if (answer?.status === 404) {
          // Nothing to remove at apply time, or a forward retried after its first attempt
          // removed the instance (a retried deregistration answers 404): either way the key
          // was absent at some point in [call, end], which a delete there models.
          history.push({
            client: clientId,
            input: { op: "delete", key },
            output: { value: null },
            call,
            return: end,
          });
          count("delete absent");
        } else {
          const done = answer?.status === 200;
          history.push({
            client: clientId,
            input: { op: "delete", key },
            output: { value: null },
            call,
            return: done ? end : Number.POSITIVE_INFINITY,
          });
          count(done ? "delete ok" : "delete unknown");
        }
      } else {
        const consistency = roll < 0.7 ? "linearizable" : roll < 0.9 ? "default" : "stale";
        // The process that answers is the one running when the read is sent.
        const incarnation = options.incarnation(node);
        const answer = await attempt(
          address,
          "GET",
          `${servicePath(key)}?consistency=${consistency}`,
        );
        const end = performance.now();
        if (answer === "refused") {
          count(`read ${consistency} refused`);
          await backOff();
          continue;
        }
        if (answer === null || (answer.status !== 200 && answer.status !== 404)) {
          count(`read ${consistency} failed`);
          continue;
        }
        count(`read ${consistency} ok`);
        if (consistency === "stale") {
          staleReads.push({
            node,
            incarnation,
            key,
            index: answer.index,
            call,
            at: end,
          });
        } else {
          history.push({
            client: clientId,
            input: { op: "read", key },
            output: { value: observedValue(answer) },
            call,
            return: end,
          });
        }
      }
      // Failed calls should not spin while a node is down.
      if (history.length % 50 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    }
  };
  await Promise.all(Array.from({ length: options.clients }, (_, i) => client(i)));
  return { history, staleReads, counts };
}

/**
 * Stale reads never go back in time on one node while it runs: a read that began after
 * another had completed sees at least its index of the key's service.
 */
export function checkStaleMonotonic(reads: readonly StaleRead[]): string | null {
  const groups = new Map<string, StaleRead[]>();
  for (const read of reads) {
    const id = `${read.node}/${read.incarnation}/${read.key}`;
    const group = groups.get(id);
    if (group === undefined) groups.set(id, [read]);
    else group.push(read);
  }
  for (const group of groups.values()) {
    const byEnd = [...group].sort((a, b) => a.at - b.at);
    const byStart = [...group].sort((a, b) => a.call - b.call);
    let completed = 0;
    let highest: StaleRead | null = null;
    for (const read of byStart) {
      while (completed < byEnd.length && (byEnd[completed] as StaleRead).at < read.call) {
        const done = byEnd[completed++] as StaleRead;
        if (highest === null || done.index > highest.index) highest = done;
      }
      if (highest !== null && read.index < highest.index)
        return `${read.node} answered ${read.key} at index ${read.index} after ${highest.index}`;
    }
  }
  return null;
}
