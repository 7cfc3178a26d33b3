/** A parked blocking query or watch stream, woken by a change to what it watches. */
interface Waiter {
  readonly wake: () => void;
}

/**
 * Blocking queries and watch streams, per service: a change to one service wakes the
 * watchers of that service and of the service list, and nobody else.
 */
export class Watches {
  private readonly byService = new Map<string, Set<Waiter>>();
  private readonly listWaiters = new Set<Waiter>();

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

  /** A change to `service` (null: everything may have changed, as after a snapshot restore). */
  changed(service: string | null): void {
    const woken =
      service === null
        ? [...this.byService.values()].flatMap((set) => [...set])
        : [...(this.byService.get(service) ?? [])];
    for (const waiter of [...woken, ...this.listWaiters]) waiter.wake();
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
