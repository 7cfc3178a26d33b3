import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:os";
import { setTimeout as delay } from "node:timers/promises";
import { InvalidArgumentError } from "commander";
import { ApiFetch, describeFetchFailure } from "./api-fetch.js";
import type { TlsMaterial } from "./tls-files.js";

/**
 * `muster lock NAME -- COMMAND` and `muster elect NAME --value V -- COMMAND`, like `consul
 * lock`: hold a lock (or win an election) through a session renewed in the background, run
 * COMMAND with the fencing token in its environment, stop it with SIGTERM if the lock is
 * lost, release and end the session when it exits, and exit with its status.
 */

export type LockCommandKind = "lock" | "election";

export interface LockCommandOptions {
  readonly kind: LockCommandKind;
  readonly name: string;
  /** HTTP addresses (host:port) of muster nodes, tried in order. */
  readonly addresses: readonly string[];
  /** HTTPS with this CA (and client certificate); null: plain HTTP. */
  readonly tls: TlsMaterial | null;
  readonly ttlMs: number;
  /** The session's lockDelay; the server's default when undefined. */
  readonly lockDelayMs?: number;
  /** How long to wait for the lock; 0 tries once. */
  readonly waitMs: number;
  /** The holder's value (an election's leader identity). */
  readonly value?: string;
  /** The ACL token's secret; null: none. */
  readonly token: string | null;
  /** Timeout of each HTTP request (a blocking one gets its wait on top). */
  readonly requestTimeoutMs: number;
  /** After the lock is lost and COMMAND was sent SIGTERM, SIGKILL after this long. */
  readonly killAfterMs?: number;
  /** COMMAND and its arguments. */
  readonly command: readonly string[];
  /** Where messages go; stderr by default. */
  readonly log?: (line: string) => void;
}

interface Endpoints {
  readonly noun: string;
  readonly path: string;
  readonly take: string;
  readonly give: string;
  /** Field of GET and of a 409 that names the holder. */
  readonly holderField: "holder" | "leader";
  readonly tokenEnv: string;
  readonly nameEnv: string;
}

const endpoints: Record<LockCommandKind, Endpoints> = {
  lock: {
    noun: "lock",
    path: "/v1/locks",
    take: "acquire",
    give: "release",
    holderField: "holder",
    tokenEnv: "MUSTER_LOCK_TOKEN",
    nameEnv: "MUSTER_LOCK_NAME",
  },
  election: {
    noun: "election",
    path: "/v1/elections",
    take: "campaign",
    give: "resign",
    holderField: "leader",
    tokenEnv: "MUSTER_ELECTION_TOKEN",
    nameEnv: "MUSTER_ELECTION_NAME",
  },
};

/** The server takes at most 5 m per blocking acquire; shorter rounds notice a dead node sooner. */
const acquireRoundMs = 30_000;
/** Wait of each blocking read that watches the holder. */
const watchRoundMs = 30_000;
/** A forwarded blocking request may take this long beyond its wait (the server allows 5 s). */
const blockingMarginMs = 6000;
const defaultKillAfterMs = 10_000;
/** Release and session deletion at the end take at most this long in all. */
const cleanupLimitMs = 10_000;

const lockNamePattern = /^[A-Za-z0-9._/-]{1,128}$/;

const forwardedSignals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
type ForwardedSignal = (typeof forwardedSignals)[number];

export interface HttpAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** The cluster could not be reached: every attempt failed or answered 429/502/503/504. */
export class UnreachableError extends Error {}

/** A small JSON client over a list of nodes: every request has a timeout; retries are bounded. */
export class MusterHttpClient {
  private readonly addresses: string[];
  private current = 0;

  constructor(
    addresses: readonly string[],
    private readonly timeoutMs: number,
    private readonly api: ApiFetch,
    /** The ACL token's secret, sent with every request; null: none. */
    private readonly token: string | null = null,
  ) {
    if (addresses.length === 0) throw new Error("no muster HTTP address");
    this.addresses = [...addresses];
  }

  /** Fall back to these nodes too (after the ones given). */
  addFallbacks(addresses: readonly string[]): void {
    for (const address of addresses)
      if (!this.addresses.includes(address)) this.addresses.push(address);
  }

  /**
   * One request, moving on to the next node after a network error, a timeout or a 429/502/
   * 503/504, at most `attempts` times with a short backoff; any other answer is returned.
   */
  async call(
    method: string,
    path: string,
    options: { body?: unknown; timeoutMs?: number; attempts?: number; signal?: AbortSignal } = {},
  ): Promise<HttpAnswer> {
    const attempts = options.attempts ?? Math.max(3, this.addresses.length + 1);
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    let failure = "";
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0)
        await delay(Math.min(100 * 2 ** (attempt - 1), 1000), undefined, {
          signal: options.signal,
        });
      const address = this.addresses[this.current % this.addresses.length] as string;
      try {
        const answer = await this.once(address, method, path, options.body, timeoutMs, options);
        if (![429, 502, 503, 504].includes(answer.status)) return answer;
        failure = `${address} answered ${answer.status}: ${errorMessage(answer)}`;
      } catch (error) {
        if (options.signal?.aborted === true) throw options.signal.reason ?? error;
        failure = `${address}: ${describeFetchFailure(error, timeoutMs)}`;
      }
      this.current = (this.current + 1) % this.addresses.length;
    }
    throw new UnreachableError(`${method} ${path} failed (${failure})`);
  }

  private async once(
    address: string,
    method: string,
    path: string,
    body: unknown,
    timeoutMs: number,
    options: { signal?: AbortSignal },
  ): Promise<HttpAnswer> {
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal =
      options.signal === undefined ? timeout : AbortSignal.any([timeout, options.signal]);
    const headers: Record<string, string> = {};
    if (this.token !== null) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await this.api.fetch(address, path, {
      method,
      headers,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal,
    });
    const text = await response.text();
    let parsed: unknown = {};
    try {
      parsed = text === "" ? {} : JSON.parse(text);
    } catch {
      parsed = { error: { message: text.slice(0, 200) } };
    }
    return {
      status: response.status,
      body:
        typeof parsed === "object" && parsed !== null ? (parsed as Record<string, unknown>) : {},
    };
  }
}

export function errorMessage(answer: HttpAnswer): string {
  const error = answer.body.error as { message?: unknown } | undefined;
  return typeof error?.message === "string" ? error.message : `HTTP ${answer.status}`;
}

function formatMs(ms: number): string {
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** A command-line lock or election name, as the HTTP API takes it. */
export function parseLockName(text: string): string {
  if (!lockNamePattern.test(text))
    throw new InvalidArgumentError(`"${text}" is not a name (1-128 of letters, digits, . _ / -)`);
  return text;
}

/**
 * "host:port[,host:port...]" -> addresses; an http:// prefix is dropped, an https:// one kept
 * (HTTPS with the system's CAs unless --tls-ca is given).
 */
export function parseHttpAddresses(text: string): string[] {
  const addresses = text
    .split(",")
    .map((address) =>
      address
        .trim()
        .replace(/^http:\/\//, "")
        .replace(/\/$/, ""),
    )
    .filter((address) => address !== "");
  const bad = addresses.find(
    (address) =>
      !/^([^\s:/[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$/.test(address.replace(/^https:\/\//, "")),
  );
  if (addresses.length === 0 || bad !== undefined)
    throw new InvalidArgumentError(`"${bad ?? text}" is not an address like 127.0.0.1:7700`);
  return addresses;
}

interface Holder {
  readonly session: string;
  readonly token: number;
  readonly value: string;
}

function holderOf(body: Record<string, unknown>, field: string): Holder | null {
  const holder = body[field] as Partial<Holder> | null | undefined;
  if (typeof holder !== "object" || holder === null || typeof holder.session !== "string")
    return null;
  return {
    session: holder.session,
    token: typeof holder.token === "number" ? holder.token : Number.NaN,
    value: typeof holder.value === "string" ? holder.value : "",
  };
}

type Acquired = { readonly token: number } | { readonly failed: string };

/** Runs `muster lock` / `muster elect`; resolves with the exit status to exit with. */
export async function runLockCommand(options: LockCommandOptions): Promise<number> {
  return new LockRunner(options).run();
}

class LockRunner {
  private readonly client: MusterHttpClient;
  private readonly ends: Endpoints;
  private readonly log: (line: string) => void;
  /** Aborted when waiting should stop: a signal came or the session ended. */
  private readonly halt = new AbortController();
  private interrupted: ForwardedSignal | null = null;
  private lost: string | null = null;
  private child: ChildProcess | null = null;
  private killTimer: NodeJS.Timeout | null = null;

  constructor(private readonly options: LockCommandOptions) {
    this.client = new MusterHttpClient(
      options.addresses,
      options.requestTimeoutMs,
      new ApiFetch(options.tls),
      options.token,
    );
    this.ends = endpoints[options.kind];
    const prefix = `muster ${options.kind === "lock" ? "lock" : "elect"}`;
    const write = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
    this.log = (line) => write(`${prefix}: ${line}`);
  }

  private get what(): string {
    return `${this.ends.noun} "${this.options.name}"`;
  }

  private get namePath(): string {
    return `${this.ends.path}/${encodeURIComponent(this.options.name)}`;
  }

  async run(): Promise<number> {
    const onSignal = (signal: ForwardedSignal) => this.onSignal(signal);
    for (const signal of forwardedSignals) process.on(signal, onSignal);
    try {
      return await this.main();
    } finally {
      for (const signal of forwardedSignals) process.off(signal, onSignal);
      if (this.killTimer !== null) clearTimeout(this.killTimer);
    }
  }

  private onSignal(signal: ForwardedSignal): void {
    const child = this.child;
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      return;
    }
    if (this.interrupted !== null) return;
    this.interrupted = signal;
    this.halt.abort();
  }

  private interruptedStatus(): number {
    return 128 + (this.interrupted === null ? 0 : constants.signals[this.interrupted]);
  }

  /** The lock is no longer ours: stop waiting, or stop COMMAND. */
  private loseLock(reason: string): void {
    if (this.lost !== null) return;
    this.lost = reason;
    this.halt.abort();
    const child = this.child;
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      this.log(`lost the ${this.what}: ${reason}; stopping the command with SIGTERM`);
      child.kill("SIGTERM");
      this.killTimer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) {
          this.log("the command did not stop; sending SIGKILL");
          child.kill("SIGKILL");
        }
      }, this.options.killAfterMs ?? defaultKillAfterMs);
    }
  }

  private async main(): Promise<number> {
    let session: string;
    try {
      session = await this.createSession();
    } catch (error) {
      if (this.interrupted !== null) return this.interruptedStatus();
      this.log(`could not create a session: ${(error as Error).message}`);
      return 1;
    }
    await this.discoverFallbacks();
    const keeper = this.keepAlive(session);
    let held = false;
    try {
      const acquired = await this.acquire(session);
      if ("failed" in acquired) {
        if (this.interrupted !== null) {
          this.log(`${this.interrupted} while waiting for the ${this.what}; gave up`);
          return this.interruptedStatus();
        }
        this.log(acquired.failed);
        return 1;
      }
      held = true;
      if (this.interrupted !== null) return this.interruptedStatus();
      return await this.runCommand(session, acquired.token);
    } finally {
      await keeper.stop();
      await this.cleanUp(session, held);
    }
  }

  private async createSession(): Promise<string> {
    const { kind, name, ttlMs, lockDelayMs } = this.options;
    const answer = await this.client.call("POST", "/v1/sessions", {
      body: {
        ttl: `${ttlMs}ms`,
        behavior: "release",
        name: `muster ${kind} ${name}`.slice(0, 128),
        ...(lockDelayMs === undefined ? {} : { lockDelay: `${lockDelayMs}ms` }),
      },
      signal: this.halt.signal,
    });
    if (answer.status !== 200 || typeof answer.body.id !== "string")
      throw new Error(errorMessage(answer));
    return answer.body.id;
  }

  /** The cluster's other nodes become fallbacks, so a node that dies does not take us down. */
  private async discoverFallbacks(): Promise<void> {
    try {
      const answer = await this.client.call("GET", "/v1/cluster/members?consistency=stale", {
        attempts: 1,
        timeoutMs: Math.min(this.options.requestTimeoutMs, 2000),
      });
      const members = answer.body.members;
      if (answer.status !== 200 || !Array.isArray(members)) return;
      this.client.addFallbacks(
        members
          .map((member) => (member as { http?: unknown }).http)
          .filter((http): http is string => typeof http === "string" && http !== ""),
      );
    } catch {
      // Best effort: the addresses given still work.
    }
  }

  /**
   * Renew the session every third of its TTL. A 404 means it ended; failing to renew for a
   * whole TTL means it may have ended: either way the lock is lost.
   */
  private keepAlive(session: string): { stop: () => Promise<void> } {
    const stopper = new AbortController();
    const { ttlMs, requestTimeoutMs } = this.options;
    const everyMs = Math.max(Math.floor(ttlMs / 3), 100);
    const loop = async () => {
      let renewedAt = Date.now();
      let waitMs = everyMs;
      while (!stopper.signal.aborted) {
        try {
          await delay(waitMs, undefined, { signal: stopper.signal });
        } catch {
          return;
        }
        const sentAt = Date.now();
        // Retries stop when the TTL would have run out: by then the session may be gone.
        const expiry = AbortSignal.timeout(Math.max(renewedAt + ttlMs - sentAt, 1));
        let failure = "no answer before the TTL ran out";
        try {
          const answer = await this.client.call("PUT", `/v1/sessions/${session}/renew`, {
            timeoutMs: Math.min(requestTimeoutMs, everyMs),
            signal: AbortSignal.any([stopper.signal, expiry]),
          });
          if (answer.status === 200) {
            renewedAt = sentAt;
            waitMs = Math.max(everyMs - (Date.now() - sentAt), 0);
            continue;
          }
          if (answer.status === 404) {
            this.loseLock(`its session ${session} ended (expired or deleted)`);
            return;
          }
          failure = `answered ${answer.status}: ${errorMessage(answer)}`;
        } catch (error) {
          if (stopper.signal.aborted) return;
          if (!expiry.aborted) failure = (error as Error).message;
        }
        if (Date.now() - renewedAt >= ttlMs) {
          this.loseLock(`could not renew session ${session} for its whole TTL (${failure})`);
          return;
        }
        waitMs = Math.min(500, everyMs, Math.max(renewedAt + ttlMs - Date.now(), 0));
      }
    };
    const running = loop();
    return {
      stop: async () => {
        stopper.abort();
        await running;
      },
    };
  }

  /** Take the lock, in blocking rounds, until granted or --wait ends. */
  private async acquire(session: string): Promise<Acquired> {
    const { waitMs, value, requestTimeoutMs } = this.options;
    const deadline = Date.now() + waitMs;
    let holder: Holder | null = null;
    let problem: string | null = null;
    for (;;) {
      if (this.halt.signal.aborted) return this.halted();
      const roundMs = Math.max(0, Math.min(deadline - Date.now(), acquireRoundMs));
      const sentAt = Date.now();
      let answer: HttpAnswer | null = null;
      try {
        answer = await this.client.call("POST", `${this.namePath}/${this.ends.take}`, {
          body: { session, ...(value === undefined ? {} : { value }), wait: `${roundMs}ms` },
          timeoutMs: roundMs + requestTimeoutMs + blockingMarginMs,
          // This loop retries (through the next node) with a round that respects --wait.
          attempts: 1,
          signal: this.halt.signal,
        });
      } catch (error) {
        if (this.halt.signal.aborted) return this.halted();
        problem = (error as Error).message;
      }
      if (answer?.status === 200 && typeof answer.body.token === "number")
        return { token: answer.body.token };
      if (answer?.status === 404) {
        this.loseLock(`its session ${session} ended while waiting`);
        return this.halted();
      }
      if (answer !== null && answer.status !== 409)
        return { failed: `could not acquire the ${this.what}: ${errorMessage(answer)}` };
      if (answer !== null) {
        holder = holderOf(answer.body, this.ends.holderField);
        problem = null;
      }
      if (Date.now() >= deadline) return { failed: this.timedOut(holder, problem) };
      // A round that came back early (an error, or a 409 before its wait) waits a little.
      const early = Date.now() - sentAt < roundMs / 2;
      if (answer === null || early)
        await delay(answer === null ? 1000 : 100, undefined, { signal: this.halt.signal }).catch(
          () => undefined,
        );
    }
  }

  private halted(): Acquired {
    return { failed: `could not acquire the ${this.what}: ${this.lost ?? "interrupted"}` };
  }

  private timedOut(holder: Holder | null, problem: string | null): string {
    const within = `within ${formatMs(this.options.waitMs)}`;
    if (problem !== null) return `could not acquire the ${this.what} ${within}: ${problem}`;
    if (holder === null) return `could not acquire the ${this.what} ${within}`;
    const value = holder.value === "" ? "" : `, value "${holder.value}"`;
    return (
      `could not acquire the ${this.what} ${within}: held by session ${holder.session}` +
      ` (token ${holder.token}${value})`
    );
  }

  private async runCommand(session: string, token: number): Promise<number> {
    const watchStop = new AbortController();
    const watching = this.watchHolder(
      session,
      token,
      AbortSignal.any([watchStop.signal, this.halt.signal]),
    );
    if (this.lost !== null) {
      this.log(`lost the ${this.what} before the command started: ${this.lost}`);
      watchStop.abort();
      await watching;
      return 1;
    }
    const status = await this.spawnCommand(session, token);
    watchStop.abort();
    await watching;
    if (this.lost !== null) {
      this.log(`the command ran without the ${this.what} at the end: ${this.lost}`);
      return status === 0 ? 1 : status;
    }
    return status;
  }

  private spawnCommand(session: string, token: number): Promise<number> {
    const [file, ...args] = this.options.command;
    if (file === undefined) return Promise.resolve(2);
    return new Promise((resolve) => {
      const child = spawn(file, args, {
        stdio: "inherit",
        env: {
          ...process.env,
          [this.ends.tokenEnv]: String(token),
          [this.ends.nameEnv]: this.options.name,
          MUSTER_SESSION: session,
        },
      });
      this.child = child;
      child.once("error", (error: NodeJS.ErrnoException) => {
        this.log(`could not run ${file}: ${error.message}`);
        resolve(error.code === "ENOENT" ? 127 : 126);
      });
      child.once("exit", (code, signal) => {
        if (this.killTimer !== null) clearTimeout(this.killTimer);
        resolve(code ?? 128 + (signal === null ? 0 : constants.signals[signal]));
      });
    });
  }

  /**
   * Blocking reads of the lock, each from the index last seen: once the holder is another
   * session or another token, the lock is lost. A lagging node answers only past that index.
   */
  private async watchHolder(session: string, token: number, signal: AbortSignal): Promise<void> {
    let index = token;
    const { requestTimeoutMs } = this.options;
    while (!signal.aborted) {
      const sentAt = Date.now();
      let answer: HttpAnswer;
      try {
        answer = await this.client.call(
          "GET",
          `${this.namePath}?index=${index}&wait=${watchRoundMs}ms`,
          {
            timeoutMs: watchRoundMs + requestTimeoutMs + blockingMarginMs,
            signal,
          },
        );
      } catch {
        if (signal.aborted) return;
        await delay(1000, undefined, { signal }).catch(() => undefined);
        continue;
      }
      if (signal.aborted) return;
      if (answer.status === 200) {
        const holder = holderOf(answer.body, this.ends.holderField);
        if (holder === null) {
          this.loseLock(`the ${this.ends.noun} was freed (session ${session} no longer holds it)`);
          return;
        }
        if (holder.session !== session || holder.token !== token) {
          this.loseLock(
            `the ${this.ends.noun} is now held by session ${holder.session} (token ${holder.token})`,
          );
          return;
        }
        const next = Number(answer.body.index);
        if (Number.isFinite(next) && next > index) {
          index = next;
          continue;
        }
      }
      // No progress: do not spin if an answer came back at once.
      if (Date.now() - sentAt < 1000)
        await delay(1000, undefined, { signal }).catch(() => undefined);
    }
  }

  /** Release the lock (no lockDelay after an explicit release), then end the session. */
  private async cleanUp(session: string, held: boolean): Promise<void> {
    const limit = AbortSignal.timeout(cleanupLimitMs);
    const timeoutMs = Math.min(this.options.requestTimeoutMs, 3000);
    if (held && this.lost === null) {
      try {
        const answer = await this.client.call("POST", `${this.namePath}/${this.ends.give}`, {
          body: { session },
          timeoutMs,
          attempts: 3,
          signal: limit,
        });
        // 409: not the holder any more; 404: the session is gone. Both leave nothing to do.
        if (![200, 404, 409].includes(answer.status))
          this.log(`could not ${this.ends.give} the ${this.what}: ${errorMessage(answer)}`);
      } catch (error) {
        this.log(
          `could not ${this.ends.give} the ${this.what}: ${(error as Error).message};` +
            " ending the session releases it",
        );
      }
    }
    try {
      const answer = await this.client.call("DELETE", `/v1/sessions/${session}`, {
        timeoutMs,
        attempts: 3,
        signal: limit,
      });
      if (![200, 404].includes(answer.status))
        this.log(`could not end session ${session}: ${errorMessage(answer)}`);
    } catch (error) {
      this.log(
        `could not end session ${session}: ${(error as Error).message}; it expires after its TTL`,
      );
    }
  }
}
