import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster, eventually, serverSentEvents, sleep } from "./agents.js";

const ids = ["n1", "n2", "n3"];

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Record<string, unknown>;
}

/** A JSON request to node `via` whose answer keeps its headers (the harness drops them). */
async function call(
  cluster: AgentCluster,
  via: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<Answer> {
  const response = await fetch(`http://${cluster.get(via).http}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(8000),
  });
  return {
    status: response.status,
    headers: response.headers,
    body: (await response.json()) as Record<string, unknown>,
  };
}

function instanceBody(port: number) {
  return { address: "10.0.0.1", port, ttl: "30s" };
}

/** The API's error shape, and nothing else in it. */
const errorShape = {
  error: { code: expect.stringMatching(/^MUSTER_ERR_[A-Z_]+$/), message: expect.any(String) },
};

interface WatchEvent {
  readonly id: number;
  readonly instances: readonly string[];
}

/**
 * An SSE watch of `service` on node `via`, read in the background: `events` fills as they
 * arrive. The request is not awaited, since a stream with nothing to send yet may not have
 * sent its head either.
 */
function watch(
  cluster: AgentCluster,
  via: string,
  service: string,
  headers: Record<string, string> = {},
) {
  const controller = new AbortController();
  const events: WatchEvent[] = [];
  let status: number | null = null;
  let failure: unknown = null;
  const reading = (async () => {
    const response = await fetch(`http://${cluster.get(via).http}/v1/watch/services/${service}`, {
      headers,
      signal: controller.signal,
    });
    status = response.status;
    for await (const { id, data } of serverSentEvents(response.body)) {
      const view = data as { instances: { id: string }[] };
      events.push({ id, instances: view.instances.map((i) => i.id) });
    }
  })().catch((error: unknown) => {
    if (!controller.signal.aborted) failure = error;
  });
  return {
    events,
    get status() {
      return status;
    },
    /** The `n`th event (from 0), waiting at most `timeoutMs` for it. */
    async event(n: number, timeoutMs = 10_000): Promise<WatchEvent> {
      return eventually(
        `event ${n} of the watch of ${service} on ${via}`,
        async () => {
          if (failure !== null) throw failure;
          return events[n];
        },
        timeoutMs,
      );
    },
    async close(): Promise<void> {
      controller.abort();
      await reading;
    },
  };
}

/** The value of an unlabelled metric in a Prometheus text exposition; NaN when absent. */
function metric(text: string, name: string): number {
  const line = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return line === null ? Number.NaN : Number(line[1]);
}

async function metricsOf(cluster: AgentCluster, via: string): Promise<string> {
  const response = await fetch(`http://${cluster.get(via).http}/metrics`, {
    signal: AbortSignal.timeout(8000),
  });
  expect(response.status).toBe(200);
  return response.text();
}

/** A three-node cluster with a leader for the tests of one describe block, stopped after them. */
function startedCluster(use: (cluster: AgentCluster) => void, args: readonly string[] = []): void {
  let started: AgentCluster | undefined;
  beforeAll(async () => {
    started = await AgentCluster.create({ args });
    await started.bootstrap(ids);
    await started.leader();
    use(started);
  });
  afterAll(async () => {
    await started?.destroy();
  });
}

describe("the HTTP API's surface on a healthy three-node cluster", () => {
  let cluster: AgentCluster;
  startedCluster((started) => {
    cluster = started;
  });

  async function register(via: string, service: string, id: string, port = 8080) {
    const answer = await cluster.request(
      via,
      "PUT",
      `/v1/services/${service}/instances/${id}`,
      instanceBody(port),
    );
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  }

  it("a stale read on a follower says how long since it heard from the leader, and that it knows one", async () => {
    const leader = await cluster.leader();
    const follower = ids.find((id) => id !== leader) ?? "n1";
    await register(leader, "stale", "s1");
    // Stale: the follower answers from its own state, which may not have the instance yet.
    const answer = await eventually("the follower to apply the registration", async () => {
      const read = await call(cluster, follower, "GET", "/v1/services/stale?consistency=stale");
      return read.status === 200 ? read : undefined;
    });
    const lastContact = answer.headers.get("x-muster-last-contact");
    expect(lastContact).toMatch(/^\d+$/);
    expect(Number(lastContact)).toBeLessThan(5000);
    // As Consul's X-Consul-KnownLeader: whether this node knows of a leader.
    expect(answer.headers.get("x-muster-known-leader")).toBe("true");
  });

  it("GET /v1/cluster shows the leader, the members, the indexes and self-preservation from any node", async () => {
    const leader = await cluster.leader();
    const follower = ids.find((id) => id !== leader) ?? "n1";
    const answer = await cluster.request(follower, "GET", "/v1/cluster");
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    expect(answer.body).toMatchObject({
      leader: { id: leader },
      selfPreservation: { mode: "auto", engaged: false },
    });
    expect((answer.body.members as { id: string }[]).map((m) => m.id).sort()).toEqual(ids);
    expect(answer.body.appliedIndex).toBeGreaterThan(0);
    expect(answer.body.commitIndex).toBeGreaterThanOrEqual(answer.body.appliedIndex as number);
  });

  it("transfers leadership to a named follower, which every node then names and which takes writes", async () => {
    const leader = await cluster.leader();
    const target = ids.find((id) => id !== leader) ?? "n1";
    const asked = await cluster.request(leader, "POST", "/v1/cluster/transfer-leadership", {
      to: target,
    });
    expect(asked.status, JSON.stringify(asked.body)).toBe(200);
    await eventually(
      `every node to name ${target} the leader`,
      async () => {
        const named = await Promise.all(
          ids.map(async (id) => {
            const answer = await cluster.request(id, "GET", "/v1/cluster/leader");
            return (answer.body.leader as { id: string } | null)?.id;
          }),
        );
        if (named.every((id) => id === target)) return true;
        throw new Error(`leaders named: ${named.map((id, i) => `${ids[i]}: ${id}`).join(", ")}`);
      },
      10_000,
    );
    const written = await cluster.request(
      target,
      "PUT",
      "/v1/services/moved/instances/m1",
      instanceBody(8081),
    );
    expect(written.status, JSON.stringify(written.body)).toBe(200);
    expect(written.body).toMatchObject({ id: "m1", service: "moved", status: "passing" });
  });

  it("/metrics shows the Raft term, indexes, leadership and messages sent; the indexes grow with a write", async () => {
    const leader = await cluster.leader();
    const scrapes = new Map(
      await Promise.all(ids.map(async (id) => [id, await metricsOf(cluster, id)] as const)),
    );
    for (const [id, text] of scrapes) {
      expect(metric(text, "muster_raft_term"), id).toBeGreaterThanOrEqual(1);
      expect(metric(text, "muster_raft_commit_index"), id).toBeGreaterThanOrEqual(1);
      expect(metric(text, "muster_raft_applied_index"), id).toBeGreaterThanOrEqual(0);
      expect(metric(text, "muster_raft_messages_sent_total"), id).toBeGreaterThan(0);
      expect(metric(text, "muster_raft_is_leader"), id).toBe(id === leader ? 1 : 0);
    }

    const before = scrapes.get(leader) ?? "";
    await register(leader, "metered", "x1");
    // The Raft core notes what was applied when the runtime hands back its batch, which can be
    // a turn after the write's answer.
    await eventually("the leader's indexes to grow", async () => {
      const after = await metricsOf(cluster, leader);
      const grown = (name: string) => metric(after, name) > metric(before, name);
      return grown("muster_raft_commit_index") && grown("muster_raft_applied_index")
        ? true
        : undefined;
    });
  });

  it("GET /docs serves an OpenAPI document listing the registry paths", async () => {
    const response = await fetch(`http://${cluster.get("n1").http}/docs`, {
      signal: AbortSignal.timeout(8000),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/^application\/json/);
    const document = (await response.json()) as {
      openapi?: string;
      paths?: Record<string, Record<string, unknown>>;
    };
    expect(document.openapi).toMatch(/^3\./);
    const paths = document.paths ?? {};
    expect(Object.keys(paths)).toEqual(
      expect.arrayContaining(["/v1/services/{service}", "/v1/services/{service}/instances/{id}"]),
    );
    expect(Object.keys(paths["/v1/services/{service}"] ?? {})).toContain("get");
    expect(Object.keys(paths["/v1/services/{service}/instances/{id}"] ?? {})).toEqual(
      expect.arrayContaining(["put", "delete"]),
    );
  });

  it("an SSE watch resumes from Last-Event-ID: only what changed after it, and nothing until a change", async () => {
    await register("n1", "web", "w1");
    const first = watch(cluster, "n2", "web");
    const seen = await first.event(0);
    await first.close();
    expect(seen.instances).toContain("w1");

    await register("n3", "web", "w2");
    const resumed = watch(cluster, "n2", "web", { "Last-Event-ID": String(seen.id) });
    try {
      const next = await resumed.event(0);
      expect(next.id).toBeGreaterThan(seen.id);
      expect(next.instances).toEqual(expect.arrayContaining(["w1", "w2"]));
    } finally {
      await resumed.close();
    }

    const current = await cluster.request("n2", "GET", "/v1/services/web?consistency=linearizable");
    const index = current.body.index as number;
    const quiet = watch(cluster, "n2", "web", { "Last-Event-ID": String(index) });
    try {
      await sleep(1000);
      expect(quiet.events).toEqual([]);
      await register("n1", "web", "w3");
      const change = await quiet.event(0, 5000);
      expect(change.id).toBeGreaterThan(index);
      expect(change.instances).toEqual(expect.arrayContaining(["w1", "w2", "w3"]));
      expect(quiet.status).toBe(200);
    } finally {
      await quiet.close();
    }
  });
});

describe("the node-wide watch limit (--max-watches)", () => {
  const maxWatches = 3;
  let cluster: AgentCluster;
  startedCluster(
    (started) => {
      cluster = started;
    },
    [`--max-watches=${maxWatches}`],
  );

  it("refuses the watch over the limit with 503, and takes one again once a watch closes", async () => {
    const registered = await cluster.request(
      "n1",
      "PUT",
      "/v1/services/web/instances/w1",
      instanceBody(8080),
    );
    expect(registered.status, JSON.stringify(registered.body)).toBe(200);
    const open: ReturnType<typeof watch>[] = [];
    try {
      for (let i = 0; i < maxWatches; i++) {
        const stream = watch(cluster, "n1", "web");
        open.push(stream);
        // The first event: the stream began, and counts against the limit.
        await stream.event(0);
        expect(stream.status).toBe(200);
      }

      const refused = await fetch(`http://${cluster.get("n1").http}/v1/watch/services/web`, {
        signal: AbortSignal.timeout(8000),
      });
      // An accepted stream would never end: do not read its body.
      if (refused.status !== 503) await refused.body?.cancel();
      expect(refused.status).toBe(503);
      expect(refused.headers.get("retry-after")).toMatch(/^\d+$/);
      expect(await refused.json()).toEqual({
        error: { code: "MUSTER_ERR_OVERLOADED", message: expect.stringContaining("--max-watches") },
      });

      await open.shift()?.close();
      const again = await eventually(
        "a new watch to be accepted after one closed",
        async () => {
          const stream = watch(cluster, "n1", "web");
          open.push(stream);
          await eventually("its first event or its end", async () =>
            stream.events.length > 0 || (stream.status !== null && stream.status !== 200)
              ? true
              : undefined,
          );
          return stream.events.length > 0 ? stream : undefined;
        },
        10_000,
      );
      expect(again.status).toBe(200);
    } finally {
      await Promise.all(open.map((stream) => stream.close()));
    }
  });
});

describe("a node that has lost its quorum", () => {
  let cluster: AgentCluster;
  startedCluster((started) => {
    cluster = started;
  });

  it("answers writes and linearizable reads 503 with Retry-After, and stale reads from its own state", async () => {
    const leader = await cluster.leader();
    const registered = await cluster.request(
      leader,
      "PUT",
      "/v1/services/web/instances/w1",
      instanceBody(8080),
    );
    expect(registered.status, JSON.stringify(registered.body)).toBe(200);
    // Every node has the instance before the quorum goes.
    await cluster.converged();
    const survivor = ids.find((id) => id !== leader) ?? "n1";
    for (const id of ids) if (id !== survivor) await cluster.kill(id, "SIGKILL");

    /** Polls until `path` answers 503 (each try may wait for a leader for seconds). */
    const unavailable = (method: string, path: string, body?: unknown) =>
      eventually(
        `${method} ${path} on ${survivor} to answer 503`,
        async () => {
          const answer = await call(cluster, survivor, method, path, body);
          if (answer.status === 503) return answer;
          throw new Error(`answered ${answer.status}: ${JSON.stringify(answer.body)}`);
        },
        30_000,
      );

    const write = await unavailable("PUT", "/v1/services/web/instances/w2", instanceBody(8081));
    expect(write.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(write.body).toEqual(errorShape);

    const read = await unavailable("GET", "/v1/services/web?consistency=linearizable");
    expect(read.headers.get("retry-after")).toMatch(/^\d+$/);
    expect(read.body).toEqual(errorShape);

    const stale = await call(cluster, survivor, "GET", "/v1/services/web?consistency=stale");
    expect(stale.status, JSON.stringify(stale.body)).toBe(200);
    expect((stale.body.instances as { id: string }[]).map((i) => i.id)).toEqual(["w1"]);
  });
});
