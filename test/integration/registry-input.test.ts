import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ErrorCode } from "../../server/errors.js";
import { AgentCluster, eventually, sleep } from "./agents.js";

/**
 * Bad input to the registry's HTTP API, sent to every node of a real three-node cluster
 * (followers too): each is answered with the right status, error code and named field,
 * never changes the registry and never crashes a node.
 */

const nodes = ["n1", "n2", "n3"] as const;
const requestTimeoutMs = 8000;

/** The instances registered before the table, by service and id. */
const known = {
  web: {
    w1: {
      address: "10.0.0.1",
      port: 8080,
      tags: ["primary"],
      meta: { zone: "a" },
      weight: 10,
      version: "1.2.3",
      ttl: "24h",
    },
    w2: { address: "10.0.0.2", port: 8080, ttl: "24h" },
  },
  api: {
    a1: { address: "10.0.1.1", port: 9090, tags: ["v1"], ttl: "24h" },
  },
} as const;

const w1 = known.web.w1;
const w1Path = "/v1/services/web/instances/w1";

/** w1's own registration with one part changed (`undefined` removes it). */
function w1With(change: Record<string, unknown>): Record<string, unknown> {
  const body: Record<string, unknown> = { ...w1, ...change };
  for (const [key, value] of Object.entries(change)) if (value === undefined) delete body[key];
  return body;
}

/** A JSON body of exactly `bytes` bytes: w1's registration padded through `version`. */
function w1BodyOfSize(bytes: number): string {
  const empty = JSON.stringify(w1With({ version: "" }));
  return JSON.stringify(w1With({ version: "v".repeat(bytes - empty.length) }));
}

interface BadInput {
  readonly name: string;
  readonly method: "GET" | "PUT" | "DELETE";
  readonly path: string;
  /** Sent as JSON. */
  readonly json?: unknown;
  /** Sent as is, with this content type. */
  readonly raw?: { readonly body: string; readonly contentType: string };
  readonly status: number;
  readonly code: ErrorCode;
  /** For a 400 caused by one field: the field the error names. */
  readonly field?: string;
}

function badRequest(
  name: string,
  method: BadInput["method"],
  path: string,
  field: string | undefined,
  send: Pick<BadInput, "json" | "raw"> = {},
): BadInput {
  return {
    name,
    method,
    path,
    ...send,
    status: 400,
    code: "MUSTER_ERR_BAD_REQUEST",
    ...(field === undefined ? {} : { field }),
  };
}

/** A registration of w1 whose body is bad in `field` only. */
function badRegistration(name: string, field: string, change: Record<string, unknown>): BadInput {
  return badRequest(name, "PUT", w1Path, field, { json: w1With(change) });
}

function notFound(name: string, method: BadInput["method"], path: string, json?: unknown) {
  return {
    name,
    method,
    path,
    ...(json === undefined ? {} : { json }),
    status: 404,
    code: "MUSTER_ERR_NOT_FOUND",
  } satisfies BadInput;
}

const tooLarge = (name: string, path: string, body: string): BadInput => ({
  name,
  method: "PUT",
  path,
  raw: { body, contentType: "application/json" },
  status: 413,
  code: "MUSTER_ERR_BODY_TOO_LARGE",
});

const sixtyFiveKeys = Object.fromEntries(
  Array.from({ length: 65 }, (_, i) => [`k${i}`, "v"] as const),
);
const sixtyFiveTags = Array.from({ length: 65 }, (_, i) => `t${i}`);

/** Rejected before anything reaches the Raft log: the state hash must not move at all. */
const rejected: readonly BadInput[] = [
  // Wrong types.
  badRegistration("port as a string", "port", { port: "8080" }),
  badRegistration("port as a float", "port", { port: 8080.5 }),
  badRegistration("port as null", "port", { port: null }),
  badRegistration("weight as a float", "weight", { weight: 1.5 }),
  badRegistration("weight as a string", "weight", { weight: "10" }),
  badRegistration("tags as a string, not an array", "tags", { tags: "primary" }),
  badRegistration("tags as an object, not an array", "tags", { tags: { primary: true } }),
  badRegistration("tags as null", "tags", { tags: null }),
  badRegistration("meta value a number", "meta.zone", { meta: { zone: 1 } }),
  badRegistration("meta as an array", "meta", { meta: ["zone=a"] }),
  badRegistration("address as a number", "address", { address: 10 }),
  badRegistration("status not a known status", "status", { status: "healthy" }),
  // Missing fields.
  badRegistration("address missing", "address", { address: undefined }),
  badRegistration("port missing", "port", { port: undefined }),
  badRegistration("address empty", "address", { address: "" }),
  badRegistration("address with a space", "address", { address: "10.0.0.1 x" }),
  // Bad names in the path.
  badRequest("service in uppercase", "PUT", "/v1/services/Web/instances/w1", "service", {
    json: w1,
  }),
  badRequest("service with an underscore", "PUT", "/v1/services/web_api/instances/w1", "service", {
    json: w1,
  }),
  badRequest(
    "service of 64 characters",
    "PUT",
    `/v1/services/${"s".repeat(64)}/instances/w1`,
    "service",
    { json: w1 },
  ),
  badRequest("service with a leading dash", "PUT", "/v1/services/-web/instances/w1", "service", {
    json: w1,
  }),
  badRequest("service with a trailing dash", "PUT", "/v1/services/web-/instances/w1", "service", {
    json: w1,
  }),
  badRequest("id with a space", "PUT", "/v1/services/web/instances/w%201", "id", { json: w1 }),
  badRequest("id with an encoded slash", "PUT", "/v1/services/web/instances/w%2F1", "id", {
    json: w1,
  }),
  badRequest("id of 129 characters", "PUT", `/v1/services/web/instances/${"i".repeat(129)}`, "id", {
    json: w1,
  }),
  // Tags, meta, limits.
  badRegistration("tag with an underscore", "tags.1", { tags: ["primary", "not_a_label"] }),
  badRegistration("tag in uppercase", "tags.0", { tags: ["Primary"] }),
  badRegistration("empty tag", "tags.0", { tags: [""] }),
  badRegistration("65 tags", "tags", { tags: sixtyFiveTags }),
  badRegistration("meta with 65 keys", "meta", { meta: sixtyFiveKeys }),
  badRegistration("meta value of 513 bytes", "meta.zone", { meta: { zone: "z".repeat(513) } }),
  badRegistration("meta value of 514 bytes in 257 characters", "meta.zone", {
    meta: { zone: "é".repeat(257) },
  }),
  badRegistration("meta key of 129 characters", `meta.${"k".repeat(129)}`, {
    meta: { ["k".repeat(129)]: "v" },
  }),
  badRegistration("empty meta key", "meta.", { meta: { "": "v" } }),
  badRegistration("version of 129 characters", "version", { version: "v".repeat(129) }),
  badRegistration("port 0", "port", { port: 0 }),
  badRegistration("port 65536", "port", { port: 65536 }),
  badRegistration("port -1", "port", { port: -1 }),
  badRegistration("weight 0", "weight", { weight: 0 }),
  badRegistration("weight 1001", "weight", { weight: 1001 }),
  // TTLs.
  badRegistration('ttl "-1s"', "ttl", { ttl: "-1s" }),
  badRegistration('ttl "1s", below the minimum', "ttl", { ttl: "1s" }),
  badRegistration('ttl "1999ms", just below the minimum', "ttl", { ttl: "1999ms" }),
  badRegistration('ttl "0s"', "ttl", { ttl: "0s" }),
  badRegistration('ttl "25h", above the maximum', "ttl", { ttl: "25h" }),
  badRegistration('ttl "10 s"', "ttl", { ttl: "10 s" }),
  badRegistration('ttl "10" without a unit', "ttl", { ttl: "10" }),
  badRegistration('ttl "abc"', "ttl", { ttl: "abc" }),
  badRegistration("ttl as a number", "ttl", { ttl: 10 }),
  // Unknown properties.
  badRegistration("unknown body property", "extra", { extra: 1 }),
  // Bodies that are not a JSON object.
  badRequest("malformed JSON", "PUT", w1Path, undefined, {
    raw: { body: '{"address": "10.0.0.1", "port": ', contentType: "application/json" },
  }),
  // Keys that name a prototype: refused by name, though the JSON itself is valid.
  badRequest('meta key "__proto__"', "PUT", w1Path, "meta.__proto__", {
    raw: {
      body: `${JSON.stringify(w1With({ meta: undefined })).slice(0, -1)},"meta":{"__proto__":{"polluted":"yes"}}}`,
      contentType: "application/json",
    },
  }),
  badRequest('meta key "__proto__" written with an escape', "PUT", w1Path, "meta.__proto__", {
    raw: {
      body: '{"address":"10.0.0.1","port":8080,"meta":{"\\u005f_proto__":"x"}}',
      contentType: "application/json",
    },
  }),
  badRequest('top-level key "__proto__"', "PUT", w1Path, "__proto__", {
    raw: {
      body: '{"address":"10.0.0.1","port":8080,"__proto__":null}',
      contentType: "application/json",
    },
  }),
  badRequest('"constructor" holding "prototype"', "PUT", w1Path, "constructor", {
    raw: {
      body: '{"address":"10.0.0.1","port":8080,"constructor":{"prototype":{}}}',
      contentType: "application/json",
    },
  }),
  badRequest("empty body declared as JSON", "PUT", w1Path, undefined, {
    raw: { body: "", contentType: "application/json" },
  }),
  badRequest("JSON array as the body", "PUT", w1Path, undefined, {
    raw: { body: "[]", contentType: "application/json" },
  }),
  badRequest("JSON null as the body", "PUT", w1Path, undefined, {
    raw: { body: "null", contentType: "application/json" },
  }),
  badRequest("text/plain body", "PUT", w1Path, undefined, {
    raw: { body: JSON.stringify(w1), contentType: "text/plain" },
  }),
  badRequest("form-encoded body", "PUT", w1Path, undefined, {
    raw: { body: "address=10.0.0.1&port=8080", contentType: "application/x-www-form-urlencoded" },
  }),
  tooLarge("body of 64 KiB + 1 byte", w1Path, w1BodyOfSize(64 * 1024 + 1)),
  tooLarge(
    "heartbeat body of 100 KiB",
    `${w1Path}/heartbeat`,
    JSON.stringify({ output: "o".repeat(100 * 1024) }),
  ),
  // Heartbeats.
  badRequest("heartbeat with an unknown status", "PUT", `${w1Path}/heartbeat`, "status", {
    json: { status: "healthy" },
  }),
  badRequest("heartbeat with a numeric status", "PUT", `${w1Path}/heartbeat`, "status", {
    json: { status: 1 },
  }),
  badRequest("heartbeat output of 4097 characters", "PUT", `${w1Path}/heartbeat`, "output", {
    json: { output: "o".repeat(4097) },
  }),
  badRequest("heartbeat with an unknown property", "PUT", `${w1Path}/heartbeat`, "ttl", {
    json: { ttl: "10s" },
  }),
  badRequest(
    "heartbeat of an id with a space",
    "PUT",
    "/v1/services/web/instances/w%201/heartbeat",
    "id",
    { json: {} },
  ),
  notFound("heartbeat of an unknown id", "PUT", "/v1/services/web/instances/w9/heartbeat", {}),
  notFound(
    "heartbeat of an unknown service",
    "PUT",
    "/v1/services/nosuch/instances/w1/heartbeat",
    {},
  ),
  // Deregistration with a bad name (an unknown one is further down: it is decided in the log).
  badRequest(
    "deregistration of a service in uppercase",
    "DELETE",
    "/v1/services/WEB/instances/w1",
    "service",
  ),
  badRequest(
    "deregistration of an id with a slash",
    "DELETE",
    "/v1/services/web/instances/w%2F1",
    "id",
  ),
  // Reads.
  notFound("lookup of an unknown service", "GET", "/v1/services/nosuch"),
  badRequest("lookup of a service in uppercase", "GET", "/v1/services/Web", "service"),
  badRequest("?wait=10 without a unit", "GET", "/v1/services?index=1&wait=10", "wait"),
  badRequest("?wait=abc", "GET", "/v1/services/web?index=1&wait=abc", "wait"),
  badRequest("?wait=-1s", "GET", "/v1/services/web?index=1&wait=-1s", "wait"),
  badRequest('?wait="10 s"', "GET", "/v1/services?index=1&wait=10%20s", "wait"),
  badRequest("?wait=1.5s", "GET", "/v1/services/api?index=1&wait=1.5s", "wait"),
  badRequest("?index=-1", "GET", "/v1/services?index=-1", "index"),
  badRequest("?index=1.5", "GET", "/v1/services/web?index=1.5", "index"),
  badRequest("?index=abc", "GET", "/v1/services?index=abc", "index"),
  badRequest("?consistency=strong", "GET", "/v1/services?consistency=strong", "consistency"),
  badRequest("?consistency=STALE", "GET", "/v1/services/web?consistency=STALE", "consistency"),
  badRequest("empty ?consistency=", "GET", "/v1/services?consistency=", "consistency"),
  badRequest("?healthy=maybe", "GET", "/v1/services/web?healthy=maybe", "healthy"),
  badRequest("?tag= not a DNS label", "GET", "/v1/services/web?tag=Not_A_Label", "tag.0"),
  badRequest("unknown query parameter on the list", "GET", "/v1/services?dc=east", "dc"),
  badRequest("unknown query parameter on a lookup", "GET", "/v1/services/web?foo=bar", "foo"),
  // Self-preservation.
  badRequest("self-preservation mode maybe", "PUT", "/v1/cluster/self-preservation", "mode", {
    json: { mode: "maybe" },
  }),
  badRequest("self-preservation mode ON", "PUT", "/v1/cluster/self-preservation", "mode", {
    json: { mode: "ON" },
  }),
  badRequest("self-preservation mode true", "PUT", "/v1/cluster/self-preservation", "mode", {
    json: { mode: true },
  }),
  badRequest("self-preservation without a mode", "PUT", "/v1/cluster/self-preservation", "mode", {
    json: {},
  }),
];

/**
 * Deregistrations of what does not exist. Whether an instance exists is decided when the
 * entry applies, never by a check on the leader beforehand, so each commits one entry that
 * changes nothing but the applied index.
 */
const decidedInLog: readonly BadInput[] = [
  notFound("deregistration of an unknown id", "DELETE", "/v1/services/web/instances/w9"),
  notFound("deregistration of an unknown service", "DELETE", "/v1/services/nosuch/instances/w1"),
  notFound(
    "deregistration of an unknown id of another service",
    "DELETE",
    "/v1/services/api/instances/w1",
  ),
];

/** Spread the cases over every node in turn. */
function spread(cases: readonly BadInput[], offset: number) {
  return cases.map((input, i) => {
    const via = nodes[(i + offset) % nodes.length] ?? "n1";
    return { ...input, via, title: `${input.name} (${input.method} via ${via})` };
  });
}

interface Answer {
  readonly status: number;
  readonly contentType: string | null;
  readonly body: unknown;
}

let cluster: AgentCluster;

async function send(via: string, input: BadInput): Promise<Answer> {
  const headers: Record<string, string> = {};
  let body: string | undefined;
  if (input.raw !== undefined) {
    headers["content-type"] = input.raw.contentType;
    body = input.raw.body;
  } else if (input.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(input.json);
  }
  const response = await fetch(`http://${cluster.get(via).http}${input.path}`, {
    method: input.method,
    headers,
    ...(body === undefined ? {} : { body }),
    signal: AbortSignal.timeout(requestTimeoutMs),
  });
  const text = await response.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return {
    status: response.status,
    contentType: response.headers.get("content-type"),
    body: parsed,
  };
}

async function expectAnswer(via: string, input: BadInput): Promise<void> {
  const answer = await send(via, input);
  const shown = JSON.stringify(answer.body).slice(0, 400);
  expect(answer.status, shown).toBe(input.status);
  expect(answer.contentType ?? "", shown).toMatch(/^application\/json/);
  const error = (answer.body as { error?: { code?: unknown; message?: unknown; field?: unknown } })
    .error;
  expect(error, shown).toBeDefined();
  expect(error?.code, shown).toBe(input.code);
  expect(typeof error?.message === "string" && error.message.length > 0, shown).toBe(true);
  if (input.field !== undefined) expect(error?.field, shown).toBe(input.field);
}

/** What every node shows of the registry, read from its own state. */
async function registryViews(): Promise<unknown[]> {
  return Promise.all(
    nodes.map(async (via) => {
      const list = await cluster.request(via, "GET", "/v1/services?consistency=stale");
      const services = await Promise.all(
        Object.keys(known).map(
          async (service) =>
            (await cluster.request(via, "GET", `/v1/services/${service}?consistency=stale`)).body,
        ),
      );
      return { via, list: list.body, services };
    }),
  ).then((views) => views.map(({ list, services }) => ({ list, services })));
}

/** Every node agrees on the state and it holds still (no member or checkpoint entry pending). */
async function settled(): Promise<{ appliedIndex: number; hash: string }> {
  return eventually(
    "the cluster to settle",
    async () => {
      const before = await cluster.converged();
      const members = await Promise.all(
        nodes.map((via) => cluster.request(via, "GET", "/v1/cluster/members")),
      );
      const recorded = members.every((answer) =>
        (answer.body.members as { http: string | null }[]).every((member) => member.http !== null),
      );
      await sleep(1000);
      const after = await cluster.converged();
      return recorded && before.hash === after.hash ? after : undefined;
    },
    30_000,
  );
}

let initial: { appliedIndex: number; hash: string };
let initialViews: unknown[];

beforeAll(async () => {
  // TTL checkpoints are log entries that change the state hash; keep them out of the window.
  cluster = await AgentCluster.create({ args: ["--ttl-checkpoint-interval=1h"] });
  await cluster.bootstrap([...nodes]);
  await cluster.leader(20_000);
  let turn = 0;
  for (const [service, instances] of Object.entries(known)) {
    for (const [id, body] of Object.entries(instances)) {
      const via = nodes[turn++ % nodes.length] ?? "n1";
      await eventually(`registration of ${service}/${id}`, async () => {
        const answer = await cluster.request(
          via,
          "PUT",
          `/v1/services/${service}/instances/${id}`,
          body,
        );
        return answer.status === 200 ? true : undefined;
      });
    }
  }
  initial = await settled();
  initialViews = await registryViews();
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
}, 30_000);

describe("bad input to the registry API on a three-node cluster", () => {
  it("has a table of at least 40 bad inputs", () => {
    expect(rejected.length + decidedInLog.length).toBeGreaterThanOrEqual(40);
  });

  it.each(spread(rejected, 0))("rejects $title", async ({ via, ...input }) => {
    await expectAnswer(via, input);
  });

  it("left the state hash exactly as it was, on every node", async () => {
    const now = await cluster.converged();
    expect(now).toEqual(initial);
  });

  it.each(spread(decidedInLog, 1))("answers 404 to $title", async ({ via, ...input }) => {
    await expectAnswer(via, input);
  });

  it("left the registry unchanged: one no-op entry per unknown deregistration, nothing else", async () => {
    const now = await cluster.converged();
    expect(now.appliedIndex).toBe(initial.appliedIndex + decidedInLog.length);
    expect(await registryViews()).toEqual(initialViews);
  });

  it("lists exactly the instances registered before the table, as registered", async () => {
    for (const via of nodes) {
      const list = await cluster.request(via, "GET", "/v1/services?consistency=stale");
      expect(list.body.services).toEqual([
        { name: "api", instances: 1, passing: 1, tags: ["v1"] },
        { name: "web", instances: 2, passing: 2, tags: ["primary"] },
      ]);
      for (const [service, instances] of Object.entries(known)) {
        const answer = await cluster.request(
          via,
          "GET",
          `/v1/services/${service}?consistency=stale`,
        );
        const shown = answer.body.instances as Record<string, unknown>[];
        expect(shown.map((instance) => instance.id)).toEqual(Object.keys(instances).sort());
        for (const instance of shown) {
          const registered = instances[instance.id as keyof typeof instances] as Record<
            string,
            unknown
          >;
          expect(instance).toMatchObject({
            service,
            address: registered.address,
            port: registered.port,
            tags: registered.tags ?? [],
            meta: registered.meta ?? {},
            weight: registered.weight ?? 100,
            version: registered.version ?? "",
            ttl: registered.ttl,
            status: "passing",
          });
        }
      }
    }
  });

  it("crashed no node", async () => {
    for (const via of nodes) {
      expect(cluster.get(via).process?.exitCode ?? null).toBeNull();
      const health = await cluster.request(via, "GET", "/healthz");
      expect(health).toEqual({ status: 200, body: { status: "ok" } });
    }
  });
});
