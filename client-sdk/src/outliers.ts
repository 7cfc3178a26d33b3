import {
  type CircuitBreakerPolicy,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleWhen,
} from "cockatiel";
import { type Duration, toMs } from "./types.js";

export interface EjectionOptions {
  /** Consecutive failed calls that eject an instance (default 5). */
  readonly consecutiveFailures?: number;
  /** How long an ejected instance gets no calls before one probe call (default 10 s). */
  readonly ejectFor?: Duration;
}

interface Tracked {
  readonly breaker: CircuitBreakerPolicy;
  openedAt: number | null;
}

/**
 * Outlier ejection: a circuit breaker per instance. After a run of failures the instance
 * is ejected; once its time is up a single probe call is let through (half-open), and
 * its outcome closes the breaker or ejects the instance again.
 */
export class Outliers {
  private readonly tracked = new Map<string, Tracked>();
  private readonly threshold: number;
  private readonly ejectForMs: number;

  constructor(options: EjectionOptions = {}) {
    this.threshold = options.consecutiveFailures ?? 5;
    if (!Number.isInteger(this.threshold) || this.threshold < 1)
      throw new TypeError("ejection.consecutiveFailures must be a positive integer");
    this.ejectForMs = toMs(options.ejectFor ?? "10s", "ejection.ejectFor");
  }

  /** Whether a call to this instance may be made now (closed, or due for its probe). */
  eligible(id: string): boolean {
    const tracked = this.tracked.get(id);
    if (tracked === undefined) return true;
    switch (tracked.breaker.state) {
      case CircuitState.Closed:
        return true;
      case CircuitState.Open:
        return tracked.openedAt !== null && performance.now() - tracked.openedAt >= this.ejectForMs;
      default:
        // Half-open: the probe is in flight.
        return false;
    }
  }

  /** Run a call through the instance's breaker; a thrown error counts as a failure. */
  run<T>(id: string, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return this.breaker(id).execute(({ signal }) => call(signal));
  }

  /** Drop state of instances that left. */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.tracked.keys()) if (!ids.has(id)) this.tracked.delete(id);
  }

  private breaker(id: string): CircuitBreakerPolicy {
    const known = this.tracked.get(id);
    if (known !== undefined) return known.breaker;
    // The caller giving up (an abort or its own timeout) says nothing about the instance.
    const failure = handleWhen(
      (error) => error.name !== "AbortError" && error.name !== "TimeoutError",
    );
    const breaker = circuitBreaker(failure, {
      halfOpenAfter: this.ejectForMs,
      breaker: new ConsecutiveBreaker(this.threshold),
    });
    const tracked: Tracked = { breaker, openedAt: null };
    breaker.onBreak(() => {
      tracked.openedAt = performance.now();
    });
    breaker.onReset(() => {
      tracked.openedAt = null;
    });
    this.tracked.set(id, tracked);
    return breaker;
  }
}
