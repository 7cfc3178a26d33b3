export type SessionBehavior = "release" | "delete";
export type LockKind = "lock" | "election";

export interface SessionSpec {
  readonly id: string;
  readonly name: string;
  readonly ttlMs: number;
  readonly behavior: SessionBehavior;
  readonly lockDelayMs: number;
  /** The address of the client that created it, for the cap on sessions per client. */
  readonly client: string;
  /** The accessor of the ACL token that created it; null when ACLs were off. */
  readonly owner?: string | null;
}

export interface Session extends SessionSpec {
  readonly createIndex: number;
  /** TTL left at the last checkpoint (or creation): where a new leader resumes. */
  readonly ttlRemainingMs: number;
}

export interface LockHolder {
  readonly session: string;
  /** The Raft index of the entry that granted the lock: the fencing token. */
  readonly token: number;
  readonly value: string;
  /** Leader clock when it was granted. */
  readonly since: number;
}

export interface LockWaiter {
  readonly session: string;
  readonly value: string;
  /** Leader clock at which the waiter gives up: it is never granted the lock after. */
  readonly until: number;
}

export interface Lock {
  readonly kind: LockKind;
  readonly name: string;
  readonly holder: LockHolder | null;
  /** Arrival order. */
  readonly waiters: readonly LockWaiter[];
  /** Leader clock before which nobody may take the lock (lockDelay after a session ended). */
  readonly delayUntil: number;
  /** Index of the last change. */
  readonly index: number;
}

export type LockResult =
  | { readonly ok: true; readonly acquired: boolean; readonly lock: Lock }
  | { readonly ok: false; readonly code: "not-found" | "conflict"; readonly message: string };

export function lockKey(kind: LockKind, name: string): string {
  return `${kind}:${name}`;
}

/** Plain data for snapshots, in a stable order. */
export interface StoredLocks {
  readonly sessions: Session[];
  readonly locks: Lock[];
}

/**
 * Sessions and the locks they hold. Deterministic: time comes in the commands, every
 * decision is made when the entry is applied, from the state at that index.
 */
export class LockTable {
  private sessions = new Map<string, Session>();
  private locks = new Map<string, Lock>();
  private sessionsByClient = new Map<string, number>();

  constructor(
    /** A lock changed: wake its watchers. */
    private readonly changed: (key: string) => void,
  ) {}

  session(id: string): Session | undefined {
    return this.sessions.get(id);
  }

  allSessions(): Session[] {
    return [...this.sessions.values()];
  }

  lock(kind: LockKind, name: string): Lock | undefined {
    return this.locks.get(lockKey(kind, name));
  }

  /** Locks whose delay ran out with someone waiting: the leader proposes to hand them over. */
  lockedOut(now: number): Lock[] {
    return [...this.locks.values()].filter(
      (lock) => lock.holder === null && lock.waiters.length > 0 && lock.delayUntil <= now,
    );
  }

  /** Sessions that `client` created and that have not ended. */
  sessionsOf(client: string): number {
    return this.sessionsByClient.get(client) ?? 0;
  }

  createSession(spec: SessionSpec, index: number): Session {
    const session = { ...spec, createIndex: index, ttlRemainingMs: spec.ttlMs };
    this.sessions.set(spec.id, session);
    this.countClient(spec.client, 1);
    return session;
  }

  private countClient(client: string, change: number): void {
    const count = this.sessionsOf(client) + change;
    if (count === 0) this.sessionsByClient.delete(client);
    else this.sessionsByClient.set(client, count);
  }

  renewCheckpoint(id: string, remainingMs: number): Session | undefined {
    const session = this.sessions.get(id);
    if (session === undefined) return undefined;
    const updated = { ...session, ttlRemainingMs: remainingMs };
    this.sessions.set(id, updated);
    return updated;
  }

  /**
   * End a session: it leaves every queue, and every lock it holds is released; after an
   * expiry or deletion nobody may take those locks for the session's lockDelay.
   */
  endSession(id: string, now: number, index: number): Session | undefined {
    const session = this.sessions.get(id);
    if (session === undefined) return undefined;
    this.sessions.delete(id);
    this.countClient(session.client, -1);
    for (const [key, lock] of this.locks) {
      const held = lock.holder?.session === id;
      const waiting = lock.waiters.some((waiter) => waiter.session === id);
      if (!held && !waiting) continue;
      const waiters = lock.waiters.filter((waiter) => waiter.session !== id);
      const released: Lock = held
        ? { ...lock, holder: null, waiters, delayUntil: now + session.lockDelayMs, index }
        : { ...lock, waiters, index };
      this.store(key, this.handOver(released, now, index));
    }
    return session;
  }

  /** `waitUntil`: queue until then when the lock is taken (0: do not queue). */
  acquire(
    kind: LockKind,
    name: string,
    session: string,
    value: string,
    waitUntil: number,
    now: number,
    index: number,
  ): LockResult {
    if (!this.sessions.has(session)) return missingSession(session);
    const key = lockKey(kind, name);
    const lock = this.locks.get(key) ?? emptyLock(kind, name);
    if (lock.holder?.session === session) return { ok: true, acquired: true, lock };
    const free = lock.holder === null && lock.waiters.length === 0 && now >= lock.delayUntil;
    if (free) {
      const granted = { ...lock, holder: { session, token: index, value, since: now }, index };
      this.store(key, granted);
      return { ok: true, acquired: true, lock: granted };
    }
    if (waitUntil > now && !lock.waiters.some((waiter) => waiter.session === session)) {
      const queued = {
        ...lock,
        waiters: [...lock.waiters, { session, value, until: waitUntil }],
        index,
      };
      const next = this.handOver(queued, now, index);
      this.store(key, next);
      return { ok: true, acquired: next.holder?.session === session, lock: next };
    }
    return { ok: true, acquired: false, lock };
  }

  release(kind: LockKind, name: string, session: string, now: number, index: number): LockResult {
    if (!this.sessions.has(session)) return missingSession(session);
    const key = lockKey(kind, name);
    const lock = this.locks.get(key);
    if (lock?.holder?.session !== session) {
      return {
        ok: false,
        code: "conflict",
        message: `session ${session} does not hold ${kind} ${name}`,
      };
    }
    const next = this.handOver({ ...lock, holder: null, index }, now, index);
    this.store(key, next);
    return { ok: true, acquired: false, lock: next };
  }

  /** A waiter gave up: it leaves the queue (a grant that came first stands). */
  cancel(kind: LockKind, name: string, session: string, index: number): LockResult {
    const key = lockKey(kind, name);
    const lock = this.locks.get(key) ?? emptyLock(kind, name);
    if (!lock.waiters.some((waiter) => waiter.session === session)) {
      return { ok: true, acquired: lock.holder?.session === session, lock };
    }
    const next = { ...lock, waiters: lock.waiters.filter((w) => w.session !== session), index };
    this.store(key, next);
    return { ok: true, acquired: false, lock: next };
  }

  /** The lock delay ran out: the first waiter gets the lock. */
  promote(kind: LockKind, name: string, now: number, index: number): void {
    const key = lockKey(kind, name);
    const lock = this.locks.get(key);
    if (lock === undefined) return;
    const next = this.handOver(lock, now, index);
    if (next !== lock) this.store(key, next);
  }

  /** A free lock past its delay goes to the first waiter still waiting, its token this entry's index. */
  private handOver(lock: Lock, now: number, index: number): Lock {
    if (lock.holder !== null || now < lock.delayUntil) return lock;
    const waiting = lock.waiters.filter((waiter) => waiter.until >= now);
    const [first, ...rest] = waiting;
    if (first === undefined) {
      return waiting.length === lock.waiters.length ? lock : { ...lock, waiters: [], index };
    }
    return {
      ...lock,
      holder: { session: first.session, token: index, value: first.value, since: now },
      waiters: rest,
      index,
    };
  }

  /** A free lock stays, with the index of its last change, so that watchers see it freed. */
  private store(key: string, lock: Lock): void {
    this.locks.set(key, lock);
    this.changed(key);
  }

  toStored(): StoredLocks {
    const byKey = <T>(map: Map<string, T>) =>
      [...map].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, value]) => value);
    return { sessions: byKey(this.sessions), locks: byKey(this.locks) };
  }

  restore(stored: StoredLocks | undefined): void {
    this.sessions = new Map((stored?.sessions ?? []).map((session) => [session.id, session]));
    this.sessionsByClient = new Map();
    for (const session of this.sessions.values()) this.countClient(session.client, 1);
    this.locks = new Map(
      (stored?.locks ?? []).map((lock) => [lockKey(lock.kind, lock.name), lock]),
    );
  }
}

function emptyLock(kind: LockKind, name: string): Lock {
  return { kind, name, holder: null, waiters: [], delayUntil: 0, index: 0 };
}

function missingSession(session: string): LockResult {
  return { ok: false, code: "not-found", message: `no session ${session}` };
}
