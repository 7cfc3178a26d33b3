import type { FastifyInstance, FastifyRequest } from "fastify";
import { type AclResolver, type Caller, unrestricted } from "../acl/resolver.js";
import { describePermission, type Permission } from "../acl/rules.js";
import { MusterError } from "../errors.js";
import { routeAccess } from "./permissions.js";

declare module "fastify" {
  interface FastifyRequest {
    /** Set before any handler runs: who asked, and what their token allows. */
    caller: Caller;
    /**
     * Checks the request again against the current ACLs; throws the 403 if it no longer
     * passes. Long waits and watch streams call it after each wake, so a revoked token ends them.
     */
    reauthorize: () => void;
  }
}

export interface Authorization {
  readonly acl: AclResolver;
  /** A member's request for itself (recording its addresses), not a client's it forwards. */
  memberOwnRequest(request: FastifyRequest): boolean;
  /** `permission` null: the token is not known. */
  denied(request: FastifyRequest, permission: Permission | null, accessor: string | null): void;
}

/** The secret a request carries: `Authorization: Bearer <secret>` or `X-Muster-Token`. */
export function tokenOf(headers: FastifyRequest["headers"]): string | null {
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(headers.authorization ?? "");
  if (bearer?.[1] !== undefined) return bearer[1];
  const token = headers["x-muster-token"];
  return typeof token === "string" && token !== "" ? token : null;
}

function routeKey(method: string, url: string | undefined): string {
  return `${method === "HEAD" ? "GET" : method} ${url ?? ""}`;
}

/**
 * Every request is checked against the table of route permissions before its body is
 * read; a route the table does not name cannot be added.
 */
export function authorizeRequests(app: FastifyInstance, authorization: Authorization): void {
  app.addHook("onRoute", (route) => {
    for (const method of [route.method].flat()) {
      if (routeAccess[routeKey(method, route.url)] === undefined)
        throw new Error(`route ${method} ${route.url} has no entry in the permissions table`);
    }
  });
  app.decorateRequest("caller", null as unknown as Caller);
  app.decorateRequest("reauthorize", null as unknown as () => void);
  // A callback hook, not an async one: every request passes through it.
  app.addHook("onRequest", (request, _reply, done) => {
    const access = routeAccess[routeKey(request.method, request.routeOptions.url)];
    // ACLs off is checked first: it spares every request (heartbeats above all) the work below.
    if (
      !authorization.acl.enabled ||
      access === undefined ||
      access === "open" ||
      authorization.memberOwnRequest(request)
    ) {
      request.caller = unrestricted;
      request.reauthorize = () => {};
      done();
      return;
    }
    const authorize = () => {
      const caller = authorization.acl.resolve(tokenOf(request.headers));
      if (caller === undefined) {
        authorization.denied(request, null, null);
        throw new MusterError(
          "MUSTER_ERR_PERMISSION_DENIED",
          "permission denied: no token has this secret (never made, or revoked)",
          "token",
        );
      }
      request.caller = caller;
      if (access === "anyone") return;
      const permission = access(request.params as Record<string, string | undefined>);
      if (!caller.authorizer.allows(permission))
        throw deny(request, authorization, caller, permission);
    };
    try {
      authorize();
    } catch (error) {
      done(error as Error);
      return;
    }
    request.reauthorize = authorize;
    done();
  });
}

function deny(
  request: FastifyRequest,
  authorization: Authorization,
  caller: Caller,
  permission: Permission,
): MusterError {
  const needed = describePermission(permission);
  authorization.denied(request, permission, caller.accessor);
  return new MusterError(
    "MUSTER_ERR_PERMISSION_DENIED",
    `permission denied: token ${caller.accessor} lacks ${needed}`,
    undefined,
    needed,
  );
}
