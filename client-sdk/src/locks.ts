import { bound } from "./deadline.js";
import type { RegistryHttp } from "./http.js";
import { Session, type SessionOptions } from "./session.js";
import { type Duration, formatMs, toMs } from "./types.js";

export type LockKind = "lock" | "election";

export interface LockOptions {
  /** The holder's value, shown to others (an election's leader identity). */
  readonly value?: string;
  /** How long to wait for the lock (default: until the signal aborts); 0 tries once. */
  readonly wait?: Duration;
  /** Hold it through this session instead of one of its own. */
  readonly session?: Session;
  /** Options of the lock's own session. */
  readonly sessionOptions?: SessionOptions;
  readonly signal?: AbortSignal;
}

export interface Holder {
  readonly session: string;
  readonly token: number;
  readonly value: string;
  readonly since?: string;
}

/** The lock is held by someone else and the wait ended. */
export class LockBusyError extends Error {
  override readonly name = "LockBusyError";
  constructor(
    readonly lockName: string,
    readonly holder: Holder | null,
  ) {
    super(`${lockName} is held${holder === null ? "" : ` by session ${holder.session}`}`);
  }
}

const paths: Record<LockKind, { base: string; take: string; give: string; holder: string }> = {
  lock: { base: "/v1/locks", take: "acquire", give: "release", holder: "holder" },
  election: { base: "/v1/elections", take: "campaign", give: "resign", holder: "leader" },
};
/** The server bounds each blocking acquire; shorter rounds notice a dead node sooner. */
const roundMs = 30_000;

/**
 * A held lock. `token` is its fencing token: pass it to the resource the lock guards, which
 * rejects any token older than the newest it has seen. `signal` aborts when the lock is lost.
 */
export class Lock {
  private released: Promise<void> | null = null;

  constructor(
    private readonly http: RegistryHttp,
    readonly kind: LockKind,
    readonly name: string,
    readonly token: number,
    readonly session: Session,
    private readonly ownSession: boolean,
  ) {}

  /** Aborts when the session holding the lock is lost. */
  get signal(): AbortSignal {
    return this.session.signal;
  }

  /** Give the lock up (and end its own session). */
  release(): Promise<void> {
    this.released ??= (async () => {
      const { base, give } = paths[this.kind];
      if (!this.session.signal.aborted) {
        await this.http
          .call("POST", `${base}/${encodeURIComponent(this.name)}/${give}`, {
            body: { session: this.session.id },
            write: true,
            deadlineMs: 10_000,
          })
          .catch(() => undefined);
      }
      // Ending the session releases the lock too if the release did not get through.
      if (this.ownSession) await this.session.end();
    })();
    return this.released;
  }
}

/** Take a lock (or win an election), waiting in line behind the holder. */
export async function acquire(
  http: RegistryHttp,
  kind: LockKind,
  name: string,
  options: LockOptions = {},
): Promise<Lock> {
  if (!/^[A-Za-z0-9._/-]{1,128}$/.test(name))
    throw new TypeError(`name: "${name}" is not a valid lock name`);
  const waitMs = options.wait === undefined ? Number.POSITIVE_INFINITY : toMs(options.wait, "wait");
  const until = performance.now() + waitMs;
  const session =
    options.session ?? (await Session.create(http, options.sessionOptions, options.signal));
  const own = options.session === undefined;
  const { base, take, holder } = paths[kind];
  try {
    for (;;) {
      const limit = bound(Number.POSITIVE_INFINITY, session.signal, options.signal);
      const signal = limit.signal;
      signal.throwIfAborted();
      const round = Math.max(0, Math.min(roundMs, until - performance.now()));
      const answer = await http
        .call("POST", `${base}/${encodeURIComponent(name)}/${take}`, {
          body: {
            session: session.id,
            ...(options.value === undefined ? {} : { value: options.value }),
            ...(round >= 1 ? { wait: formatMs(round) } : {}),
          },
          accept: [409],
          write: true,
          signal,
          // The wait is in the body: each attempt gets it on top of its own limit.
          timeoutMs: round + 10_000,
          deadlineMs: round + 30_000,
        })
        .finally(limit.clear);
      if (answer.status === 200) {
        return new Lock(http, kind, name, Number(answer.body.token), session, own);
      }
      if (performance.now() >= until) {
        throw new LockBusyError(name, (answer.body[holder] ?? null) as Holder | null);
      }
    }
  } catch (error) {
    if (own) await session.end();
    throw error;
  }
}
