/** A parked blocking query or watch stream, woken by a change to what it watches. */
interface Waiter {
  readonly wake: () => void;
}

/**
 * Blocking queries and watch streams, per service: a change to one service wakes the
 * watchers of that service and of the service list, and nobody else. Locks and elections
 * are watched under their keys ("lock:<name>", "election:<name>"), which no service name
 * can be: a change to one wakes its own watchers only.
 */
export class Watches {
  private readonly byService = new Map<string, Set<Waiter>>();
  private readonly listWaiters = new Set<Waiter>();
  /** Services changed this turn, woken on the next (null in it: every service). */
  private pending: Set<string | null> | null = null;

  /** Resolves at the next change of `service` (null: the service list), or when `signal` aborts. */
  next(service: string | null, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) {
        resolve();
        return;
      }
      const set = service === null ? this.listWaiters : this.setFor(service);
      const waiter: Waiter = {
        wake: () => {
          set.delete(waiter);
          if (service !== null && set.size === 0) this.byService.delete(service);
          signal.removeEventListener("abort", waiter.wake);
          resolve();
        },
      };
      set.add(waiter);
      signal.addEventListener("abort", waiter.wake, { once: true });
    });
  }

  /**
   * A change to `service` (null: everything may have changed, as after a snapshot restore).
   * Its watchers wake once the I/O this turn started is under way: on a leader, the commit
   * goes out to the followers (whose watchers wait for it) before this node spends the turn
   * answering its own watchers.
   */
  changed(service: string | null): void {
    if (this.pending === null) {
      this.pending = new Set();
      setImmediate(() => this.wakePending());
    }
    this.pending.add(service);
  }

  private wakePending(): void {
    const services = this.pending ?? new Set();
    this.pending = null;
    const woken = services.has(null)
      ? [...this.byService.values()].flatMap((set) => [...set])
      : [...services].flatMap((service) => [...(this.byService.get(service as string) ?? [])]);
    const listChanged = [...services].some((service) => service === null || !service.includes(":"));
    for (const waiter of listChanged ? [...woken, ...this.listWaiters] : woken) waiter.wake();
  }

  /** How many are waiting, for metrics. */
  get size(): number {
    let count = this.listWaiters.size;
    for (const set of this.byService.values()) count += set.size;
    return count;
  }

  private setFor(service: string): Set<Waiter> {
    let set = this.byService.get(service);
    if (set === undefined) {
      set = new Set();
      this.byService.set(service, set);
    }
    return set;
  }
}
