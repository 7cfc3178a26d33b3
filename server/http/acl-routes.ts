import { randomBytes, randomUUID } from "node:crypto";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance } from "fastify";
import { hashSecret } from "../acl/resolver.js";
import { type AclPolicy, type AclRule, aclResources, prefixedResources } from "../acl/rules.js";
import { type Agent, okOrThrow } from "../agent.js";
import { MusterError } from "../errors.js";
import type { AclToken } from "../fsm/acl.js";
import { ConsistencyField } from "./schemas.js";

const maxRules = 200;
const maxPoliciesPerToken = 64;

const PolicyName = Type.String({ pattern: "^[A-Za-z0-9._-]{1,128}$" });
const Accessor = Type.String({ pattern: "^[A-Za-z0-9-]{1,64}$" });
const Description = Type.String({ maxLength: 256 });
const Rule = Type.Object(
  {
    resource: Type.Union(aclResources.map((resource) => Type.Literal(resource))),
    prefix: Type.Optional(Type.String({ pattern: "^[A-Za-z0-9._/-]{0,256}$" })),
    access: Type.Union([Type.Literal("read"), Type.Literal("write"), Type.Literal("deny")]),
  },
  { additionalProperties: false },
);
const PolicyBody = Type.Object(
  { rules: Type.Array(Rule, { maxItems: maxRules }), description: Type.Optional(Description) },
  { additionalProperties: false },
);
const TokenBody = Type.Object(
  {
    policies: Type.Array(PolicyName, { maxItems: maxPoliciesPerToken, uniqueItems: true }),
    description: Type.Optional(Description),
  },
  { additionalProperties: false },
);
const AclReadQuery = Type.Object(
  { consistency: ConsistencyField },
  { additionalProperties: false },
);

/** A token as the API shows it: never its secret, nor the secret's hash. */
function tokenView(token: AclToken) {
  return {
    accessor: token.accessor,
    description: token.description,
    policies: token.policies,
    createIndex: token.createIndex,
    modifyIndex: token.modifyIndex,
  };
}

function rulesOf(body: { rules: readonly Partial<AclRule>[] }): AclRule[] {
  return body.rules.map((rule, position) => {
    const resource = rule.resource as AclRule["resource"];
    if ((rule.prefix ?? "") !== "" && !prefixedResources.has(resource)) {
      throw new MusterError(
        "MUSTER_ERR_BAD_REQUEST",
        `${resource} rules take no prefix`,
        `rules.${position}.prefix`,
      );
    }
    return { resource, prefix: rule.prefix ?? "", access: rule.access as AclRule["access"] };
  });
}

/** `/v1/acl`: tokens and policies, replicated through Raft like the registry. */
export function aclRoutes(agent: Agent) {
  return async (scope: FastifyInstance) => {
    const app = scope.withTypeProvider<TypeBoxTypeProvider>();
    app.addHook("onRequest", async () => {
      if (!agent.acl.enabled)
        throw new MusterError(
          "MUSTER_ERR_BAD_REQUEST",
          "ACLs are off on this node: start it with --acl-enabled",
        );
    });

    const readToken = (accessor: string) => {
      const token = agent.fsm.acl.token(accessor);
      if (token === undefined)
        throw new MusterError("MUSTER_ERR_NOT_FOUND", `no token ${accessor}`, "accessor");
      return token;
    };
    const checkPolicies = (names: readonly string[]) => {
      const position = names.findIndex((name) => agent.fsm.acl.policy(name) === undefined);
      if (position >= 0)
        throw new MusterError(
          "MUSTER_ERR_BAD_REQUEST",
          `no policy ${names[position]}`,
          `policies.${position}`,
        );
    };

    app.get("/v1/acl/tokens/self", { schema: { querystring: AclReadQuery } }, async (request) => {
      await agent.read(request.query.consistency ?? "default");
      return tokenView(readToken(request.caller.accessor));
    });
    app.get("/v1/acl/tokens", { schema: { querystring: AclReadQuery } }, async (request) => {
      await agent.read(request.query.consistency ?? "default");
      return { index: agent.fsm.acl.index, tokens: agent.fsm.acl.allTokens().map(tokenView) };
    });
    app.get(
      "/v1/acl/tokens/:accessor",
      { schema: { params: Type.Object({ accessor: Accessor }), querystring: AclReadQuery } },
      async (request) => {
        await agent.read(request.query.consistency ?? "default");
        return tokenView(readToken(request.params.accessor));
      },
    );
    // Policies are checked on the leader, whose state a follower's may lag behind.
    app.post("/v1/acl/tokens", { schema: { body: TokenBody } }, async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, async () => {
        checkPolicies(request.body.policies);
        // The secret is made here, on the leader, and shown only in this answer.
        const secret = randomBytes(24).toString("base64url");
        const token = {
          accessor: randomUUID(),
          secretHash: hashSecret(secret),
          policies: request.body.policies,
          description: request.body.description ?? "",
        };
        const result = okOrThrow(
          await agent.propose({ op: "acl-token-set", mode: "create", token }),
        );
        return { ...tokenView(result.token as AclToken), secret };
      }),
    );
    app.put(
      "/v1/acl/tokens/:accessor",
      { schema: { params: Type.Object({ accessor: Accessor }), body: TokenBody } },
      async (request, reply) =>
        agent.forwardUnlessLeader(request, reply, async () => {
          checkPolicies(request.body.policies);
          const { accessor } = request.params;
          const token = {
            accessor,
            secretHash: "",
            policies: request.body.policies,
            description:
              request.body.description ?? agent.fsm.acl.token(accessor)?.description ?? "",
          };
          const result = okOrThrow(
            await agent.propose({ op: "acl-token-set", mode: "update", token }),
          );
          return tokenView(result.token as AclToken);
        }),
    );
    app.delete(
      "/v1/acl/tokens/:accessor",
      { schema: { params: Type.Object({ accessor: Accessor }) } },
      async (request, reply) =>
        agent.write(
          request,
          reply,
          { op: "acl-token-delete", accessor: request.params.accessor },
          () => ({ accessor: request.params.accessor, deleted: true }),
        ),
    );

    app.get("/v1/acl/policies", { schema: { querystring: AclReadQuery } }, async (request) => {
      await agent.read(request.query.consistency ?? "default");
      return { index: agent.fsm.acl.index, policies: agent.fsm.acl.allPolicies() };
    });
    app.get(
      "/v1/acl/policies/:name",
      { schema: { params: Type.Object({ name: PolicyName }), querystring: AclReadQuery } },
      async (request) => {
        await agent.read(request.query.consistency ?? "default");
        const policy = agent.fsm.acl.policy(request.params.name);
        if (policy === undefined)
          throw new MusterError("MUSTER_ERR_NOT_FOUND", `no policy ${request.params.name}`, "name");
        return policy;
      },
    );
    app.put(
      "/v1/acl/policies/:name",
      { schema: { params: Type.Object({ name: PolicyName }), body: PolicyBody } },
      async (request, reply) => {
        const policy: AclPolicy = {
          name: request.params.name,
          description: request.body.description ?? "",
          rules: rulesOf(request.body),
        };
        return agent.write(request, reply, { op: "acl-policy-set", policy }, () => policy);
      },
    );
    app.delete(
      "/v1/acl/policies/:name",
      { schema: { params: Type.Object({ name: PolicyName }) } },
      async (request, reply) =>
        agent.write(request, reply, { op: "acl-policy-delete", name: request.params.name }, () => ({
          name: request.params.name,
          deleted: true,
        })),
    );
  };
}
