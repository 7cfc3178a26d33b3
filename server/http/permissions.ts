import type { AclResource, Permission } from "../acl/rules.js";

type Params = Readonly<Record<string, string | undefined>>;

/**
 * What each route needs, in one table so that it can be read as a whole. `open`: anyone
 * (probes, metrics, the leader's address), nothing checked; `anyone`: any caller, with or
 * without a token (an unknown token is refused), the handler showing only what it may see. A route missing here fails the build of the app.
 */
export type RouteAccess = ((params: Params) => Permission) | "open" | "anyone";

const on =
  (resource: AclResource, access: "read" | "write", param?: string) =>
  (params: Params): Permission => ({
    resource,
    name: param === undefined ? "" : (params[param] ?? ""),
    access,
  });

export const routeAccess: Readonly<Record<string, RouteAccess>> = {
  "PUT /v1/services/:service/instances/:id": on("service", "write", "service"),
  "DELETE /v1/services/:service/instances/:id": on("service", "write", "service"),
  "PUT /v1/services/:service/instances/:id/heartbeat": on("service", "write", "service"),
  "GET /v1/services": "anyone",
  "GET /v1/services/:service": on("service", "read", "service"),
  "GET /v1/watch/services/:service": on("service", "read", "service"),

  "POST /v1/sessions": on("session", "write"),
  "PUT /v1/sessions/:id/renew": on("session", "write"),
  "DELETE /v1/sessions/:id": on("session", "write"),
  "GET /v1/sessions/:id": on("session", "read"),

  "POST /v1/locks/:name/acquire": on("lock", "write", "name"),
  "POST /v1/locks/:name/release": on("lock", "write", "name"),
  "GET /v1/locks/:name": on("lock", "read", "name"),
  "POST /v1/locks/:name/check": on("lock", "read", "name"),
  "POST /v1/elections/:name/campaign": on("election", "write", "name"),
  "POST /v1/elections/:name/resign": on("election", "write", "name"),
  "GET /v1/elections/:name": on("election", "read", "name"),
  "GET /v1/watch/elections/:name": on("election", "read", "name"),

  "GET /v1/cluster": on("cluster", "read"),
  "GET /v1/cluster/leader": "open",
  "GET /v1/cluster/members": on("cluster", "read"),
  "GET /v1/cluster/state-hash": on("cluster", "read"),
  "GET /v1/cluster/self-preservation": on("cluster", "read"),
  "PUT /v1/cluster/self-preservation": on("cluster", "write"),
  "POST /v1/cluster/members": on("cluster", "write"),
  "DELETE /v1/cluster/members/:id": on("cluster", "write"),
  "POST /v1/cluster/transfer-leadership": on("cluster", "write"),

  "GET /v1/acl/tokens/self": "anyone",
  "GET /v1/acl/tokens": on("acl", "read"),
  "POST /v1/acl/tokens": on("acl", "write"),
  "GET /v1/acl/tokens/:accessor": on("acl", "read"),
  "PUT /v1/acl/tokens/:accessor": on("acl", "write"),
  "DELETE /v1/acl/tokens/:accessor": on("acl", "write"),
  "GET /v1/acl/policies": on("acl", "read"),
  "GET /v1/acl/policies/:name": on("acl", "read"),
  "PUT /v1/acl/policies/:name": on("acl", "write"),
  "DELETE /v1/acl/policies/:name": on("acl", "write"),

  "GET /healthz": "open",
  "GET /readyz": "open",
  "GET /metrics": "open",
  "GET /docs": "open",
};
