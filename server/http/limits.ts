import rateLimit from "@fastify/rate-limit";
import underPressure from "@fastify/under-pressure";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { MusterError } from "../errors.js";

export interface Limits {
  /** Requests per second one client may make of this node; 0: no limit. */
  readonly rateLimit: number;
  /** Blocking queries and watch streams one client may hold open on this node. */
  readonly maxWatchesPerClient: number;
  /** Blocking queries and watch streams this node holds open for everyone. */
  readonly maxWatches: number;
  /** Mean event-loop delay over which requests are shed with 503; null: never. */
  readonly maxEventLoopDelayMs: number | null;
}

/**
 * Load shedding: while the event loop lags, requests get 503 with Retry-After, so that the
 * node's time goes to Raft (whose heartbeats share the loop) and to requests already taken.
 */
export function shedLoad(app: FastifyInstance, limits: Limits): void {
  if (limits.maxEventLoopDelayMs === null) return;
  const limit = limits.maxEventLoopDelayMs;
  app.register(underPressure, {
    maxEventLoopDelay: limit,
    sampleInterval: 250,
    pressureHandler: (_request, _reply, _type, value) =>
      Promise.reject(
        new MusterError(
          "MUSTER_ERR_OVERLOADED",
          `this node is overloaded: its event loop lags ${Math.round(Number(value))} ms, over ${limit} ms (--max-event-loop-delay)`,
        ),
      ),
  });
}

/**
 * Set by a member that forwards a request to the leader, to the address of the client it
 * took the request from: limits count the client where it connected.
 */
export const forwardedHeader = "x-muster-forwarded";
/** The cluster's forwarding key, which proves that a member forwarded the request. */
export const forwardingKeyHeader = "x-muster-forwarding-key";

/** The client a request counts against: its address. */
export function clientOf(request: FastifyRequest): string {
  return request.ip;
}

/**
 * Per-client rate limit on this node: a client over it gets 429 with Retry-After in the
 * API's error shape, while other clients go on being served.
 */
export function limitRequests(
  app: FastifyInstance,
  limits: Limits,
  /** Whether a member forwarded the request (its client was counted where it connected). */
  forwardedByMember: (request: FastifyRequest) => boolean,
): void {
  if (limits.rateLimit === 0) return;
  app.register(rateLimit, {
    max: limits.rateLimit,
    timeWindow: 1000,
    keyGenerator: clientOf,
    allowList: forwardedByMember,
    errorResponseBuilder: (_request, context) =>
      Object.assign(
        new MusterError(
          "MUSTER_ERR_TOO_MANY_REQUESTS",
          `more than ${context.max} requests per second from this client (--rate-limit); retry in ${context.after}`,
        ),
        { statusCode: 429 },
      ),
  });
}

/** Open blocking queries and watch streams on this node, per client and in all. */
export class WatchQuota {
  private readonly byClient = new Map<string, number>();
  private total = 0;

  constructor(private readonly limits: Limits) {}

  /** Counts one more watch of `client` until the returned release is called. */
  enter(client: string): () => void {
    const open = this.byClient.get(client) ?? 0;
    if (open >= this.limits.maxWatchesPerClient) {
      throw new MusterError(
        "MUSTER_ERR_TOO_MANY_REQUESTS",
        `this client already holds ${open} blocking queries and watches on this node, the most allowed (--max-watches-per-client)`,
      );
    }
    if (this.total >= this.limits.maxWatches) {
      throw new MusterError(
        "MUSTER_ERR_OVERLOADED",
        `this node already holds ${this.total} blocking queries and watches, the most allowed (--max-watches)`,
      );
    }
    this.byClient.set(client, open + 1);
    this.total++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.total--;
      const left = (this.byClient.get(client) ?? 1) - 1;
      if (left === 0) this.byClient.delete(client);
      else this.byClient.set(client, left);
    };
  }
}
