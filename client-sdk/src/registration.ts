import { EventEmitter } from "node:events";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { MusterApiError, type RegistryHttp } from "./http.js";
import { type Duration, formatMs, type Instance, type InstanceStatus, toMs } from "./types.js";

/** What a local health check reports: a status, or a status with a line of output. */
export type CheckResult =
  | InstanceStatus
  | boolean
  | { readonly status: InstanceStatus; readonly output?: string };

export interface RegisterOptions {
  readonly service: string;
  /** Unique within the service; defaults to `<hostname>-<port>`. */
  readonly id?: string;
  readonly address: string;
  readonly port: number;
  readonly tags?: readonly string[];
  readonly meta?: Readonly<Record<string, string>>;
  readonly weight?: number;
  readonly version?: string;
  /** Time without a heartbeat before the registry marks the instance critical (default 10 s). */
  readonly ttl?: Duration;
  /** Local health check run before each heartbeat; its result is sent as the status. A throw or a
   * check that takes longer than the heartbeat interval reports `critical`. */
  readonly check?: () => CheckResult | Promise<CheckResult>;
  /** Heartbeats per TTL (default 3). */
  readonly heartbeatsPerTtl?: number;
  /** On close, how long the instance stays in maintenance before it is deregistered
   * (default 5 s), so that callers stop choosing it and calls in flight finish. */
  readonly drainDelay?: Duration;
  /** Drain and deregister on SIGTERM and SIGINT (default true). */
  readonly handleSignals?: boolean;
}

const drainSignals = ["SIGTERM", "SIGINT"] as const;

/** Registrations that drain on a signal, with one handler for all of them. */
const drainedOnSignal = new Set<Registration>();

function drainAll(signal: NodeJS.Signals): void {
  // Other handlers own the shutdown; they can wait for each registration's `closed`.
  const alone = process.listenerCount(signal) === 1;
  void Promise.all([...drainedOnSignal].map((registration) => registration.close())).then(() => {
    if (alone) process.kill(process.pid, signal);
  });
}

function drainOnSignal(registration: Registration): void {
  if (drainedOnSignal.size === 0) for (const name of drainSignals) process.on(name, drainAll);
  drainedOnSignal.add(registration);
}

function stopDrainingOnSignal(registration: Registration): void {
  if (!drainedOnSignal.delete(registration) || drainedOnSignal.size > 0) return;
  for (const name of drainSignals) process.off(name, drainAll);
}

function checkResult(result: CheckResult): { status: InstanceStatus; output: string } {
  if (result === true) return { status: "passing", output: "" };
  if (result === false) return { status: "critical", output: "" };
  if (typeof result === "string") return { status: result, output: "" };
  return { status: result.status, output: result.output ?? "" };
}

/**
 * A registered instance kept alive by heartbeats. Events: "registered" (instance, on the
 * first registration and on each re-registration after the registry forgot it),
 * "trouble" (error: a heartbeat or registration failed; it is retried), "draining",
 * "deregistered".
 */
export class Registration extends EventEmitter {
  readonly id: string;
  readonly service: string;
  /** Resolves when the drain (by close() or a signal) has finished. */
  readonly closed: Promise<void>;
  private readonly body: Record<string, unknown>;
  private readonly ttlMs: number;
  private readonly intervalMs: number;
  private readonly drainDelayMs: number;
  private readonly stop = new AbortController();
  private status: InstanceStatus = "passing";
  private output = "";
  private draining: Promise<void> | null = null;
  private finish: () => void = () => undefined;
  private loop: Promise<void> = Promise.resolve();

  constructor(
    private readonly http: RegistryHttp,
    private readonly options: RegisterOptions,
  ) {
    super();
    this.service = options.service;
    this.id = options.id ?? `${hostname()}-${options.port}`.replace(/[^A-Za-z0-9._-]/g, "-");
    this.ttlMs = toMs(options.ttl ?? "10s", "ttl");
    const perTtl = options.heartbeatsPerTtl ?? 3;
    if (!(perTtl >= 1)) throw new TypeError("heartbeatsPerTtl must be at least 1");
    this.intervalMs = this.ttlMs / perTtl;
    this.drainDelayMs = toMs(options.drainDelay ?? "5s", "drainDelay");
    this.body = {
      address: options.address,
      port: options.port,
      ttl: formatMs(this.ttlMs),
      ...(options.tags === undefined ? {} : { tags: options.tags }),
      ...(options.meta === undefined ? {} : { meta: options.meta }),
      ...(options.weight === undefined ? {} : { weight: options.weight }),
      ...(options.version === undefined ? {} : { version: options.version }),
    };
    this.closed = new Promise((resolve) => {
      this.finish = resolve;
    });
  }

  private get path(): string {
    return `/v1/services/${this.service}/instances/${encodeURIComponent(this.id)}`;
  }

  /** Register, then heartbeat in the background until close(). */
  async start(signal?: AbortSignal): Promise<Instance> {
    if (this.options.check !== undefined) await this.runCheck();
    const instance = await this.register(signal);
    if (this.stop.signal.aborted) {
      // Closed while registering: the drain may have run before the registration landed.
      await this.http.call("DELETE", this.path, { write: true, deadlineMs: 10_000 });
      return instance;
    }
    if (this.options.handleSignals ?? true) drainOnSignal(this);
    this.loop = this.heartbeats();
    return instance;
  }

  /**
   * Drain: report `maintenance` and wait until the registry has committed it, keep serving
   * for the drain delay while callers move away, then deregister.
   */
  close(): Promise<void> {
    this.draining ??= this.drain();
    return this.draining;
  }

  private async drain(): Promise<void> {
    stopDrainingOnSignal(this);
    this.stop.abort();
    await this.loop;
    this.emit("draining");
    try {
      // The heartbeat answers once the status change is committed.
      await this.http.call("PUT", `${this.path}/heartbeat`, {
        body: { status: "maintenance", output: "draining" },
        write: true,
        deadlineMs: 10_000,
      });
      await sleep(this.drainDelayMs);
      await this.http.call("DELETE", this.path, { write: true, deadlineMs: 10_000 });
      this.emit("deregistered");
    } catch (error) {
      // Gone already, or unreachable: its TTL removes it.
      if (!(error instanceof MusterApiError && error.status === 404)) this.emit("trouble", error);
    } finally {
      this.finish();
    }
  }

  private async register(signal?: AbortSignal): Promise<Instance> {
    const answer = await this.http.call("PUT", this.path, {
      body: { ...this.body, status: this.status },
      write: true,
      ...(signal === undefined ? {} : { signal }),
    });
    const instance = answer.body as unknown as Instance;
    this.emit("registered", instance);
    return instance;
  }

  private async runCheck(): Promise<void> {
    const check = this.options.check;
    if (check === undefined) return;
    try {
      const limit = sleep(this.intervalMs, "timeout" as const, { ref: false });
      const result = await Promise.race([Promise.resolve(check()), limit]);
      ({ status: this.status, output: this.output } =
        result === "timeout"
          ? { status: "critical" as const, output: "health check timed out" }
          : checkResult(result));
    } catch (error) {
      this.status = "critical";
      this.output = error instanceof Error ? error.message.slice(0, 4096) : String(error);
    }
  }

  private async heartbeats(): Promise<void> {
    const signal = this.stop.signal;
    let pause = this.intervalMs;
    while (!signal.aborted) {
      const slept = await sleep(pause, true, { signal, ref: false }).catch(() => false);
      if (!slept) return;
      const started = performance.now();
      // After a failure, try again soon: a TTL holds only a few heartbeats.
      pause = Math.min(this.intervalMs, this.ttlMs / 10);
      await this.runCheck();
      try {
        await this.http.call("PUT", `${this.path}/heartbeat`, {
          body: { status: this.status, output: this.output },
          write: true,
          signal,
          // A silent node must leave time to try the others.
          timeoutMs: Math.max(250, this.intervalMs / 3),
          deadlineMs: this.intervalMs,
        });
        pause = Math.max(0, this.intervalMs - (performance.now() - started));
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof MusterApiError && error.status === 404) {
          await this.register(signal).catch((failure: unknown) => this.emit("trouble", failure));
        } else {
          this.emit("trouble", error);
        }
      }
    }
  }
}
