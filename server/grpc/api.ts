import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { parseDuration } from "../config.js";
import { labelPattern } from "../http/schemas.js";

/**
 * The gRPC API. Every call goes through the HTTP API in process (fastify's inject), so both
 * surfaces share one implementation of validation, forwarding to the leader and errors.
 * The one exception is a KeepAlive heartbeat the leader can take on the spot, which only
 * renews a TTL in memory: everything else about it still goes through HTTP.
 */

const protoFile = fileURLToPath(new URL("../../proto/muster/v1/muster.proto", import.meta.url));
const healthRefreshMs = 250;
/** A Watch asks in rounds of this long, so that a cancelled call is noticed. */
const watchRoundMs = 30_000;

export interface HttpCall {
  readonly method: "GET" | "PUT" | "POST" | "DELETE";
  readonly url: string;
  readonly body?: unknown;
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: Record<string, unknown>;
  readonly body: Record<string, unknown>;
}

/** What the gRPC API needs of its agent. */
export interface GrpcBackend {
  /** `caller`: the gRPC client's address (limits count its calls as its own) and token. */
  http(call: HttpCall, caller: GrpcCaller): Promise<HttpAnswer>;
  /**
   * A heartbeat this node can take on the spot (it only renews a TTL on the leader): the
   * instance's status; null when it must go through HTTP.
   */
  renew(ref: { service: string; id: string }, body: Fields, caller: GrpcCaller): string | null;
  /** The gRPC address of the leader this node knows, for UNAVAILABLE's hint. */
  leaderGrpc(): string | null;
  hasLeader(): boolean;
}

export interface GrpcCaller {
  readonly address: string;
  /** The call's `authorization` and `x-muster-token` metadata, which HTTP reads the token from. */
  readonly headers: Readonly<Record<string, string>>;
}

/** Metadata passed on to HTTP as headers of the same name. */
const tokenHeaders = ["authorization", "x-muster-token"] as const;

type Fields = Record<string, unknown>;

const statusOf: Record<number, grpc.status> = {
  400: grpc.status.INVALID_ARGUMENT,
  403: grpc.status.PERMISSION_DENIED,
  404: grpc.status.NOT_FOUND,
  409: grpc.status.FAILED_PRECONDITION,
  413: grpc.status.RESOURCE_EXHAUSTED,
  414: grpc.status.INVALID_ARGUMENT,
  429: grpc.status.RESOURCE_EXHAUSTED,
  503: grpc.status.UNAVAILABLE,
};

const maxStatusDetails = 1024;
const serviceName = new RegExp(labelPattern);

/**
 * Status details travel in a header: one that echoes a huge request field (the health
 * service names the service it does not know) would stall the connection.
 */
const boundedStatusDetails: grpc.ServerInterceptor = (_method, call) =>
  new grpc.ServerInterceptingCall(call, {
    sendStatus: (status, next) =>
      next(
        status.details !== undefined && status.details.length > maxStatusDetails
          ? { ...status, details: `${status.details.slice(0, maxStatusDetails)}...` }
          : status,
      ),
  });

/** The client's IP address (from grpc-js's "host:port" peer) and the token metadata it sent. */
function callerOf(call: { getPeer(): string; metadata: grpc.Metadata }): GrpcCaller {
  const peer = call.getPeer();
  const colon = peer.lastIndexOf(":");
  const headers: Record<string, string> = {};
  for (const key of tokenHeaders) {
    const value = call.metadata.get(key)[0];
    if (typeof value === "string") headers[key] = value;
  }
  return {
    address: (colon > 0 ? peer.slice(0, colon) : peer).replace(/^\[(.*)\]$/, "$1"),
    headers,
  };
}

/** An error that ends a streaming call with INVALID_ARGUMENT naming `field`. */
function invalidArgument(field: string, details: string): Error {
  const metadata = new grpc.Metadata();
  metadata.set("field", field);
  metadata.set("muster-code", "MUSTER_ERR_BAD_REQUEST");
  return Object.assign(new Error(details), {
    code: grpc.status.INVALID_ARGUMENT,
    details,
    metadata,
  });
}

/** Marks a streamed request message that did not decode. */
const undecodable = Symbol("undecodable");

/**
 * grpc-js fails a stream whose message does not decode on its own, racing the handler's
 * writes of earlier answers (now and then the call never ends). Instead the message reaches
 * the handler, marked, and the handler ends the call after those answers.
 */
function undecodableReachesHandler(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const methods = Object.entries(definition).map(([name, method]) => {
    if (!method.requestStream) return [name, method];
    const decode = method.requestDeserialize;
    const tolerant = (bytes: Buffer) => {
      try {
        return decode(bytes);
      } catch {
        return { [undecodable]: true };
      }
    };
    return [name, { ...method, requestDeserialize: tolerant }];
  });
  return Object.fromEntries(methods);
}

/** An HTTP error answer as a gRPC status, with the field (or leader) in metadata. */
function toError(answer: HttpAnswer, backend: GrpcBackend): Partial<grpc.StatusObject> {
  const raw = answer.body.error;
  const metadata = new grpc.Metadata();
  if (typeof raw !== "object" || raw === null) {
    // Not one of the API's errors: the router found no route, or refused the path itself,
    // because a name in the request was empty, a dot segment or far too long.
    metadata.set("muster-code", "MUSTER_ERR_BAD_REQUEST");
    return {
      code: grpc.status.INVALID_ARGUMENT,
      details: "a name in the request is empty, a dot segment or too long",
      metadata,
    };
  }
  const error = raw as { code?: string; message?: string; field?: string; permission?: string };
  // Metadata values are printable ASCII; a field named after a key of the request may not be.
  if (error.field !== undefined)
    metadata.set(
      "field",
      /^[\x20-\x7e]*$/.test(error.field) ? error.field : encodeURIComponent(error.field),
    );
  if (error.code !== undefined) metadata.set("muster-code", error.code);
  if (error.permission !== undefined) metadata.set("permission", error.permission);
  const leader = backend.leaderGrpc();
  if (answer.status === 503 && leader !== null) metadata.set("leader", leader);
  return {
    code: statusOf[answer.status] ?? grpc.status.INTERNAL,
    details: error.message ?? `HTTP ${answer.status}`,
    metadata,
  };
}

/**
 * A blocking wait never outlasts the call's deadline: the waiter leaves the queue (in the
 * state machine) before the client stops listening. A bad duration is left for HTTP to refuse.
 */
function waitWithin(wait: unknown, remainingMs: number | null): unknown {
  if (remainingMs === null || typeof wait !== "string" || wait === "") return wait;
  let asked: number;
  try {
    asked = parseDuration(wait);
  } catch {
    return wait;
  }
  // Leave a moment for the answer to travel back.
  return `${Math.max(0, Math.floor(Math.min(asked, remainingMs - 200)))}ms`;
}

/** Path segments and query values go into URLs escaped. */
function segment(value: unknown): string {
  return encodeURIComponent(String(value ?? ""));
}

function query(params: Record<string, unknown>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === "" || value === false) continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(key, String(item));
  }
  const text = search.toString();
  return text === "" ? "" : `?${text}`;
}

/** Only the fields the caller set: proto3 leaves the others unset, HTTP applies its defaults. */
function present(fields: Fields): Fields {
  return Object.fromEntries(
    Object.entries(fields).filter(([, value]) => value !== undefined && value !== ""),
  );
}

export class GrpcApi {
  private readonly server: grpc.Server;
  private readonly health = new HealthImplementation({ "": "NOT_SERVING" });
  private readonly timer: NodeJS.Timeout;

  private constructor(
    private readonly backend: GrpcBackend,
    readonly port: number,
    server: grpc.Server,
  ) {
    this.server = server;
    this.timer = setInterval(() => this.refreshHealth(), healthRefreshMs);
    this.timer.unref();
    this.refreshHealth();
  }

  /** `credentials`: TLS (see server/tls.ts) or insecure. */
  static async start(
    listen: string,
    backend: GrpcBackend,
    credentials: grpc.ServerCredentials,
  ): Promise<GrpcApi> {
    const definition = protoLoader.loadSync(protoFile, {
      keepCase: false,
      longs: Number,
      enums: String,
      defaults: false,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      muster: { v1: Record<string, { service: grpc.ServiceDefinition }> };
    };
    const server = new grpc.Server({
      "grpc.max_receive_message_length": 4 * 1024 * 1024,
      "grpc.max_send_message_length": 64 * 1024 * 1024,
      interceptors: [boundedStatusDetails],
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(listen, credentials, (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
    const api = new GrpcApi(backend, port, server);
    const v1 = loaded.muster.v1;
    const service = (name: string) => {
      const found = v1[name];
      if (found === undefined) throw new Error(`muster.v1.${name} missing from the proto file`);
      return found.service;
    };
    server.addService(undecodableReachesHandler(service("Registry")), api.registry());
    server.addService(service("Sessions"), api.sessions());
    server.addService(service("Locks"), api.locks());
    server.addService(service("Elections"), api.elections());
    server.addService(service("Cluster"), api.cluster());
    api.health.addToServer(server);
    new ReflectionService(definition).addToServer(server);
    return api;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    this.server.forceShutdown();
  }

  private refreshHealth(): void {
    const status = this.backend.hasLeader() ? "SERVING" : "NOT_SERVING";
    this.health.setStatus("", status);
    for (const name of ["Registry", "Sessions", "Locks", "Elections", "Cluster"]) {
      this.health.setStatus(`muster.v1.${name}`, status);
    }
  }

  /** A unary RPC answered by one HTTP call; `shape` turns the 200 answer into the reply. */
  private unary(
    /** `remainingMs`: what is left of the call's deadline (null: none), to bound any wait. */
    toHttp: (request: Fields, remainingMs: number | null) => HttpCall,
    shape: (body: Fields) => Fields,
    /** HTTP statuses besides 200 that are answers, not errors (e.g. 409 "not acquired"). */
    answers: readonly number[] = [],
  ): grpc.handleUnaryCall<Fields, Fields> {
    return (call, callback) => {
      const deadline = call.getDeadline();
      const at = deadline instanceof Date ? deadline.getTime() : Number(deadline);
      const remainingMs = Number.isFinite(at) ? Math.max(0, at - Date.now()) : null;
      this.backend
        .http(toHttp(call.request, remainingMs), callerOf(call))
        .then((answer) => {
          if (answer.status === 200 || answers.includes(answer.status)) {
            callback(null, shape(answer.body));
          } else {
            callback(toError(answer, this.backend));
          }
        })
        .catch((error: unknown) =>
          callback({ code: grpc.status.INTERNAL, details: (error as Error).message }),
        );
    };
  }

  private registry(): grpc.UntypedServiceImplementation {
    const instancePath = (r: Fields) =>
      `/v1/services/${segment(r.service)}/instances/${segment(r.id)}`;
    return {
      register: this.unary(
        (r) => ({
          method: "PUT",
          url: instancePath(r),
          body: present({
            address: r.address,
            port: r.port,
            tags: r.tags,
            meta: r.meta,
            weight: r.weight,
            version: r.version,
            ttl: r.ttl,
            status: r.status,
            session: r.session,
          }),
        }),
        (body) => ({ instance: body }),
      ),
      deregister: this.unary(
        (r) => ({ method: "DELETE", url: instancePath(r) }),
        () => ({}),
      ),
      get: this.unary(
        (r) => ({
          method: "GET",
          url: `/v1/services/${segment(r.service)}${query({ healthy: r.healthy, tag: r.tags, consistency: r.consistency })}`,
        }),
        (body) => body,
      ),
      list: this.unary(
        (r) => ({ method: "GET", url: `/v1/services${query({ consistency: r.consistency })}` }),
        (body) => body,
      ),
      watch: (call: grpc.ServerWritableStream<Fields, Fields>) => this.watch(call),
      keepAlive: (call: grpc.ServerDuplexStream<Fields, Fields>) => this.keepAlive(call),
    };
  }

  /** The current instances, then every change, each with its index; resumable from one. */
  private async watch(call: grpc.ServerWritableStream<Fields, Fields>): Promise<void> {
    const request = call.request;
    let index = Number(request.index ?? 0);
    let first = index === 0;
    let cancelled = false;
    call.on("cancelled", () => {
      cancelled = true;
    });
    const filters = { healthy: request.healthy, tag: request.tags };
    if (!serviceName.test(String(request.service ?? ""))) {
      call.emit("error", invalidArgument("service", "service must be a DNS label"));
      return;
    }
    while (!cancelled) {
      const blocking = first ? {} : { index, wait: `${watchRoundMs}ms` };
      first = false;
      const asked = performance.now();
      const answer = await this.backend.http(
        {
          method: "GET",
          url: `/v1/services/${segment(request.service)}${query({ ...filters, ...blocking })}`,
        },
        callerOf(call),
      );
      if (answer.status !== 200 && answer.status !== 404) {
        const status = toError(answer, this.backend);
        call.emit("error", Object.assign(new Error(String(status.details)), status));
        return;
      }
      const changed = Number(answer.headers["x-muster-index"] ?? 0);
      // A blocking read that came back at once with nothing new must not become a busy loop.
      if (changed <= index && index > 0 && performance.now() - asked < 100) await sleep(1000);
      if (changed > index || (index === 0 && changed === 0)) {
        index = changed;
        const instances = answer.status === 200 ? answer.body.instances : [];
        if (!cancelled) call.write({ service: request.service, index, instances });
      }
    }
  }

  /** Heartbeats and session renewals over one stream, answered in order. */
  private keepAlive(call: grpc.ServerDuplexStream<Fields, Fields>): void {
    let chain: Promise<void> = Promise.resolve();
    // Once the call failed (say, a message that does not decode), nothing more is written.
    let failed = false;
    let received = 0;
    const caller = callerOf(call);
    const send = (message: Fields) => {
      if (!failed && call.writable) call.write(message);
    };
    call.on("data", (message: Fields) => {
      const position = ++received;
      if (undecodable in message) {
        // Ends the call after the answers to every message before it, in order.
        chain = chain.then(() => {
          if (failed) return;
          failed = true;
          // grpc-js makes an emitted error the call's status, sent after what was written.
          call.emit(
            "error",
            invalidArgument("message", `message ${position} on the stream does not decode`),
          );
        });
        return;
      }
      chain = chain.then(async () => {
        // Messages queued behind one that did not decode are not acted on.
        if (failed) return;
        const heartbeat = message.heartbeat as Fields | undefined;
        const session = message.session as string | undefined;
        const body = present({ status: heartbeat?.status, output: heartbeat?.output });
        if (heartbeat !== undefined) {
          const ref = { service: String(heartbeat.service), id: String(heartbeat.id) };
          const status = this.backend.renew(ref, body, caller);
          if (status !== null) {
            send({ ok: true, status });
            return;
          }
        }
        const http: HttpCall | null =
          heartbeat !== undefined
            ? {
                method: "PUT",
                url: `/v1/services/${segment(heartbeat.service)}/instances/${segment(heartbeat.id)}/heartbeat`,
                body,
              }
            : session !== undefined
              ? { method: "PUT", url: `/v1/sessions/${segment(session)}/renew` }
              : null;
        if (http === null) {
          send({ ok: false, code: "INVALID_ARGUMENT", message: "set heartbeat or session" });
          return;
        }
        const answer = await this.backend.http(http, caller).catch(() => null);
        if (answer?.status === 200) {
          send({ ok: true, status: String(answer.body.status ?? "") });
          return;
        }
        const error = answer === null ? null : toError(answer, this.backend);
        send({
          ok: false,
          code: grpc.status[error?.code ?? grpc.status.UNAVAILABLE],
          message: error?.details ?? "no answer",
        });
      });
    });
    call.on("end", () => {
      void chain.then(() => {
        if (!failed) call.end();
      });
    });
    call.on("error", () => {
      failed = true;
    });
  }

  private sessions(): grpc.UntypedServiceImplementation {
    const session = (body: Fields) => body;
    return {
      create: this.unary(
        (r) => ({
          method: "POST",
          url: "/v1/sessions",
          body: present({ ttl: r.ttl, name: r.name, behavior: r.behavior, lockDelay: r.lockDelay }),
        }),
        session,
      ),
      renew: this.unary(
        (r) => ({ method: "PUT", url: `/v1/sessions/${segment(r.id)}/renew` }),
        session,
      ),
      destroy: this.unary(
        (r) => ({ method: "DELETE", url: `/v1/sessions/${segment(r.id)}` }),
        () => ({}),
      ),
      get: this.unary((r) => ({ method: "GET", url: `/v1/sessions/${segment(r.id)}` }), session),
    };
  }

  private locks(): grpc.UntypedServiceImplementation {
    const path = (r: Fields, action = "") => `/v1/locks/${segment(r.name)}${action}`;
    return {
      acquire: this.unary(
        (r, remainingMs) => ({
          method: "POST",
          url: path(r, "/acquire"),
          body: present({
            session: r.session,
            value: r.value,
            wait: waitWithin(r.wait, remainingMs),
          }),
        }),
        (body) => ({
          acquired: body.acquired === true,
          token: body.token ?? 0,
          holder: body.holder ?? undefined,
        }),
        [409],
      ),
      release: this.unary(
        (r) => ({
          method: "POST",
          url: path(r, "/release"),
          body: present({ session: r.session }),
        }),
        () => ({}),
      ),
      get: this.unary(
        (r) => ({ method: "GET", url: `${path(r)}${query({ consistency: r.consistency })}` }),
        (body) => ({ holder: body.holder ?? undefined, waiters: body.waiters, index: body.index }),
      ),
      check: this.unary(
        (r) => ({ method: "POST", url: path(r, "/check"), body: { token: r.token ?? 0 } }),
        (body) => ({ current: body.current === true, token: body.token ?? 0 }),
        [409],
      ),
    };
  }

  private elections(): grpc.UntypedServiceImplementation {
    const path = (r: Fields, action = "") => `/v1/elections/${segment(r.name)}${action}`;
    return {
      campaign: this.unary(
        (r, remainingMs) => ({
          method: "POST",
          url: path(r, "/campaign"),
          body: present({
            session: r.session,
            value: r.value,
            wait: waitWithin(r.wait, remainingMs),
          }),
        }),
        (body) => ({
          elected: body.elected === true,
          token: body.token ?? 0,
          leader: body.leader ?? undefined,
        }),
        [409],
      ),
      resign: this.unary(
        (r) => ({ method: "POST", url: path(r, "/resign"), body: present({ session: r.session }) }),
        () => ({}),
      ),
      get: this.unary(
        (r) => ({ method: "GET", url: `${path(r)}${query({ consistency: r.consistency })}` }),
        (body) => ({ leader: body.leader ?? undefined, index: body.index }),
      ),
    };
  }

  private cluster(): grpc.UntypedServiceImplementation {
    return {
      leader: this.unary(
        () => ({ method: "GET", url: "/v1/cluster/leader" }),
        (body) => ({ leader: body.leader ?? undefined, term: body.term }),
      ),
      members: this.unary(
        () => ({ method: "GET", url: "/v1/cluster/members" }),
        (body) => body,
      ),
    };
  }
}
