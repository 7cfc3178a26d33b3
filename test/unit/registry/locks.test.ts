import { describe, expect, it } from "vitest";
import { LockTable } from "../../../server/fsm/locks.js";

/** A waiter that never gives up. */
const forever = Number.MAX_SAFE_INTEGER;

function table() {
  const changed: string[] = [];
  const locks = new LockTable((key) => changed.push(key));
  let index = 0;
  const session = (id: string, lockDelayMs = 1000, client = "10.0.0.1") =>
    locks.createSession(
      { id, name: "", ttlMs: 10_000, behavior: "release", lockDelayMs, client },
      ++index,
    );
  return { locks, changed, session, next: () => ++index };
}

describe("sessions and locks", () => {
  it("grants a free lock with the granting entry's index as token, to one session at a time", () => {
    const { locks, session, next } = table();
    session("a");
    session("b");
    const first = locks.acquire("lock", "job", "a", "x", 0, 0, next());
    expect(first).toMatchObject({
      ok: true,
      acquired: true,
      lock: { holder: { session: "a", token: 3 } },
    });
    expect(locks.acquire("lock", "job", "b", "y", 0, 0, next())).toMatchObject({
      ok: true,
      acquired: false,
    });
    // Acquiring again is idempotent for the holder.
    expect(locks.acquire("lock", "job", "a", "x", 0, 0, next())).toMatchObject({
      acquired: true,
      lock: { holder: { token: 3 } },
    });
  });

  it("serves waiters in arrival order with strictly increasing tokens", () => {
    const { locks, session, next } = table();
    for (const id of ["a", "b", "c"]) session(id);
    locks.acquire("lock", "job", "a", "", 0, 0, next());
    locks.acquire("lock", "job", "c", "", forever, 0, next());
    locks.acquire("lock", "job", "b", "", forever, 0, next());
    const tokens = [locks.lock("lock", "job")?.holder?.token ?? 0];
    for (const holder of ["a", "c", "b"]) {
      expect(locks.lock("lock", "job")?.holder?.session).toBe(holder);
      locks.release("lock", "job", holder, 0, next());
      tokens.push(locks.lock("lock", "job")?.holder?.token ?? Number.POSITIVE_INFINITY);
    }
    expect(tokens.slice(0, 3)).toEqual([...tokens.slice(0, 3)].sort((x, y) => x - y));
    expect(new Set(tokens.slice(0, 3)).size).toBe(3);
    expect(locks.lock("lock", "job")?.holder).toBeNull();
  });

  it("a session that ends frees its locks only after its lockDelay, then the first waiter gets it", () => {
    const { locks, session, next } = table();
    session("a", 1000);
    session("b");
    locks.acquire("lock", "job", "a", "", 0, 0, next());
    locks.acquire("lock", "job", "b", "", forever, 0, next());
    locks.endSession("a", 5000, next());
    expect(locks.lock("lock", "job")).toMatchObject({ holder: null, delayUntil: 6000 });
    expect(locks.lockedOut(5999)).toEqual([]);
    // Nobody jumps the queue during the delay either.
    session("c");
    expect(locks.acquire("lock", "job", "c", "", 0, 5500, next())).toMatchObject({
      acquired: false,
    });
    expect(locks.lockedOut(6000).map((lock) => lock.name)).toEqual(["job"]);
    locks.promote("lock", "job", 6000, next());
    expect(locks.lock("lock", "job")?.holder?.session).toBe("b");
  });

  it("an explicit release hands over at once; a waiter that gives up leaves the queue", () => {
    const { locks, session, next } = table();
    for (const id of ["a", "b", "c"]) session(id);
    locks.acquire("lock", "job", "a", "", 0, 0, next());
    locks.acquire("lock", "job", "b", "", forever, 0, next());
    locks.acquire("lock", "job", "c", "", forever, 0, next());
    locks.cancel("lock", "job", "b", next());
    locks.release("lock", "job", "a", 0, next());
    expect(locks.lock("lock", "job")?.holder?.session).toBe("c");
  });

  it("never grants the lock to a waiter whose wait has ended", () => {
    const { locks, session, next } = table();
    for (const id of ["a", "b", "c"]) session(id);
    locks.acquire("lock", "job", "a", "", 0, 0, next());
    locks.acquire("lock", "job", "b", "", 1000, 0, next());
    locks.acquire("lock", "job", "c", "", 5000, 0, next());
    locks.release("lock", "job", "a", 2000, next());
    expect(locks.lock("lock", "job")).toMatchObject({ holder: { session: "c" }, waiters: [] });
    locks.release("lock", "job", "c", 2500, next());
    expect(locks.lock("lock", "job")?.holder).toBeNull();
  });

  it("refuses a release by a session that does not hold the lock, and unknown sessions", () => {
    const { locks, session, next } = table();
    session("a");
    session("b");
    locks.acquire("lock", "job", "a", "", 0, 0, next());
    expect(locks.release("lock", "job", "b", 0, next())).toMatchObject({
      ok: false,
      code: "conflict",
    });
    expect(locks.acquire("lock", "job", "zz", "", 0, 0, next())).toMatchObject({
      ok: false,
      code: "not-found",
    });
    expect(locks.lock("lock", "job")?.holder?.session).toBe("a");
  });

  it("locks and elections of the same name are distinct, and watchers hear of each change", () => {
    const { locks, changed, session, next } = table();
    session("a");
    locks.acquire("lock", "x", "a", "", 0, 0, next());
    locks.acquire("election", "x", "a", "leader-1", 0, 0, next());
    expect(locks.lock("election", "x")?.holder?.value).toBe("leader-1");
    expect(changed).toEqual(["lock:x", "election:x"]);
    locks.release("election", "x", "a", 0, next());
    // A freed lock keeps the index of its last change, so blocking queries see it.
    expect(locks.lock("election", "x")).toMatchObject({ holder: null, index: 4 });
  });

  it("a snapshot restores sessions and locks", () => {
    const { locks, session, next } = table();
    session("a");
    locks.acquire("lock", "job", "a", "v", 0, 0, next());
    const copy = new LockTable(() => undefined);
    copy.restore(JSON.parse(JSON.stringify(locks.toStored())));
    expect(copy.toStored()).toEqual(locks.toStored());
  });
});
