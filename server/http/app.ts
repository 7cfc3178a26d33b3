import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { RaftError } from "../../raft/node.js";
import type { Agent } from "../agent.js";
import { MusterError } from "../errors.js";
import type { RegistryCommand } from "../fsm/registry.js";

const label = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
const ServiceParams = Type.Object({ service: Type.String({ pattern: label }) });
const InstanceParams = Type.Object({
  service: Type.String({ pattern: label }),
  id: Type.String({ pattern: "^[A-Za-z0-9._-]{1,128}$" }),
});
const Duration = Type.String({ pattern: "^\\d+(ms|s|m|h)$" });
const RegisterBody = Type.Object(
  {
    address: Type.String({ minLength: 1, maxLength: 253 }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    tags: Type.Optional(Type.Array(Type.String({ pattern: label }), { maxItems: 64 })),
    meta: Type.Optional(
      Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 512 }), {
        maxProperties: 64,
      }),
    ),
    weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    version: Type.Optional(Type.String({ maxLength: 128 })),
    ttl: Type.Optional(Duration),
    status: Type.Optional(
      Type.Union([
        Type.Literal("passing"),
        Type.Literal("warning"),
        Type.Literal("critical"),
        Type.Literal("maintenance"),
      ]),
    ),
  },
  { additionalProperties: false },
);
const Consistency = Type.Object({
  consistency: Type.Optional(
    Type.Union([Type.Literal("stale"), Type.Literal("default"), Type.Literal("linearizable")]),
  ),
});
const MemberBody = Type.Object(
  {
    id: Type.String({ pattern: "^[A-Za-z0-9._-]{1,64}$" }),
    raft: Type.String({ minLength: 3 }),
    http: Type.String({ minLength: 3 }),
    grpc: Type.String({ minLength: 3 }),
    dns: Type.String({ minLength: 3 }),
  },
  { additionalProperties: false },
);

const minTtlMs = 2000;
const maxTtlMs = 24 * 3600 * 1000;

function durationMs(text: string): number {
  const match = /^(\d+)(ms|s|m|h)$/.exec(text);
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(match?.[2] ?? "ms") as "ms"];
  return Number(match?.[1] ?? 0) * scale;
}

/** The HTTP API: each area its own plugin, every body and parameter checked by its schema. */
export function buildHttpApp(agent: Agent): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.addHook("onSend", async (_request, reply) => {
    reply.header("X-Muster-Index", String(agent.appliedIndex()));
  });
  app.setErrorHandler(
    (
      error: Error & { validation?: unknown[]; statusCode?: number; code?: string },
      _request,
      reply,
    ) => {
      if (error instanceof MusterError) return sendError(reply, error);
      if (error instanceof RaftError) return sendError(reply, fromRaftError(error));
      if (error.validation !== undefined) {
        return sendError(
          reply,
          new MusterError("MUSTER_ERR_BAD_REQUEST", error.message, fieldOf(error.validation[0])),
        );
      }
      if (error.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
        return sendError(
          reply,
          new MusterError("MUSTER_ERR_BODY_TOO_LARGE", "request body is over the limit"),
        );
      }
      if (error.statusCode !== undefined && error.statusCode < 500) {
        return sendError(reply, new MusterError("MUSTER_ERR_BAD_REQUEST", error.message));
      }
      throw error;
    },
  );

  app.register(async (scope) => {
    const services = scope.withTypeProvider<TypeBoxTypeProvider>();
    services.put(
      "/v1/services/:service/instances/:id",
      { schema: { params: InstanceParams, body: RegisterBody } },
      async (request, reply) => {
        const { service, id } = request.params;
        const body = request.body;
        const ttlMs = body.ttl === undefined ? 10_000 : durationMs(body.ttl);
        if (ttlMs < minTtlMs || ttlMs > maxTtlMs)
          throw new MusterError("MUSTER_ERR_BAD_REQUEST", "ttl must be between 2s and 24h", "ttl");
        const command: RegistryCommand = {
          op: "register",
          now: Date.now(),
          instance: {
            id,
            service,
            address: body.address,
            port: body.port,
            tags: body.tags ?? [],
            meta: body.meta ?? {},
            weight: body.weight ?? 100,
            version: body.version ?? "",
            status: body.status ?? "passing",
            ttlMs,
          },
        };
        return agent.write(request, reply, command, (result) => result.instance);
      },
    );
    services.delete(
      "/v1/services/:service/instances/:id",
      { schema: { params: InstanceParams } },
      async (request, reply) =>
        agent.write(
          request,
          reply,
          { op: "deregister", service: request.params.service, id: request.params.id },
          () => ({
            deregistered: true,
          }),
        ),
    );
    services.get(
      "/v1/services/:service",
      { schema: { params: ServiceParams, querystring: Consistency } },
      async (request) => {
        await agent.read(request.query.consistency ?? "default");
        const found = agent.fsm.instances(request.params.service);
        if (found === null)
          throw new MusterError("MUSTER_ERR_NOT_FOUND", `no service ${request.params.service}`);
        return { service: request.params.service, index: found.index, instances: found.instances };
      },
    );
    services.get("/v1/services", { schema: { querystring: Consistency } }, async (request) => {
      await agent.read(request.query.consistency ?? "default");
      return { index: agent.appliedIndex(), services: agent.fsm.services() };
    });
  });

  app.register(async (scope) => {
    const cluster = scope.withTypeProvider<TypeBoxTypeProvider>();
    cluster.get("/v1/cluster/leader", async () => agent.leaderInfo());
    cluster.get("/v1/cluster/members", async () => agent.membersInfo());
    cluster.get("/v1/cluster/state-hash", async () => agent.stateHash());
    cluster.post("/v1/cluster/members", { schema: { body: MemberBody } }, async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, () => agent.addMember(request.body)),
    );
    cluster.delete(
      "/v1/cluster/members/:id",
      {
        schema: { params: Type.Object({ id: Type.String({ pattern: "^[A-Za-z0-9._-]{1,64}$" }) }) },
      },
      async (request, reply) =>
        agent.forwardUnlessLeader(request, reply, () => agent.removeMember(request.params.id)),
    );
    cluster.post(
      "/v1/cluster/transfer-leadership",
      {
        schema: {
          body: Type.Optional(
            Type.Object({ to: Type.Optional(Type.String()) }, { additionalProperties: false }),
          ),
        },
      },
      async (request, reply) =>
        agent.forwardUnlessLeader(request, reply, () => agent.transferLeadership(request.body?.to)),
    );
  });

  app.register(async (scope) => {
    const health = scope.withTypeProvider<TypeBoxTypeProvider>();
    health.get("/healthz", async () => ({ status: "ok" }));
    health.get("/readyz", async (_request, reply) => {
      const ready = agent.isReady();
      return reply.code(ready.ok ? 200 : 503).send(ready);
    });
  });

  return app;
}

function sendError(reply: FastifyReply, error: MusterError): FastifyReply {
  if (error.status === 503) reply.header("Retry-After", "1");
  return reply.code(error.status).send(error.toJSON());
}

export function fromRaftError(error: RaftError): MusterError {
  switch (error.code) {
    case "not-leader":
    case "transferring":
    case "stopped":
      return new MusterError(
        "MUSTER_ERR_NO_LEADER",
        `no leader to take this request: ${error.message}`,
      );
    case "timeout":
      return new MusterError("MUSTER_ERR_TIMEOUT", error.message);
    case "overloaded":
      return new MusterError("MUSTER_ERR_OVERLOADED", error.message);
    case "config-pending":
    case "invalid-change":
      return new MusterError("MUSTER_ERR_CONFLICT", error.message);
  }
}

function fieldOf(issue: unknown): string | undefined {
  if (typeof issue !== "object" || issue === null) return undefined;
  const { instancePath, params } = issue as {
    instancePath?: string;
    params?: { missingProperty?: string; additionalProperty?: string };
  };
  const path = (instancePath ?? "").replace(/^\//, "").replaceAll("/", ".");
  const leaf = params?.missingProperty ?? params?.additionalProperty;
  if (leaf !== undefined) return path === "" ? leaf : `${path}.${leaf}`;
  return path === "" ? undefined : path;
}
