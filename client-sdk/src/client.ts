import type { Response } from "undici";
import { type DiscoverOptions, ServiceView } from "./discovery.js";
import { Candidate, ElectionObserver, type ElectOptions } from "./election.js";
import { fetchFromService, type ServiceFetchInit } from "./fetch.js";
import { type Answer, type HttpOptions, RegistryHttp } from "./http.js";
import { acquire, type Lock, type LockOptions } from "./locks.js";
import { InstancePicker, type PickerOptions } from "./picker.js";
import { type RegisterOptions, Registration } from "./registration.js";
import { Session, type SessionOptions } from "./session.js";

export interface MusterClientOptions extends HttpOptions {
  /** Balancing of client.fetch (default round-robin with outlier ejection). */
  readonly fetch?: PickerOptions & DiscoverOptions;
}

/** What withLock's function gets. */
export interface LockContext {
  /** The fencing token: pass it to whatever the lock guards. */
  readonly token: number;
  /** Aborts if the lock is lost while the function runs. */
  readonly signal: AbortSignal;
}

/**
 * The muster client: talks to any registry node, follows the leader for writes, and fails
 * over between nodes with backoff and jitter.
 */
export class MusterClient {
  private readonly http: RegistryHttp;
  private readonly pickers = new Map<string, InstancePicker>();
  private readonly owned = new Set<{ close(): void | Promise<void> }>();

  constructor(private readonly options: MusterClientOptions) {
    this.http = new RegistryHttp(options);
  }

  /** Register an instance and keep it alive until its handle is closed. */
  async register(options: RegisterOptions & { signal?: AbortSignal }): Promise<Registration> {
    const registration = new Registration(this.http, options);
    await registration.start(options.signal);
    return registration;
  }

  /** A live view of a service's instances (close it when done). */
  discover(service: string, options: DiscoverOptions = {}): ServiceView {
    return this.own(new ServiceView(this.http, service, options));
  }

  /** Choose instances of a service from a live view with a balancer and outlier ejection. */
  balancer(service: string, options: PickerOptions & DiscoverOptions = {}): InstancePicker {
    const view = this.discover(service, options);
    return new InstancePicker(view, options);
  }

  /**
   * fetch() with a service name as host (`http://web/path`): resolved through a balancer;
   * connection errors move on to another instance.
   */
  async fetch(url: string | URL, init: ServiceFetchInit = {}): Promise<Response> {
    const target = new URL(url);
    const service = target.hostname;
    let picker = init.balancer ?? this.pickers.get(service);
    if (picker === undefined) {
      picker = this.balancer(service, this.options.fetch);
      this.pickers.set(service, picker);
    }
    const timeoutMs = this.options.deadlineMs ?? 30_000;
    await picker.view.ready(init.signal ? { signal: init.signal, timeoutMs } : { timeoutMs });
    return fetchFromService(picker, target, init);
  }

  /** A session renewed in the background, for locks and elections that share it. */
  session(options: SessionOptions = {}, signal?: AbortSignal): Promise<Session> {
    return Session.create(this.http, options, signal);
  }

  /** Take a lock, waiting in line; release() it when done. */
  lock(name: string, options: LockOptions = {}): Promise<Lock> {
    return acquire(this.http, "lock", name, options);
  }

  /** Run `fn` while holding the lock; it is released when `fn` settles. */
  async withLock<T>(
    name: string,
    fn: (context: LockContext) => Promise<T> | T,
    options: LockOptions = {},
  ): Promise<T> {
    const lock = await this.lock(name, options);
    try {
      return await fn({ token: lock.token, signal: lock.signal });
    } finally {
      await lock.release();
    }
  }

  /** Campaign in an election with `value` as this candidate's identity. */
  elect(name: string, value: string, options: ElectOptions = {}): Candidate {
    return this.own(new Candidate(this.http, name, value, options));
  }

  /** Every change of an election's leader. */
  observe(name: string): ElectionObserver {
    return this.own(new ElectionObserver(this.http, name));
  }

  private own<T extends { close(): void | Promise<void> }>(thing: T): T {
    this.owned.add(thing);
    return thing;
  }

  /** A raw call to the registry's HTTP API, with the client's failover. */
  call(method: string, path: string, body?: unknown): Promise<Answer> {
    return this.http.call(method, path, {
      ...(body === undefined ? {} : { body }),
      write: method !== "GET",
    });
  }

  /**
   * Stop every view, observer and candidate of this client and drop its connections.
   * Close registrations first: their drain needs the connections.
   */
  async close(): Promise<void> {
    await Promise.all([...this.owned].map((owned) => owned.close()));
    this.owned.clear();
    this.pickers.clear();
    await this.http.close();
  }
}
