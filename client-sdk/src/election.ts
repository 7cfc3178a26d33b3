import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { ExponentialBackoff, type IBackoff } from "cockatiel";
import { bound } from "./deadline.js";
import type { RegistryHttp } from "./http.js";
import { acquire, type Holder, type Lock } from "./locks.js";
import type { SessionOptions } from "./session.js";

/** The leader of an election as observers see it; null while there is none. */
export type Leadership = {
  readonly value: string;
  readonly token: number;
  readonly session: string;
} | null;

const retryBackoff = new ExponentialBackoff({ initialDelay: 100, maxDelay: 5000 });

/**
 * Every change of an election's leader, "no leader" included, in order, from the
 * registry's election stream. It reconnects on its own; changes that came and went while
 * it was disconnected are not replayed, the leader it finds then is reported.
 * Events: "leader" (Leadership), "trouble" (error).
 */
export class ElectionObserver extends EventEmitter {
  private readonly stop = new AbortController();
  private current: Leadership | undefined;

  constructor(
    private readonly http: RegistryHttp,
    readonly name: string,
  ) {
    super();
    void this.observe();
  }

  /** The last leader seen (undefined before the first answer). */
  get leader(): Leadership | undefined {
    return this.current;
  }

  close(): void {
    this.stop.abort();
    this.removeAllListeners();
  }

  private async observe(): Promise<void> {
    const signal = this.stop.signal;
    let lastId: string | undefined;
    let backoff: IBackoff<unknown> | undefined;
    const path = `/v1/watch/elections/${encodeURIComponent(this.name)}`;
    while (!signal.aborted) {
      try {
        for await (const event of this.http.events(path, signal, lastId)) {
          backoff = undefined;
          lastId = event.id;
          const leader = (JSON.parse(event.data) as { leader: Holder | null }).leader;
          const next =
            leader === null
              ? null
              : { value: leader.value, token: leader.token, session: leader.session };
          // A resumed stream repeats the current leader first.
          if (this.current !== undefined && this.current?.token === next?.token) continue;
          this.current = next;
          this.emit("leader", next);
        }
      } catch (error) {
        if (signal.aborted) return;
        this.emit("trouble", error);
      }
      backoff = backoff === undefined ? retryBackoff.next() : backoff.next(undefined);
      await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
    }
  }
}

export interface ElectOptions {
  readonly sessionOptions?: SessionOptions;
}

/**
 * A candidate in an election: campaigns until elected, and campaigns again after losing
 * leadership (its session lost) until resign() or close().
 * Events: "elected" (token), "lost" (error: leadership ended without resign), "trouble" (error).
 */
export class Candidate extends EventEmitter {
  private readonly stop = new AbortController();
  private held: Lock | null = null;
  private readonly loop: Promise<void>;

  constructor(
    private readonly http: RegistryHttp,
    readonly name: string,
    readonly value: string,
    private readonly options: ElectOptions = {},
  ) {
    super();
    this.loop = this.campaign();
  }

  get isLeader(): boolean {
    return this.held !== null && !this.held.signal.aborted;
  }

  /** The fencing token of this candidate's leadership, while it leads. */
  get token(): number | null {
    return this.isLeader ? (this.held?.token ?? null) : null;
  }

  /** Aborts when this leadership ends; undefined while not leading. */
  get signal(): AbortSignal | undefined {
    return this.held?.signal;
  }

  /** The same as resign(). */
  close(): Promise<void> {
    return this.resign();
  }

  /** Step down (if leading) and stop campaigning. */
  async resign(): Promise<void> {
    this.stop.abort();
    await this.loop;
    await this.held?.release();
    this.held = null;
  }

  private async campaign(): Promise<void> {
    const signal = this.stop.signal;
    let backoff: IBackoff<unknown> | undefined;
    while (!signal.aborted) {
      try {
        const lock = await acquire(this.http, "election", this.name, {
          value: this.value,
          signal,
          ...(this.options.sessionOptions === undefined
            ? {}
            : { sessionOptions: this.options.sessionOptions }),
        });
        backoff = undefined;
        this.held = lock;
        this.emit("elected", lock.token);
        // A listener of "elected" may already have resigned.
        const lost = bound(Number.POSITIVE_INFINITY, lock.signal, signal).signal;
        if (!lost.aborted)
          await new Promise((resolve) => lost.addEventListener("abort", resolve, { once: true }));
        if (signal.aborted) return;
        this.held = null;
        this.emit("lost", lock.signal.reason);
        await lock.release();
      } catch (error) {
        if (signal.aborted) return;
        this.emit("trouble", error);
        backoff = backoff === undefined ? retryBackoff.next() : backoff.next(undefined);
        await sleep(backoff.duration, undefined, { signal }).catch(() => undefined);
      }
    }
  }
}
