import { request as httpRequest, type IncomingMessage } from "node:http";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster, eventually } from "./agents.js";

const ids = ["n1", "n2", "n3"];
const protoFile = fileURLToPath(new URL("../../proto/muster/v1/muster.proto", import.meta.url));
const maxWatchesPerClient = 3;
const rateLimit = 40;
const maxSessionsPerClient = 2;
let cluster: AgentCluster;

beforeAll(async () => {
  cluster = await AgentCluster.create({
    args: [
      `--max-watches-per-client=${maxWatchesPerClient}`,
      `--rate-limit=${rateLimit}`,
      `--max-sessions-per-client=${maxSessionsPerClient}`,
    ],
  });
  await cluster.bootstrap(ids);
  await cluster.leader();
});
afterAll(async () => {
  await cluster.destroy();
});

/**
 * The tests' usual client: an address of its own, so that the harness's requests (from
 * 127.0.0.1) never count against its limits.
 */
const testClient = "127.0.0.10";

interface Answer {
  readonly status: number;
  readonly headers: IncomingMessage["headers"];
  readonly body: string;
}

/**
 * A request to node `id` from source address `from` (default: testClient): loopback
 * addresses stand for clients. A watch stream's answer is its head; its connection stays
 * open until `signal` aborts.
 */
function send(
  id: string,
  path: string,
  options: {
    from?: string;
    method?: string;
    body?: unknown;
    signal?: AbortSignal;
    headers?: Record<string, string>;
  } = {},
): Promise<Answer> {
  const [host, port] = cluster.get(id).http.split(":") as [string, string];
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      {
        host,
        port: Number(port),
        path,
        method: options.method ?? "GET",
        localAddress: options.from ?? testClient,
        headers: {
          ...options.headers,
          ...(payload === undefined ? {} : { "content-type": "application/json" }),
        },
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          body += chunk;
        });
        response.on("error", () =>
          resolve({ status: response.statusCode ?? 0, headers: response.headers, body }),
        );
        response.on("end", () =>
          resolve({ status: response.statusCode ?? 0, headers: response.headers, body }),
        );
        // A stream's head is the answer: its body keeps coming until the signal aborts.
        if (response.headers["content-type"]?.startsWith("text/event-stream"))
          resolve({ status: response.statusCode ?? 0, headers: response.headers, body: "" });
      },
    );
    request.on("error", (error) =>
      options.signal?.aborted === true
        ? resolve({ status: 0, headers: {}, body: "" })
        : reject(error),
    );
    request.end(payload);
  });
}

/** Waits until `count` requests of a test are parked on node `id` (they count in its metrics). */
async function watchersOn(id: string, count: number): Promise<void> {
  await eventually(
    `${count} watchers on ${id}`,
    async () => {
      const metrics = await send(id, "/metrics", { from: "127.0.0.3" });
      return new RegExp(`^muster_watchers ${count}$`, "m").test(metrics.body) ? true : undefined;
    },
    10_000,
  );
}

describe("limits on the HTTP API", () => {
  it("refuses a client more blocking queries and watches than allowed, while others are served", async () => {
    const registered = await send("n1", "/v1/services/web/instances/a", {
      method: "PUT",
      body: { address: "127.0.0.1", port: 80 },
    });
    expect(registered.status).toBe(200);
    const index = Number((await send("n1", "/v1/services/web")).headers["x-muster-index"]);
    const hold = new AbortController();
    try {
      // Two blocking queries and one SSE stream: the client's whole allowance on n1.
      const parked = [
        send("n1", `/v1/services/web?index=${index}&wait=30s`, { signal: hold.signal }),
        send("n1", `/v1/services/web?index=${index}&wait=30s`, { signal: hold.signal }),
      ];
      const stream = await send("n1", "/v1/watch/services/web", { signal: hold.signal });
      expect(stream.status).toBe(200);
      await watchersOn("n1", maxWatchesPerClient);

      const refused = await send("n1", `/v1/services/web?index=${index}&wait=30s`);
      expect(refused.status).toBe(429);
      expect(refused.headers["retry-after"]).toBe("1");
      expect(JSON.parse(refused.body)).toEqual({
        error: {
          code: "MUSTER_ERR_TOO_MANY_REQUESTS",
          message: expect.stringContaining("--max-watches-per-client"),
        },
      });
      const refusedStream = await send("n1", "/v1/watch/services/web");
      expect(refusedStream.status).toBe(429);
      // A read that does not wait is not a watch: still served.
      expect((await send("n1", "/v1/services/web")).status).toBe(200);

      // Another client, and the same client on another node, are served.
      const otherClient = send("n1", `/v1/services/web?index=${index}&wait=30s`, {
        from: "127.0.0.2",
        signal: hold.signal,
      });
      const otherNode = send("n2", `/v1/services/web?index=${index}&wait=30s`, {
        signal: hold.signal,
      });
      await watchersOn("n1", maxWatchesPerClient + 1);
      await watchersOn("n2", 1);

      // A change answers the blocking queries: their places are free again.
      expect(
        (
          await send("n1", "/v1/services/web/instances/b", {
            method: "PUT",
            body: { address: "127.0.0.1", port: 81 },
          })
        ).status,
      ).toBe(200);
      for (const answer of await Promise.all([...parked, otherClient, otherNode]))
        expect(answer.status).toBe(200);
      await watchersOn("n1", 1);
      const again = send("n1", `/v1/services/web?index=${index + 1000}&wait=30s`, {
        signal: hold.signal,
      });
      await watchersOn("n1", 2);
      hold.abort();
      await again;
    } finally {
      hold.abort();
    }
  });

  it("answers a client over its rate 429 with Retry-After, while another client is served", async () => {
    await eventually(
      "the previous test's requests to age out of the window",
      async () => ((await send("n3", "/healthz")).status === 200 ? true : undefined),
      5000,
    );
    const flood = await Promise.all(
      Array.from({ length: 3 * rateLimit }, () => send("n3", "/v1/services")),
    );
    const statuses = flood.map((answer) => answer.status);
    expect(statuses.filter((status) => status === 200).length).toBeGreaterThan(0);
    const limited = flood.filter((answer) => answer.status === 429);
    expect(limited.length).toBeGreaterThanOrEqual(rateLimit);
    expect(statuses.every((status) => status === 200 || status === 429)).toBe(true);
    expect(limited[0]?.headers["retry-after"]).toBe("1");
    expect(JSON.parse(limited[0]?.body ?? "{}")).toEqual({
      error: {
        code: "MUSTER_ERR_TOO_MANY_REQUESTS",
        message: expect.stringContaining("--rate-limit"),
      },
    });
    // Meanwhile another client is still served, and a second later so is the first.
    expect((await send("n3", "/v1/services", { from: "127.0.0.2" })).status).toBe(200);
    await eventually(
      "the flood's window to pass",
      async () => ((await send("n3", "/v1/services")).status === 200 ? true : undefined),
      5000,
    );
  });

  it("caps the sessions one client holds in the cluster, wherever it creates them", async () => {
    const leader = await cluster.leader();
    const follower = ids.find((id) => id !== leader) as string;
    const create = (via: string, from: string) =>
      send(via, "/v1/sessions", { method: "POST", body: { ttl: "30s" }, from });
    // Through a follower, which forwards to the leader: counted as this client's, not the follower's.
    for (let i = 0; i < maxSessionsPerClient; i++)
      expect((await create(follower, "127.0.0.5")).status).toBe(200);
    const refused = await create(leader, "127.0.0.5");
    expect(refused.status).toBe(429);
    expect(JSON.parse(refused.body)).toEqual({
      error: {
        code: "MUSTER_ERR_TOO_MANY_REQUESTS",
        message: expect.stringContaining("--max-sessions-per-client"),
      },
    });
    expect((await create(follower, "127.0.0.5")).status).toBe(429);
    expect((await create(leader, "127.0.0.6")).status).toBe(200);
    // Claiming to be forwarded for someone else does not work without the members' key.
    const spoofed = (i: number) =>
      send(leader, "/v1/sessions", {
        method: "POST",
        body: { ttl: "30s" },
        from: "127.0.0.7",
        headers: { "x-muster-forwarded": `10.0.0.${i}`, "x-muster-forwarding-key": "guess" },
      });
    const statuses = [];
    for (let i = 0; i <= maxSessionsPerClient; i++) statuses.push((await spoofed(i)).status);
    expect(statuses).toEqual([200, 200, 429]);
  });

  // The gRPC client connects from 127.0.0.1 (grpc-js cannot choose its source address), so
  // this shows the cap applies to gRPC watches, not which address they count against.
  it("caps gRPC watches like HTTP ones: RESOURCE_EXHAUSTED with muster-code", async () => {
    const Registry = (
      grpc.loadPackageDefinition(protoLoader.loadSync(protoFile, { oneofs: true })) as unknown as {
        muster: {
          v1: {
            Registry: new (address: string, credentials: grpc.ChannelCredentials) => grpc.Client;
          };
        };
      }
    ).muster.v1.Registry;
    const registry = new Registry(
      cluster.get("n3").grpc,
      grpc.credentials.createInsecure(),
    ) as grpc.Client & {
      watch(request: { service: string }): grpc.ClientReadableStream<unknown>;
    };
    const streams: grpc.ClientReadableStream<unknown>[] = [];
    try {
      const open = () => {
        const stream = registry.watch({ service: "web" });
        stream.on("data", () => undefined);
        streams.push(stream);
        return new Promise<grpc.ServiceError | null>((resolve) => {
          stream.on("error", (error: grpc.ServiceError) => resolve(error));
          stream.on("end", () => resolve(null));
        });
      };
      const ended = [open(), open(), open()];
      await watchersOn("n3", maxWatchesPerClient);
      const refused = await open();
      expect(refused?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(refused?.metadata.get("muster-code")).toEqual(["MUSTER_ERR_TOO_MANY_REQUESTS"]);
      // An HTTP client at another address may still watch on the same node.
      const hold = new AbortController();
      const parked = send("n3", "/v1/services/web?index=100000&wait=30s", { signal: hold.signal });
      await watchersOn("n3", maxWatchesPerClient + 1);
      hold.abort();
      await parked;
      for (const stream of streams) stream.cancel();
      await Promise.all(ended);
    } finally {
      for (const stream of streams) stream.cancel();
      registry.close();
    }
  });
});
