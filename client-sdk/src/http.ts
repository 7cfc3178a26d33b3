import { setTimeout as sleep } from "node:timers/promises";
import { ExponentialBackoff, type IBackoff } from "cockatiel";
import { Agent, type Dispatcher, request } from "undici";
import { bound } from "./deadline.js";
import { toMs } from "./types.js";

/** An answer of the registry that is an error the caller must see (400, 404, 409, ...). */
export class MusterApiError extends Error {
  override readonly name = "MusterApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The request field the registry named, for a 400. */
    readonly field?: string,
  ) {
    super(message);
  }
}

/** No registry node answered usefully within the attempts and time allowed. */
export class RegistryUnavailableError extends Error {
  override readonly name = "RegistryUnavailableError";
}

export interface Answer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  /** X-Muster-Index, or null when absent. */
  readonly index: number | null;
}

export interface ServerEvent {
  readonly id: string;
  readonly event: string;
  readonly data: string;
}

export interface CallOptions {
  readonly body?: unknown;
  readonly query?: Readonly<Record<string, string | number | boolean | readonly string[]>>;
  /** Statuses returned as answers instead of thrown as MusterApiError (2xx always are). */
  readonly accept?: readonly number[];
  /** Aborts the call, its retries and its backoff. */
  readonly signal?: AbortSignal;
  /** Limit of each attempt; a blocking read adds its wait. */
  readonly timeoutMs?: number;
  /** Limit of the whole call across attempts and backoff. */
  readonly deadlineMs?: number;
  /** A write is sent to the leader first when the leader is known. */
  readonly write?: boolean;
  /** Give up after this many rounds in which every node failed (default: until the deadline). */
  readonly rounds?: number;
}

export interface HttpOptions {
  /** Registry nodes as "host:port" or "http://host:port". */
  readonly endpoints: readonly string[];
  /** Limit of each attempt (default 10 s). */
  readonly timeoutMs?: number;
  /** Limit of a whole call with its retries (default 30 s). */
  readonly deadlineMs?: number;
  /** Send writes to the leader directly when it is one of the endpoints (default true). */
  readonly followLeader?: boolean;
  /** The ACL token's secret, for a cluster with ACLs on; a denial throws MusterApiError 403. */
  readonly token?: string;
  /**
   * For a cluster with TLS on (give endpoints as https://host:port): the CA to check nodes
   * against (default: the system's), and a client certificate for --tls-client-ca.
   */
  readonly tls?: {
    readonly ca?: string | Buffer;
    readonly cert?: string | Buffer;
    readonly key?: string | Buffer;
  };
}

/** Answers that another node (or the same one a little later) may answer better. */
const retryableStatuses = new Set([429, 502, 503, 504]);
const leaderRefreshMs = 5000;

function origin(endpoint: string): string {
  const url = new URL(endpoint.includes("://") ? endpoint : `http://${endpoint}`);
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new TypeError(`endpoints: ${endpoint} is not an http(s) address`);
  return url.origin;
}

function queryString(query: CallOptions["query"]): string {
  if (query === undefined) return "";
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (Array.isArray(value)) for (const item of value) params.append(key, String(item));
    else params.append(key, String(value));
  }
  const text = params.toString();
  return text === "" ? "" : `?${text}`;
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error("aborted");
}

/**
 * JSON over HTTP to a cluster of registry nodes: each attempt is bounded in time; network
 * errors and 429/502/503/504 move on to the next node with exponential backoff and jitter;
 * writes go to the leader first when it is known.
 */
export class RegistryHttp {
  readonly endpoints: readonly string[];
  private readonly dispatcher: Dispatcher;
  private readonly timeoutMs: number;
  private readonly deadlineMs: number;
  private readonly followLeader: boolean;
  private readonly authorization: Record<string, string>;
  /** The node that answered last: reads start there. */
  private preferred = 0;
  private leader: string | null = null;
  private leaderCheckedAt = Number.NEGATIVE_INFINITY;
  private leaderLookup: Promise<void> | null = null;

  constructor(options: HttpOptions) {
    if (!Array.isArray(options.endpoints) || options.endpoints.length === 0)
      throw new TypeError("endpoints: at least one registry address is required");
    this.endpoints = [...new Set(options.endpoints.map(origin))];
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.deadlineMs = options.deadlineMs ?? 30_000;
    this.followLeader = options.followLeader ?? true;
    this.authorization =
      options.token === undefined ? {} : { authorization: `Bearer ${options.token}` };
    const tls = options.tls ?? {};
    if ((tls.cert === undefined) !== (tls.key === undefined))
      throw new TypeError("tls: cert and key go together");
    this.dispatcher = new Agent({
      keepAliveTimeout: 30_000,
      connect: {
        ...(tls.ca === undefined ? {} : { ca: tls.ca }),
        ...(tls.cert === undefined ? {} : { cert: tls.cert, key: tls.key }),
      },
    });
  }

  /** Drop every connection, aborting calls in flight (blocking reads and streams included). */
  async close(): Promise<void> {
    await this.dispatcher.destroy();
  }

  /** One call, failing over between nodes; throws MusterApiError or RegistryUnavailableError. */
  async call(method: string, path: string, options: CallOptions = {}): Promise<Answer> {
    const limit = bound(options.deadlineMs ?? this.deadlineMs, options.signal);
    try {
      return await this.attempts(method, path, options, limit.signal);
    } finally {
      limit.clear();
    }
  }

  private async attempts(
    method: string,
    path: string,
    options: CallOptions,
    signal: AbortSignal,
  ): Promise<Answer> {
    if (options.write === true && this.followLeader) await this.refreshLeader(signal);
    const order = this.order(options.write === true);
    let backoff: IBackoff<unknown> | undefined;
    let lastProblem = "no attempt made";
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) {
        if (options.signal?.aborted === true) throw abortError(options.signal);
        throw new RegistryUnavailableError(`registry unreachable: ${lastProblem}`);
      }
      const endpoint = order[attempt % order.length] as string;
      const outcome = await this.attempt(method, endpoint, path, options, signal);
      if ("answer" in outcome) {
        this.preferred = this.endpoints.indexOf(endpoint);
        return outcome.answer;
      }
      lastProblem = `${endpoint}: ${outcome.problem}`;
      if (options.write === true) this.leaderCheckedAt = Number.NEGATIVE_INFINITY;
      // A full round of nodes failed: back off before the next round.
      if ((attempt + 1) % order.length === 0) {
        if ((attempt + 1) / order.length >= (options.rounds ?? Number.POSITIVE_INFINITY))
          throw new RegistryUnavailableError(`registry unreachable: ${lastProblem}`);
        backoff = backoff === undefined ? firstBackoff.next() : backoff.next(undefined);
        await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
      }
    }
  }

  private order(write: boolean): string[] {
    const rotated = [
      ...this.endpoints.slice(this.preferred),
      ...this.endpoints.slice(0, this.preferred),
    ];
    if (!write || this.leader === null) return rotated;
    return [this.leader, ...rotated.filter((endpoint) => endpoint !== this.leader)];
  }

  private async attempt(
    method: string,
    endpoint: string,
    path: string,
    options: CallOptions,
    signal: AbortSignal,
  ): Promise<{ answer: Answer } | { problem: string }> {
    const blockingMs =
      options.query?.wait !== undefined ? toMs(String(options.query.wait), "wait") : 0;
    const limit = bound((options.timeoutMs ?? this.timeoutMs) + blockingMs, signal);
    const attemptSignal = limit.signal;
    try {
      const response = await request(`${endpoint}${path}${queryString(options.query)}`, {
        method: method as Dispatcher.HttpMethod,
        dispatcher: this.dispatcher,
        signal: attemptSignal,
        headers:
          options.body === undefined
            ? this.authorization
            : { ...this.authorization, "content-type": "application/json; charset=utf-8" },
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
      });
      const text = await response.body.text();
      const header = response.headers["x-muster-index"];
      const index = typeof header === "string" && header !== "" ? Number(header) : null;
      if (retryableStatuses.has(response.statusCode))
        return { problem: `answered ${response.statusCode}` };
      const body = parseBody(text);
      const status = response.statusCode;
      if ((status >= 200 && status < 300) || options.accept?.includes(status) === true)
        return { answer: { status, body, index } };
      const error = (body.error ?? {}) as { code?: string; message?: string; field?: string };
      throw new MusterApiError(
        status,
        error.code ?? `HTTP_${status}`,
        error.message ?? `registry answered ${status}`,
        error.field,
      );
    } catch (error) {
      if (error instanceof MusterApiError) throw error;
      if (options.signal?.aborted === true) throw abortError(options.signal);
      return { problem: error instanceof Error ? error.message : String(error) };
    } finally {
      limit.clear();
    }
  }

  /**
   * Server-Sent Events from one node, moving to the next when the stream cannot be opened;
   * ends when the stream does. Resumes after `lastEventId` when given.
   */
  async *events(
    path: string,
    signal: AbortSignal,
    lastEventId?: string,
  ): AsyncGenerator<ServerEvent> {
    const endpoint = this.endpoints[this.preferred] as string;
    try {
      const response = await request(`${endpoint}${path}`, {
        method: "GET",
        dispatcher: this.dispatcher,
        signal,
        // The server sends a keep-alive every 15 s: silence for longer means a dead node.
        bodyTimeout: 45_000,
        headers: {
          ...this.authorization,
          accept: "text/event-stream",
          ...(lastEventId === undefined ? {} : { "last-event-id": lastEventId }),
        },
      });
      if (response.statusCode !== 200) {
        await response.body.dump();
        throw new Error(`answered ${response.statusCode}`);
      }
      response.body.setEncoding("utf8");
      let buffer = "";
      let event: { id?: string; event?: string; data: string[] } = { data: [] };
      for await (const chunk of response.body) {
        buffer += chunk as string;
        let newline = buffer.indexOf("\n");
        while (newline >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          newline = buffer.indexOf("\n");
          if (line === "") {
            if (event.data.length > 0)
              yield {
                id: event.id ?? "",
                event: event.event ?? "message",
                data: event.data.join("\n"),
              };
            event = { data: [] };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data.push(value);
            else if (field === "id") event.id = value;
            else if (field === "event") event.event = value;
          }
        }
      }
    } catch (error) {
      // The next attempt starts on another node.
      this.preferred = (this.preferred + 1) % this.endpoints.length;
      throw error;
    }
  }

  /** Learn which endpoint is the leader, at most every few seconds. */
  private async refreshLeader(signal: AbortSignal): Promise<void> {
    if (performance.now() - this.leaderCheckedAt < leaderRefreshMs) return;
    this.leaderCheckedAt = performance.now();
    this.leaderLookup ??= (async () => {
      try {
        const answer = await this.call("GET", "/v1/cluster/leader", {
          signal,
          timeoutMs: 2000,
          deadlineMs: 3000,
        });
        const leader = answer.body.leader as { http?: string } | null;
        const hinted = typeof leader?.http === "string" ? origin(leader.http) : null;
        // Only a configured endpoint: the address a node advertises may not be reachable here.
        this.leader = hinted !== null && this.endpoints.includes(hinted) ? hinted : null;
      } catch {
        this.leader = null;
      } finally {
        this.leaderLookup = null;
      }
    })();
    await this.leaderLookup;
  }
}

const firstBackoff = new ExponentialBackoff({ initialDelay: 50, maxDelay: 2000 });

function parseBody(text: string): Record<string, unknown> {
  if (text === "") return {};
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === "object" && parsed !== null ? (parsed as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
