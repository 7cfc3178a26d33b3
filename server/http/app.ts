import type { ServerOptions as HttpsServerOptions } from "node:https";
import type { Socket } from "node:net";
import swagger from "@fastify/swagger";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { Ajv } from "ajv";
import Fastify, { type FastifyInstance, type FastifyReply } from "fastify";
import { RaftError } from "../../raft/node.js";
import type { Agent } from "../agent.js";
import { MusterError } from "../errors.js";
import { aclRoutes } from "./acl-routes.js";
import { authorizeRequests } from "./authorize.js";
import { parseJsonBody } from "./json-body.js";
import { limitRequests, shedLoad } from "./limits.js";
import { lockRoutes } from "./lock-routes.js";
import { registryRoutes } from "./registry-routes.js";
import { MemberBody, SelfPreservationBody } from "./schemas.js";

/**
 * The HTTP API: each area its own plugin, every body and parameter checked by its schema.
 * `https`: serve HTTPS only (plain HTTP on the port fails its handshake); null: plain HTTP.
 */
export function buildHttpApp(agent: Agent, https: HttpsServerOptions | null): FastifyInstance {
  const app = Fastify({
    ...(https === null ? {} : { https }),
    logger: false,
    bodyLimit: 64 * 1024,
    // Longer than any valid parameter, so that the schema, not the router, refuses it.
    routerOptions: { maxParamLength: 1024 },
    // Errors raised before any handler runs get the API's error shape too.
    frameworkErrors: (error, _request, reply) =>
      sendError(reply, new MusterError("MUSTER_ERR_BAD_REQUEST", error.message.slice(0, 200))),
    clientErrorHandler: answerBrokenRequest,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      new MusterError(
        "MUSTER_ERR_NOT_FOUND",
        `no route ${request.method} ${request.url.slice(0, 200)}`,
      ),
    ),
  );

  // Bodies are JSON: a wrong type is an error, never converted. Query strings and path
  // parameters are text: numbers and booleans are read from it, a single ?tag= is a list.
  // Neither drops unknown properties silently.
  const bodies = new Ajv({ coerceTypes: false, removeAdditional: false, allErrors: false });
  const texts = new Ajv({ coerceTypes: "array", removeAdditional: false, allErrors: false });
  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === "body" ? bodies : texts).compile(schema),
  );
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_request, text, done) => {
    try {
      done(null, parseJsonBody(text as string));
    } catch (error) {
      done(error as Error, undefined);
    }
  });

  app.register(swagger, {
    openapi: {
      info: {
        title: "muster",
        description: "Service registry and discovery: instances, TTLs, lookups and watches",
        version: "1",
      },
    },
  });
  // Callback hooks, not async ones: every response passes through these.
  app.addHook("onSend", (_request, reply, payload, done) => {
    if (!reply.hasHeader("X-Muster-Index"))
      reply.header("X-Muster-Index", String(agent.appliedIndex()));
    reply.headers(agent.stalenessHeaders());
    done(null, payload);
  });
  app.addHook("onResponse", (request, reply, done) => {
    agent.metrics.requests.observe(
      {
        route: request.routeOptions.url ?? "unmatched",
        method: request.method,
        status: String(reply.statusCode),
      },
      reply.elapsedTime / 1000,
    );
    done();
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

  shedLoad(app, agent.config);
  limitRequests(app, agent.config, (request) => agent.forwardedByMember(request));
  authorizeRequests(app, agent);
  app.register(registryRoutes(agent));
  app.register(lockRoutes(agent));
  app.register(aclRoutes(agent));

  app.register(async (scope) => {
    const cluster = scope.withTypeProvider<TypeBoxTypeProvider>();
    // As the leader sees it, self-preservation included.
    cluster.get("/v1/cluster", async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, async () => agent.clusterInfo()),
    );
    cluster.get("/v1/cluster/leader", async () => agent.leaderInfo());
    cluster.get("/v1/cluster/members", async () => agent.membersInfo());
    cluster.get("/v1/cluster/state-hash", async () => agent.stateHash());
    cluster.get("/v1/cluster/self-preservation", async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, async () => agent.selfPreservation()),
    );
    cluster.put(
      "/v1/cluster/self-preservation",
      { schema: { body: SelfPreservationBody } },
      async (request, reply) => agent.setSelfPreservation(request, reply, request.body.mode),
    );
    cluster.post("/v1/cluster/members", { schema: { body: MemberBody } }, async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, () => agent.addMember(request.body)),
    );
    cluster.delete(
      "/v1/cluster/members/:id",
      {
        schema: {
          params: Type.Object({
            id: Type.String({ pattern: "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,64}$" }),
          }),
        },
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
    health.get("/metrics", async (_request, reply) => {
      reply.type(agent.metrics.registry.contentType);
      return agent.metrics.registry.metrics();
    });
    health.get("/docs", { schema: { hide: true } }, async () => app.swagger());
    health.get("/readyz", async (_request, reply) => {
      const ready = agent.isReady();
      if (!ready.ok) reply.header("Retry-After", "1");
      return reply.code(ready.ok ? 200 : 503).send(ready);
    });
  });

  return app;
}

/** A request HTTP itself could not parse: answered on the socket, in the API's error shape. */
function answerBrokenRequest(error: Error & { code?: string }, socket: Socket): void {
  if (!socket.writable) return;
  const tooLarge = error.code === "HPE_HEADER_OVERFLOW";
  const body = JSON.stringify({
    error: {
      code: "MUSTER_ERR_BAD_REQUEST",
      message: tooLarge ? "request headers are too large" : "malformed HTTP request",
    },
  });
  socket.end(
    `HTTP/1.1 ${tooLarge ? "431 Request Header Fields Too Large" : "400 Bad Request"}\r\n` +
      `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Connection: close\r\n\r\n${body}`,
  );
}

function sendError(reply: FastifyReply, error: MusterError): FastifyReply {
  if (error.status === 503 || error.status === 429) reply.header("Retry-After", "1");
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
