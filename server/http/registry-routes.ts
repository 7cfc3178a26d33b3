import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance, FastifyReply } from "fastify";
import type { Agent, Consistency } from "../agent.js";
import { parseDuration } from "../config.js";
import { MusterError } from "../errors.js";
import { type Instance, isHealthy } from "../fsm/registry.js";
import { clientOf } from "./limits.js";
import {
  formatDuration,
  HeartbeatBody,
  InstanceParams,
  ReadQuery,
  RegisterBody,
  ServiceParams,
  ServiceQuery,
  WatchQuery,
} from "./schemas.js";
import { boundedWait, openEventStream, stillAllowed } from "./streams.js";

const defaultTtlMs = 10_000;
const maxMetaValueBytes = 512;
const maxTtlMs = 24 * 3_600_000;
const defaultWaitMs = 5 * 60_000;
const maxWaitMs = 10 * 60_000;

/** An instance as the API shows it. */
export function instanceView(instance: Instance) {
  return {
    id: instance.id,
    service: instance.service,
    address: instance.address,
    port: instance.port,
    tags: instance.tags,
    meta: instance.meta,
    weight: instance.weight,
    version: instance.version,
    status: instance.effectiveStatus,
    ...(instance.output === "" ? {} : { output: instance.output }),
    ...(instance.session === null ? {} : { session: instance.session }),
    ttl: formatDuration(instance.ttlMs),
    registeredAt: new Date(instance.registeredAt).toISOString(),
    lastHeartbeatAt: new Date(instance.lastHeartbeatAt).toISOString(),
    createIndex: instance.createIndex,
    modifyIndex: instance.modifyIndex,
  };
}

interface Filter {
  readonly healthy?: boolean;
  readonly tag?: readonly string[];
}

/** A service as the API shows it, encoded once per index and filter. */
interface ServiceView {
  readonly index: number;
  /** Checkpoints move heartbeat times without a new index. */
  readonly checkpoints: number;
  readonly exists: boolean;
  readonly json: string;
}

const maxCachedViews = 1000;

/**
 * Encoded views shared by every reader of the same service at the same index: a change
 * that wakes a thousand watchers is encoded once, not a thousand times.
 */
class ServiceViews {
  private readonly views = new Map<string, ServiceView>();

  constructor(private readonly agent: Agent) {}

  get(service: string, filter: Filter): ServiceView {
    const index = this.agent.fsm.serviceIndex(service);
    const key = `${service} ${filter.healthy === true ? "h" : "-"} ${(filter.tag ?? []).join(",")}`;
    const cached = this.views.get(key);
    const checkpoints = this.agent.fsm.checkpointsApplied;
    if (cached?.index === index && cached.checkpoints === checkpoints) return cached;
    const { instances } = this.agent.fsm.instances(service);
    const tags = filter.tag ?? [];
    const shown = instances.filter(
      (instance) =>
        (filter.healthy !== true || isHealthy(instance.effectiveStatus)) &&
        tags.every((tag) => instance.tags.includes(tag)),
    );
    const view = {
      index,
      checkpoints,
      exists: instances.length > 0,
      json: JSON.stringify({ service, index, instances: shown.map(instanceView) }),
    };
    this.views.delete(key);
    if (this.views.size >= maxCachedViews) {
      const oldest = this.views.keys().next().value;
      if (oldest !== undefined) this.views.delete(oldest);
    }
    this.views.set(key, view);
    return view;
  }
}

/**
 * A read in the requested consistency mode; with `index`, a blocking query that answers
 * once the watched index passes it or the wait ends.
 */
async function blockingRead<T extends { index: number }>(
  agent: Agent,
  reply: FastifyReply,
  query: { consistency?: Consistency; index?: number; wait?: string },
  service: string | null,
  read: () => T,
): Promise<T> {
  await agent.read(query.consistency ?? "default");
  let current = read();
  if (query.index === undefined || current.index > query.index) return current;
  const waitMs = Math.min(
    query.wait === undefined ? defaultWaitMs : parseDuration(query.wait),
    maxWaitMs,
  );
  const release = agent.watchQuota.enter(clientOf(reply.request));
  const wait = boundedWait(reply, waitMs);
  try {
    while (current.index <= query.index && !wait.signal.aborted) {
      await agent.watches.next(service, wait.signal);
      reply.request.reauthorize();
      current = read();
    }
    return current;
  } finally {
    wait.end();
    release();
  }
}

function sendService(reply: FastifyReply, view: ServiceView, service: string) {
  reply.header("X-Muster-Index", String(view.index));
  if (!view.exists)
    throw new MusterError("MUSTER_ERR_NOT_FOUND", `no instances of service ${service}`);
  return reply.type("application/json; charset=utf-8").send(view.json);
}

export function registryRoutes(agent: Agent) {
  const views = new ServiceViews(agent);
  return async (scope: FastifyInstance) => {
    const app = scope.withTypeProvider<TypeBoxTypeProvider>();

    app.put(
      "/v1/services/:service/instances/:id",
      { schema: { params: InstanceParams, body: RegisterBody } },
      async (request, reply) => {
        const { service, id } = request.params;
        const body = request.body;
        const ttlMs = body.ttl === undefined ? defaultTtlMs : parseDuration(body.ttl);
        for (const [key, value] of Object.entries(body.meta ?? {})) {
          if (Buffer.byteLength(value) > maxMetaValueBytes) {
            throw new MusterError(
              "MUSTER_ERR_BAD_REQUEST",
              `meta value is over ${maxMetaValueBytes} bytes`,
              `meta.${key}`,
            );
          }
        }
        if (ttlMs < agent.minTtlMs || ttlMs > maxTtlMs) {
          throw new MusterError(
            "MUSTER_ERR_BAD_REQUEST",
            `ttl must be between ${formatDuration(agent.minTtlMs)} and 24h`,
            "ttl",
          );
        }
        return agent.write(
          request,
          reply,
          {
            op: "register",
            now: Date.now(),
            instance: {
              id,
              service,
              address: body.address,
              port: body.port,
              tags: [...new Set(body.tags ?? [])],
              meta: body.meta ?? {},
              weight: body.weight ?? 100,
              version: body.version ?? "",
              status: body.status ?? "passing",
              ttlMs,
              session: body.session ?? null,
            },
          },
          (result) => (result.instance === undefined ? {} : instanceView(result.instance)),
        );
      },
    );

    app.delete(
      "/v1/services/:service/instances/:id",
      { schema: { params: InstanceParams } },
      async (request, reply) => {
        const { service, id } = request.params;
        return agent.write(request, reply, { op: "deregister", service, id }, () => ({
          service,
          id,
          deregistered: true,
        }));
      },
    );

    app.put(
      "/v1/services/:service/instances/:id/heartbeat",
      {
        schema: { params: InstanceParams, body: HeartbeatBody },
        // The body is optional: a bare PUT renews the TTL.
        preValidation: async (request) => {
          request.body ??= {};
        },
      },
      async (request, reply) =>
        agent.heartbeat(
          request,
          reply,
          request.params,
          request.body.status,
          request.body.output ?? "",
        ),
    );

    app.get("/v1/services", { schema: { querystring: ReadQuery } }, async (request, reply) => {
      // The caller as of each answer: a blocking query checks its token again on every wake.
      const view = await blockingRead(agent, reply, request.query, null, () => ({
        index: agent.fsm.servicesIndex,
        services: agent.fsm
          .services()
          .filter(({ name }) =>
            request.caller.authorizer.allows({ resource: "service", name, access: "read" }),
          ),
      }));
      reply.header("X-Muster-Index", String(view.index));
      return view;
    });

    app.get(
      "/v1/services/:service",
      { schema: { params: ServiceParams, querystring: ServiceQuery } },
      async (request, reply) => {
        const { service } = request.params;
        const view = await blockingRead(agent, reply, request.query, service, () =>
          views.get(service, request.query),
        );
        return sendService(reply, view, service);
      },
    );

    app.get(
      "/v1/watch/services/:service",
      { schema: { params: ServiceParams, querystring: WatchQuery } },
      async (request, reply) => {
        const { service } = request.params;
        // The first event reflects every write acknowledged before the watch began (unless
        // the watch asked for this node's own state).
        await agent.read(request.query.consistency ?? "default");
        const resumeFrom = Number(request.headers["last-event-id"] ?? request.query.index ?? -1);
        const release = agent.watchQuota.enter(clientOf(request));
        const stream = openEventStream(reply, {
          ...agent.stalenessHeaders(),
          "X-Muster-Index": String(views.get(service, request.query).index),
        });
        let sent = Number.isFinite(resumeFrom) ? resumeFrom : -1;
        try {
          while (!stream.gone.aborted) {
            if (!stillAllowed(request, stream)) break;
            const view = views.get(service, request.query);
            if (view.index > sent) {
              sent = view.index;
              if (!stream.send(view.index, "instances", view.json)) break;
            }
            await agent.watches.next(service, stream.gone);
          }
        } finally {
          stream.close();
          release();
        }
      },
    );
  };
}
