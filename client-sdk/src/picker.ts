import {
  type Balancer,
  type BalancerOptions,
  type BalancerPolicy,
  createBalancer,
} from "./balancers.js";
import type { ServiceView } from "./discovery.js";
import { type EjectionOptions, Outliers } from "./outliers.js";
import type { Instance } from "./types.js";

export interface PickerOptions extends BalancerOptions {
  /** Load-balancing policy (default "round-robin"). */
  readonly policy?: BalancerPolicy;
  /** Outlier ejection per instance; false turns it off. */
  readonly ejection?: EjectionOptions | false;
}

/** No instance of the service can take a call. */
export class NoInstanceError extends Error {
  override readonly name = "NoInstanceError";
}

/**
 * Chooses instances of one service: the balancer's policy over the live view, skipping
 * ejected outliers. When every instance is ejected it chooses among all of them anyway
 * (panic mode): a guess beats failing every call.
 */
export class InstancePicker {
  readonly balancer: Balancer;
  private readonly outliers: Outliers | null;
  private retained: readonly Instance[] | null = null;

  constructor(
    readonly view: ServiceView,
    options: PickerOptions = {},
  ) {
    this.balancer = createBalancer(options.policy ?? "round-robin", options);
    this.outliers = options.ejection === false ? null : new Outliers(options.ejection);
  }

  /** An instance for the next call, or undefined when the view is empty. */
  pick(options: { key?: string; exclude?: ReadonlySet<string> } = {}): Instance | undefined {
    const all = this.view.instances;
    this.forgetDeparted(all);
    const exclude = options.exclude;
    const untried = exclude === undefined ? all : all.filter((i) => !exclude.has(i.id));
    const pool = untried.length > 0 ? untried : all;
    const outliers = this.outliers;
    const eligible = outliers === null ? pool : pool.filter((i) => outliers.eligible(i.id));
    return this.balancer.pick(eligible.length > 0 ? eligible : pool, options.key);
  }

  /**
   * Make one call to `instance`, timing it for the balancer and counting its outcome for
   * outlier ejection: the call fails when it throws.
   */
  async run<T>(instance: Instance, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const started = performance.now();
    this.balancer.begin(instance.id);
    let ok = false;
    try {
      // In panic mode (every instance ejected) the call bypasses the breaker.
      const result =
        this.outliers === null || !this.outliers.eligible(instance.id)
          ? await call(new AbortController().signal)
          : await this.outliers.run(instance.id, call);
      ok = true;
      return result;
    } finally {
      this.balancer.end(instance.id, performance.now() - started, ok);
    }
  }

  private forgetDeparted(all: readonly Instance[]): void {
    if (this.retained === all || this.outliers === null) return;
    this.retained = all;
    this.outliers.retain(new Set(all.map((i) => i.id)));
  }
}
