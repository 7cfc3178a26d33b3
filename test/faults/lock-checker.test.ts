import { describe, expect, it } from "vitest";
import { checkLocks, type Grant, lockDelayMs, sessionTtlMs } from "./lock-workload.js";

const grant = (token: number, requested: number, granted: number): Grant => ({
  worker: token,
  token,
  requested,
  granted,
});

describe("the lock checker", () => {
  it("accepts grants in token order, current checks and a takeover after TTL and lockDelay", () => {
    const grants = [
      grant(5, 0, 10),
      grant(9, 5, 30),
      grant(14, 20, 20 + sessionTtlMs + lockDelayMs + 40),
    ];
    const checks = [
      { token: 5, call: 12, return: 14, current: true },
      { token: 5, call: 25, return: 35, current: true },
      { token: 5, call: 40, return: 42, current: false },
    ];
    expect(checkLocks(grants, checks, [{ token: 9, lastRenewalSent: 40 }])).toEqual([]);
  });

  it("catches a token granted twice", () => {
    expect(checkLocks([grant(5, 0, 10), grant(5, 20, 30)], [], [])).toContain(
      "token 5 granted twice",
    );
  });

  it("catches a smaller token granted after a larger one was seen", () => {
    expect(checkLocks([grant(9, 0, 10), grant(7, 20, 30)], [], [])).toEqual([
      "token 7 granted after token 9",
    ]);
  });

  it("catches a superseded token checked as current", () => {
    const checks = [{ token: 5, call: 40, return: 45, current: true }];
    expect(checkLocks([grant(5, 0, 10), grant(9, 20, 30)], checks, [])).toEqual([
      "token 5 checked current after token 9 was granted",
    ]);
  });

  it("catches a takeover before the vanished holder's TTL and lockDelay ran out", () => {
    const early = 100 + sessionTtlMs + lockDelayMs - 200;
    const violations = checkLocks(
      [grant(5, 0, 10), grant(9, 50, early)],
      [],
      [{ token: 5, lastRenewalSent: 100 }],
    );
    expect(violations).toHaveLength(1);
    expect(violations[0]).toMatch(/token 9 granted 200 ms before/);
  });
});
