import { setTimeout as sleep } from "node:timers/promises";
import { MusterApiError, type RegistryHttp } from "./http.js";
import { type Duration, formatMs, toMs } from "./types.js";

export interface SessionOptions {
  /** The registry ends the session this long after its last renewal (default 15 s). */
  readonly ttl?: Duration;
  /** After the session ends while holding a lock, nobody may take the lock for this long
   * (the registry's default when unset). */
  readonly lockDelay?: Duration;
  /** What ending the session does to instances registered with it (default "release"). */
  readonly behavior?: "release" | "delete";
  readonly name?: string;
}

/** The session ended: by end(), by the registry (expired or deleted), or it could not be renewed in time. */
export class SessionLostError extends Error {
  override readonly name = "SessionLostError";
}

/**
 * A registry session renewed in the background. `signal` aborts when the session is lost
 * or ended; a session that could not be renewed for its whole TTL counts as lost at once,
 * before the registry can hand its locks to anyone else.
 */
export class Session {
  private readonly lost = new AbortController();
  private loop: Promise<void> = Promise.resolve();

  private constructor(
    private readonly http: RegistryHttp,
    readonly id: string,
    readonly ttlMs: number,
  ) {}

  static async create(
    http: RegistryHttp,
    options: SessionOptions = {},
    signal?: AbortSignal,
  ): Promise<Session> {
    const ttlMs = toMs(options.ttl ?? "15s", "ttl");
    const started = performance.now();
    const answer = await http.call("POST", "/v1/sessions", {
      body: {
        ttl: formatMs(ttlMs),
        ...(options.lockDelay === undefined
          ? {}
          : { lockDelay: formatMs(toMs(options.lockDelay, "lockDelay")) }),
        ...(options.behavior === undefined ? {} : { behavior: options.behavior }),
        ...(options.name === undefined ? {} : { name: options.name }),
      },
      write: true,
      ...(signal === undefined ? {} : { signal }),
    });
    const session = new Session(http, String(answer.body.id), ttlMs);
    session.loop = session.renewals(started);
    return session;
  }

  /** Aborts (with a SessionLostError as reason) when the session is lost or ended. */
  get signal(): AbortSignal {
    return this.lost.signal;
  }

  /** End the session: its locks are released (instances removed with behavior "delete"). */
  async end(): Promise<void> {
    if (!this.lost.signal.aborted) this.lose("session ended");
    await this.loop;
    await this.http
      .call("DELETE", `/v1/sessions/${this.id}`, { write: true, deadlineMs: 5000 })
      .catch(() => undefined);
  }

  private lose(reason: string): void {
    this.lost.abort(new SessionLostError(reason));
  }

  private async renewals(renewedAt: number): Promise<void> {
    const signal = this.lost.signal;
    let lastRenewal = renewedAt;
    let pause = this.ttlMs / 3;
    while (!signal.aborted) {
      // Wake no later than the TTL's end, so that a session that could not be renewed is
      // given up before the registry could hand its locks to someone else.
      const untilExpiry = lastRenewal + this.ttlMs - performance.now();
      const wait = Math.max(0, Math.min(pause, untilExpiry));
      const slept = await sleep(wait, true, { signal, ref: false }).catch(() => false);
      if (!slept) return;
      const sent = performance.now();
      const remaining = lastRenewal + this.ttlMs - sent;
      if (remaining <= 0) {
        this.lose(`session ${this.id} could not be renewed within its TTL`);
        return;
      }
      try {
        await this.http.call("PUT", `/v1/sessions/${this.id}/renew`, {
          write: true,
          signal,
          deadlineMs: remaining,
        });
        lastRenewal = sent;
        pause = this.ttlMs / 3;
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof MusterApiError && error.status === 404) {
          this.lose(`session ${this.id} expired or was deleted`);
          return;
        }
        pause = this.ttlMs / 10;
      }
    }
  }
}
