import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { ExponentialBackoff, type IBackoff } from "cockatiel";
import { bound } from "./deadline.js";
import { type RegistryHttp, RegistryUnavailableError } from "./http.js";
import { type Consistency, type Duration, formatMs, type Instance, toMs } from "./types.js";

export interface DiscoverOptions {
  /** Only instances with every one of these tags. */
  readonly tags?: readonly string[];
  /** Only passing and warning instances (default true). */
  readonly healthy?: boolean;
  /** Consistency of each read (default "default"). */
  readonly consistency?: Consistency;
  /** Wait of each blocking read (default 30 s). */
  readonly wait?: Duration;
}

/** How current a view is. */
export interface Staleness {
  /** False while the watch is answered; true while the registry is unreachable or failing. */
  readonly stale: boolean;
  /** Milliseconds since the registry last answered, 0 while not stale. */
  readonly ageMs: number;
  /** Why the last read failed, while stale. */
  readonly error: Error | null;
}

const retryBackoff = new ExponentialBackoff({ initialDelay: 100, maxDelay: 5000 });

/**
 * A live view of one service's instances, kept current by blocking reads. When the
 * registry is unreachable or answers errors, the view keeps serving its last answer and
 * says how stale it is: trouble in the registry never empties a caller's view.
 *
 * Events: "change" (instances), "stale" (error), "fresh" ().
 */
export class ServiceView extends EventEmitter implements AsyncIterable<readonly Instance[]> {
  private current: readonly Instance[] = [];
  private currentIndex = 0;
  private version = 0;
  private answered = false;
  private lastAnswerAt: number | null = null;
  private failure: Error | null = null;
  private readonly stop = new AbortController();
  private readonly waitMs: number;
  private readonly firstAnswer: Promise<void>;
  private resolveFirst: () => void = () => undefined;
  private readonly wakers = new Set<() => void>();

  constructor(
    private readonly http: RegistryHttp,
    readonly service: string,
    private readonly options: DiscoverOptions = {},
  ) {
    super();
    if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(service))
      throw new TypeError(`service: "${service}" is not a valid service name`);
    this.waitMs = toMs(options.wait ?? "30s", "wait");
    this.firstAnswer = new Promise((resolve) => {
      this.resolveFirst = resolve;
    });
    void this.watch();
  }

  /** The instances of the last answer (empty before the first). */
  get instances(): readonly Instance[] {
    return this.current;
  }

  /** Raft index of the last change the view has seen. */
  get index(): number {
    return this.currentIndex;
  }

  get staleness(): Staleness {
    if (this.failure === null) return { stale: false, ageMs: 0, error: null };
    const ageMs =
      this.lastAnswerAt === null ? Number.POSITIVE_INFINITY : Date.now() - this.lastAnswerAt;
    return { stale: true, ageMs, error: this.failure };
  }

  /** Resolves with the instances once the registry has answered once. */
  async ready(
    options: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<readonly Instance[]> {
    const limit = bound(
      options.timeoutMs ?? Number.POSITIVE_INFINITY,
      this.stop.signal,
      options.signal,
    );
    const signal = limit.signal;
    if (!this.answered) {
      await new Promise<void>((resolve, reject) => {
        const abort = () =>
          reject(
            this.stop.signal.aborted
              ? new Error("view closed")
              : new RegistryUnavailableError(
                  `no answer for service ${this.service}: ${this.failure?.message ?? "timed out"}`,
                ),
          );
        if (signal.aborted) return abort();
        signal.addEventListener("abort", abort, { once: true });
        void this.firstAnswer.then(() => {
          signal.removeEventListener("abort", abort);
          limit.clear();
          resolve();
        });
      });
    }
    return this.current;
  }

  /** Each change of the instances, starting with the current ones; ends when the view closes. */
  async *[Symbol.asyncIterator](): AsyncIterator<readonly Instance[]> {
    await this.ready().catch(() => undefined);
    let seen = -1;
    while (!this.stop.signal.aborted) {
      if (this.version !== seen) {
        seen = this.version;
        yield this.current;
        continue;
      }
      await new Promise<void>((resolve) => this.wakers.add(resolve));
    }
  }

  close(): void {
    if (this.stop.signal.aborted) return;
    this.stop.abort();
    this.wake();
    this.removeAllListeners();
  }

  private wake(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
  }

  private async watch(): Promise<void> {
    const signal = this.stop.signal;
    let backoff: IBackoff<unknown> | undefined;
    while (!signal.aborted) {
      try {
        const answer = await this.http.call("GET", `/v1/services/${this.service}`, {
          query: {
            consistency: this.options.consistency ?? "default",
            healthy: this.options.healthy ?? true,
            ...(this.options.tags === undefined || this.options.tags.length === 0
              ? {}
              : { tag: this.options.tags }),
            ...(this.answered ? { index: this.currentIndex, wait: formatMs(this.waitMs) } : {}),
          },
          // No instances: 404 with the service's index.
          accept: [404],
          signal,
          deadlineMs: this.waitMs + 15_000,
          // Report trouble after one failed round of nodes; this loop does the retrying.
          rounds: 1,
        });
        backoff = undefined;
        this.accept(
          answer.index ?? 0,
          answer.status === 404 ? [] : (answer.body.instances as Instance[]),
        );
      } catch (error) {
        if (signal.aborted) return;
        this.troubled(error instanceof Error ? error : new Error(String(error)));
        backoff = backoff === undefined ? retryBackoff.next() : backoff.next(undefined);
        await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
      }
    }
  }

  private accept(index: number, instances: readonly Instance[]): void {
    this.lastAnswerAt = Date.now();
    if (this.failure !== null) {
      this.failure = null;
      this.emit("fresh");
    }
    const first = !this.answered;
    if (!first && index === this.currentIndex) return;
    // A lower index means a registry rebuilt or restored from a backup: follow it, as Consul does.
    this.answered = true;
    this.currentIndex = index;
    this.current = instances;
    this.version += 1;
    if (first) this.resolveFirst();
    this.emit("change", instances);
    this.wake();
  }

  private troubled(error: Error): void {
    const wasFresh = this.failure === null;
    this.failure = error;
    if (wasFresh) this.emit("stale", error);
  }
}
