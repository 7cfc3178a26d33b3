import { spawnSync } from "node:child_process";
import { Resolver } from "node:dns/promises";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MusterApiError, MusterClient } from "../../client-sdk/src/index.js";
import { AgentCluster, eventually, sleep } from "./agents.js";

const ids = ["n1", "n2", "n3"];
const management = "management-secret-for-tests-0001";
const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));
const protoFile = fileURLToPath(new URL("../../proto/muster/v1/muster.proto", import.meta.url));
let cluster: AgentCluster;
let leader: string;
let follower: string;

beforeAll(async () => {
  cluster = await AgentCluster.create({
    args: ["--acl-enabled", `--acl-bootstrap-token=${management}`],
    token: management,
  });
  await cluster.bootstrap(ids);
  leader = await cluster.leader();
  follower = ids.find((id) => id !== leader) as string;
  // The first leader makes the management token: wait until every node knows it.
  await eventually(
    "the management token on every node",
    async () => {
      const answers = await Promise.all(
        ids.map((id) => cluster.request(id, "GET", "/v1/acl/tokens/self")),
      );
      return answers.every((answer) => answer.status === 200) ? true : undefined;
    },
    30_000,
  );
});
afterAll(async () => {
  await cluster.destroy();
});

const instance = { address: "10.0.0.1", port: 80 };

async function policy(name: string, rules: unknown[]): Promise<void> {
  const answer = await cluster.request(follower, "PUT", `/v1/acl/policies/${name}`, { rules });
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
}

async function token(policies: string[]): Promise<{ accessor: string; secret: string }> {
  const answer = await cluster.request(follower, "POST", "/v1/acl/tokens", { policies });
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  return answer.body as { accessor: string; secret: string };
}

/** A token made on one node is known on every node once its entry applies there. */
async function knownEverywhere(secret: string): Promise<void> {
  await eventually(
    "the token on every node",
    async () => {
      const answers = await Promise.all(
        ids.map((id) => cluster.request(id, "GET", "/v1/acl/tokens/self", undefined, secret)),
      );
      return answers.every((answer) => answer.status === 200) ? true : undefined;
    },
    10_000,
  );
}

/** A plain gRPC Registry client of `node`; the caller closes it. */
function registryClient(node: string): grpc.Client {
  const { Registry } = (
    grpc.loadPackageDefinition(protoLoader.loadSync(protoFile, { oneofs: true })) as unknown as {
      muster: {
        v1: {
          Registry: new (address: string, credentials: grpc.ChannelCredentials) => grpc.Client;
        };
      };
    }
  ).muster.v1;
  return new Registry(cluster.get(node).grpc, grpc.credentials.createInsecure());
}

function denial(answer: { status: number; body: Record<string, unknown> }) {
  expect(answer.status, JSON.stringify(answer.body)).toBe(403);
  return answer.body.error as { code: string; message: string; permission?: string };
}

describe("ACLs", () => {
  it("a service:web write token registers web and web-* but not db, on any node", async () => {
    await policy("web-writer", [{ resource: "service", prefix: "web", access: "write" }]);
    const web = await token(["web-writer"]);
    await knownEverywhere(web.secret);
    for (const [node, service] of [
      [leader, "web"],
      [follower, "web-api"],
    ] as const) {
      const answer = await cluster.request(
        node,
        "PUT",
        `/v1/services/${service}/instances/i1`,
        instance,
        web.secret,
      );
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    }
    for (const node of ids) {
      const error = denial(
        await cluster.request(node, "PUT", "/v1/services/db/instances/d1", instance, web.secret),
      );
      expect(error.code).toBe("MUSTER_ERR_PERMISSION_DENIED");
      expect(error.permission).toBe("service:db write");
      expect(error.message).toContain("service:db write");
    }
    // Nothing was written: db does not exist.
    const db = await cluster.request(leader, "GET", "/v1/services/db?consistency=linearizable");
    expect(db.status).toBe(404);
  });

  it("without a token: 403 on writes and on reads the anonymous token lacks", async () => {
    const write = denial(
      await cluster.request(follower, "PUT", "/v1/services/web/instances/x", instance, null),
    );
    expect(write.permission).toBe("service:web write");
    denial(await cluster.request(follower, "GET", "/v1/services/web", undefined, null));
    denial(await cluster.request(follower, "POST", "/v1/sessions", {}, null));
    denial(await cluster.request(follower, "GET", "/v1/cluster/members", undefined, null));
    // Probes and the leader's address stay open.
    expect((await cluster.request(follower, "GET", "/readyz", undefined, null)).status).toBe(200);
    expect(
      (await cluster.request(follower, "GET", "/v1/cluster/leader", undefined, null)).status,
    ).toBe(200);
    // A secret no token has is refused even where no token is needed.
    const unknown = denial(
      await cluster.request(follower, "GET", "/v1/services", undefined, "no-such-secret-000000"),
    );
    expect(unknown.message).toContain("no token has this secret");
  });

  it("a read-only token reads but cannot take a lock; the management token can", async () => {
    await policy("reader", [
      { resource: "service", access: "read" },
      { resource: "lock", access: "read" },
      { resource: "session", access: "write" },
    ]);
    const reader = await token(["reader"]);
    await knownEverywhere(reader.secret);
    const session = await cluster.request(follower, "POST", "/v1/sessions", {}, reader.secret);
    expect(session.status, JSON.stringify(session.body)).toBe(200);
    const sessionId = session.body.id as string;
    const acquire = denial(
      await cluster.request(
        follower,
        "POST",
        "/v1/locks/jobs%2Fnightly/acquire",
        { session: sessionId },
        reader.secret,
      ),
    );
    expect(acquire.permission).toBe("lock:jobs/nightly write");
    expect(
      (await cluster.request(follower, "GET", "/v1/locks/jobs%2Fnightly", undefined, reader.secret))
        .status,
    ).toBe(200);
    const list = await cluster.request(follower, "GET", "/v1/services", undefined, reader.secret);
    expect(list.status).toBe(200);
    // The management token does all of it.
    const held = await cluster.request(follower, "POST", "/v1/locks/jobs%2Fnightly/acquire", {
      session: sessionId,
    });
    expect(held.body.acquired, JSON.stringify(held.body)).toBe(true);
    expect((await cluster.request(follower, "GET", "/v1/cluster/members")).status).toBe(200);
    expect(
      (await cluster.request(leader, "PUT", "/v1/services/db/instances/d1", instance)).status,
    ).toBe(200);
  });

  it("bad ACL input is answered 400 naming the field, and changes nothing", async () => {
    const before = await cluster.request(
      leader,
      "GET",
      "/v1/acl/policies?consistency=linearizable",
    );
    const cases: [string, string, unknown, string | undefined][] = [
      [
        "PUT",
        "/v1/acl/policies/p1",
        { rules: [{ resource: "nodes", access: "read" }] },
        "rules.0.resource",
      ],
      [
        "PUT",
        "/v1/acl/policies/p1",
        { rules: [{ resource: "service", access: "admin" }] },
        "rules.0.access",
      ],
      [
        "PUT",
        "/v1/acl/policies/p1",
        { rules: [{ resource: "cluster", prefix: "x", access: "read" }] },
        "rules.0.prefix",
      ],
      ["PUT", "/v1/acl/policies/p1", { rules: "service:web=write" }, "rules"],
      ["PUT", "/v1/acl/policies/p1", {}, "rules"],
      ["PUT", `/v1/acl/policies/${"p".repeat(200)}`, { rules: [] }, "name"],
      ["PUT", "/v1/acl/policies/p1", { rules: [], extra: 1 }, "extra"],
      ["POST", "/v1/acl/tokens", { policies: ["no-such-policy"] }, "policies.0"],
      ["POST", "/v1/acl/tokens", { policies: "web-writer" }, "policies"],
      ["POST", "/v1/acl/tokens", { policies: ["web-writer", "web-writer"] }, "policies"],
      [
        "PUT",
        "/v1/acl/tokens/anonymous",
        { policies: [], description: "d".repeat(300) },
        "description",
      ],
    ];
    for (const [method, path, body, field] of cases) {
      const answer = await cluster.request(follower, method, path, body);
      expect(answer.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
      const error = answer.body.error as { field?: string };
      expect(error.field, `${method} ${path} ${JSON.stringify(body)}`).toBe(field);
    }
    const unknownToken = await cluster.request(follower, "DELETE", "/v1/acl/tokens/no-such-token");
    expect(unknownToken.status).toBe(404);
    const builtIn = await cluster.request(follower, "DELETE", "/v1/acl/policies/global-management");
    expect(builtIn.status).toBe(409);
    const after = await cluster.request(leader, "GET", "/v1/acl/policies?consistency=linearizable");
    expect(after.body).toEqual(before.body);
  });

  it("a token may renew and end only its own sessions; the management token any", async () => {
    await policy("sessions", [{ resource: "session", access: "write" }]);
    const [alice, bob] = [await token(["sessions"]), await token(["sessions"])];
    await knownEverywhere(alice.secret);
    await knownEverywhere(bob.secret);
    const created = await cluster.request(follower, "POST", "/v1/sessions", {}, alice.secret);
    expect(created.status).toBe(200);
    const id = created.body.id as string;
    for (const node of ids) {
      const renew = denial(
        await cluster.request(node, "PUT", `/v1/sessions/${id}/renew`, undefined, bob.secret),
      );
      expect(renew.message).toContain("belongs to another token");
      denial(await cluster.request(node, "DELETE", `/v1/sessions/${id}`, undefined, bob.secret));
    }
    expect(
      (await cluster.request(follower, "PUT", `/v1/sessions/${id}/renew`, undefined, alice.secret))
        .status,
    ).toBe(200);
    expect((await cluster.request(leader, "DELETE", `/v1/sessions/${id}`)).status).toBe(200);
  });

  it("a blocking service list answers with what the token may read when it answers", async () => {
    await policy("lister", [{ resource: "service", access: "read" }]);
    const lister = await token(["lister"]);
    await knownEverywhere(lister.secret);
    const now = await cluster.request(leader, "GET", "/v1/services", undefined, lister.secret);
    const index = Number(now.body.index);
    const blocking = cluster.request(
      follower,
      "GET",
      `/v1/services?index=${index}&wait=5s`,
      undefined,
      lister.secret,
    );
    await sleep(200);
    await policy("lister", [
      { resource: "service", access: "read" },
      { resource: "service", prefix: "db", access: "deny" },
    ]);
    await cluster.request(leader, "PUT", "/v1/services/late/instances/l1", instance);
    const answer = await blocking;
    expect(answer.status).toBe(200);
    const names = (answer.body.services as { name: string }[]).map((service) => service.name);
    expect(names).toContain("late");
    expect(names).not.toContain("db");
  });

  it("the service list shows only what the token may read", async () => {
    await policy("web-reader", [{ resource: "service", prefix: "web", access: "read" }]);
    const webReader = await token(["web-reader"]);
    await knownEverywhere(webReader.secret);
    await cluster.request(leader, "PUT", "/v1/services/db/instances/d2", instance);
    const all = await cluster.request(leader, "GET", "/v1/services?consistency=linearizable");
    const seen = await cluster.request(
      leader,
      "GET",
      "/v1/services?consistency=linearizable",
      undefined,
      webReader.secret,
    );
    const names = (body: Record<string, unknown>) =>
      (body.services as { name: string }[]).map((service) => service.name);
    expect(names(all.body)).toContain("db");
    expect(names(seen.body).length).toBeGreaterThan(0);
    expect(names(seen.body).every((name) => name.startsWith("web"))).toBe(true);
  });

  it("a revoked token stops working on every node within one second", async () => {
    const revoked = await token(["web-writer"]);
    await knownEverywhere(revoked.secret);
    const deleted = await cluster.request(follower, "DELETE", `/v1/acl/tokens/${revoked.accessor}`);
    expect(deleted.status).toBe(200);
    const answeredAt = performance.now();
    const refusedAfter = await Promise.all(
      ids.map(async (id) => {
        for (let attempt = 0; attempt < 200; attempt++) {
          const answer = await cluster.request(
            id,
            "PUT",
            "/v1/services/web/instances/r1",
            instance,
            revoked.secret,
          );
          if (answer.status === 403) return performance.now() - answeredAt;
          await sleep(10);
        }
        return Number.POSITIVE_INFINITY;
      }),
    );
    for (const ms of refusedAfter) expect(ms).toBeLessThan(1000);
  });

  it("a revoked token ends the watch stream and the blocking query it holds open", async () => {
    await policy("web-reader", [{ resource: "service", prefix: "web", access: "read" }]);
    const watcher = await token(["web-reader"]);
    await knownEverywhere(watcher.secret);
    const node = cluster.get(follower).http;
    const headers = { authorization: `Bearer ${watcher.secret}` };
    const stream = await fetch(`http://${node}/v1/watch/services/web`, {
      headers,
      signal: AbortSignal.timeout(15_000),
    });
    expect(stream.status).toBe(200);
    const index = Number(stream.headers.get("x-muster-index") ?? 0);
    const blocking = fetch(`http://${node}/v1/services/web?index=${index + 1000}&wait=10s`, {
      headers,
      signal: AbortSignal.timeout(15_000),
    });
    const reader = (stream.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    // The first event is the current state.
    while (!text.includes("event: instances")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    await sleep(200);
    const deleted = await cluster.request(leader, "DELETE", `/v1/acl/tokens/${watcher.accessor}`);
    expect(deleted.status).toBe(200);
    const revokedAt = performance.now();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    const endedAfter = performance.now() - revokedAt;
    expect(text).toContain("event: error");
    expect(text).toContain("MUSTER_ERR_PERMISSION_DENIED");
    expect(endedAfter).toBeLessThan(1000);
    const answer = await blocking;
    expect(answer.status).toBe(403);
    expect(performance.now() - revokedAt).toBeLessThan(1000);
  });

  it("gRPC: the token travels in metadata; a denial is PERMISSION_DENIED naming the permission", async () => {
    const client = registryClient(follower) as grpc.Client & {
      register(
        request: unknown,
        metadata: grpc.Metadata,
        callback: (error: grpc.ServiceError | null) => void,
      ): void;
    };
    const register = (service: string, secret: string | null) => {
      const metadata = new grpc.Metadata();
      if (secret !== null) metadata.set("authorization", `Bearer ${secret}`);
      return new Promise<grpc.ServiceError | null>((resolve) =>
        client.register({ service, id: "g1", address: "10.0.0.2", port: 81 }, metadata, (error) =>
          resolve(error),
        ),
      );
    };
    try {
      const web = await token(["web-writer"]);
      await knownEverywhere(web.secret);
      expect(await register("web", web.secret)).toBeNull();
      const denied = await register("db", web.secret);
      expect(denied?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(denied?.metadata.get("permission")).toEqual(["service:db write"]);
      expect((await register("web", null))?.code).toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      client.close();
    }
  });

  it("gRPC KeepAlive on the leader: only a token that may write the service renews it, until it is revoked", async () => {
    await policy("beat-writer", [{ resource: "service", prefix: "beat", access: "write" }]);
    await policy("beat-reader", [{ resource: "service", prefix: "beat", access: "read" }]);
    const [writer, reader] = [await token(["beat-writer"]), await token(["beat-reader"])];
    await knownEverywhere(writer.secret);
    await knownEverywhere(reader.secret);
    const registered = await cluster.request(leader, "PUT", "/v1/services/beat/instances/b1", {
      ...instance,
      ttl: "30s",
    });
    expect(registered.status, JSON.stringify(registered.body)).toBe(200);
    const client = registryClient(leader) as grpc.Client & {
      keepAlive(metadata: grpc.Metadata): grpc.ClientDuplexStream<unknown, Record<string, unknown>>;
    };
    /** One heartbeat on a stream of its own, with `secret` as its token. */
    const beat = (secret: string | null) => {
      const metadata = new grpc.Metadata();
      if (secret !== null) metadata.set("x-muster-token", secret);
      const stream = client.keepAlive(metadata);
      return new Promise<Record<string, unknown>>((resolve, reject) => {
        stream.on("data", (answer: Record<string, unknown>) => {
          resolve(answer);
          stream.end();
        });
        stream.on("error", reject);
        stream.write({ heartbeat: { service: "beat", id: "b1" } });
      });
    };
    try {
      expect(await beat(writer.secret)).toMatchObject({ ok: true, status: "passing" });
      for (const secret of [reader.secret, null])
        expect(await beat(secret)).toMatchObject({
          ok: false,
          code: "PERMISSION_DENIED",
          message: expect.stringContaining("service:beat write"),
        });
      const revoked = await cluster.request(
        follower,
        "DELETE",
        `/v1/acl/tokens/${writer.accessor}`,
      );
      expect(revoked.status).toBe(200);
      await eventually(
        "the revocation on the leader",
        async () => ((await beat(writer.secret)).ok === false ? true : undefined),
        5000,
      );
      expect(await beat(writer.secret)).toMatchObject({ ok: false, code: "PERMISSION_DENIED" });
    } finally {
      client.close();
    }
  });

  it("the SDK sends its token; a denial throws MusterApiError 403 without retrying", async () => {
    const web = await token(["web-writer"]);
    await knownEverywhere(web.secret);
    const client = new MusterClient({
      endpoints: ids.map((id) => cluster.get(id).http),
      token: web.secret,
      timeoutMs: 3000,
      deadlineMs: 15_000,
    });
    try {
      const registration = await client.register({
        service: "web",
        id: "sdk-1",
        address: "10.0.0.3",
        port: 82,
        ttl: "10s",
        drainDelay: "100ms",
        handleSignals: false,
      });
      await registration.close();
      const denied = await client
        .register({
          service: "db",
          id: "sdk-2",
          address: "10.0.0.3",
          port: 82,
          ttl: "10s",
          handleSignals: false,
        })
        .catch((error: unknown) => error);
      expect(denied).toBeInstanceOf(MusterApiError);
      expect(denied).toMatchObject({ status: 403, code: "MUSTER_ERR_PERMISSION_DENIED" });
    } finally {
      await client.close();
    }
  });

  it("DNS answers follow the anonymous token's policies", async () => {
    const resolver = new Resolver({ timeout: 2000, tries: 2 });
    resolver.setServers([cluster.get(follower).dns]);
    await expect(resolver.resolve4("web.service.muster")).rejects.toMatchObject({
      code: "EREFUSED",
    });
    await policy("dns", [{ resource: "service", prefix: "web", access: "read" }]);
    const updated = await cluster.request(follower, "PUT", "/v1/acl/tokens/anonymous", {
      policies: ["dns"],
    });
    expect(updated.status, JSON.stringify(updated.body)).toBe(200);
    const addresses = await eventually(
      "DNS to answer for web",
      async () =>
        (await resolver.resolve4("web.service.muster").catch(() => undefined)) ?? undefined,
      10_000,
    );
    expect(addresses).toContain("10.0.0.1");
    await expect(resolver.resolve4("db.service.muster")).rejects.toMatchObject({
      code: "EREFUSED",
    });
  });

  it("denials are counted in /metrics", async () => {
    const metrics = await fetch(`http://${cluster.get(follower).http}/metrics`).then((r) =>
      r.text(),
    );
    const counted = /muster_acl_denials_total\{resource="service"\} (\d+)/.exec(metrics);
    expect(Number(counted?.[1])).toBeGreaterThan(0);
  });

  it("muster acl: policies and tokens from the command line", () => {
    const muster = (...args: string[]) => {
      const run = spawnSync(process.execPath, ["--import", "tsx", cli, ...args], {
        encoding: "utf8",
        timeout: 30_000,
        env: { ...process.env, MUSTER_TOKEN: management, MUSTER_HTTP: cluster.get(follower).http },
      });
      return { status: run.status, stdout: run.stdout, stderr: run.stderr };
    };
    const set = muster(
      "acl",
      "policy",
      "set",
      "jobs",
      "--rule",
      "lock:jobs/=write",
      "--rule",
      "session=write",
    );
    expect(set.status, set.stderr).toBe(0);
    expect(set.stdout).toContain("lock:jobs/=write session=write");
    const created = muster("acl", "token", "create", "--policy", "jobs", "--description", "cron");
    expect(created.status, created.stderr).toBe(0);
    const secret = /secret: (\S+)/.exec(created.stdout)?.[1];
    expect(secret).toBeDefined();
    const listed = muster("acl", "token", "list");
    expect(listed.stdout).toContain("cron");
    expect(listed.stdout).not.toContain(secret as string);
    const bad = muster("acl", "policy", "set", "x", "--rule", "nodes=write");
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain("not a rule");
    const wrongToken = muster("members", "--token", "no-such-secret-000000");
    expect(wrongToken.status).toBe(1);
    expect(wrongToken.stderr).toContain("no token has this secret");
    const jobsOnly = muster("members", "--token", secret as string);
    expect(jobsOnly.status).toBe(1);
    expect(jobsOnly.stderr).toContain("lacks cluster read");
  });
});

describe("ACL bootstrap and joining", () => {
  let single: AgentCluster;
  beforeAll(async () => {
    single = await AgentCluster.create();
  });
  afterAll(async () => {
    await single.destroy();
  });

  it("without --acl-bootstrap-token the first leader keeps a management secret in its data directory; joining takes a token; a node without --acl-enabled enforces them", async () => {
    await single.define("s1");
    single.start("s1", [single.peersArg(["s1"]), "--acl-enabled"]);
    await single.leader();
    const secretFile = join(single.get("s1").dataDir, "acl-bootstrap-token");
    const secret = await eventually(
      "the bootstrap event in the log",
      async () => {
        const log = await readFile(join(single.root, "s1.log"), "utf8").catch(() => "");
        if (!log.includes('"event":"acl-bootstrap"')) return undefined;
        return readFile(secretFile, "utf8");
      },
      30_000,
    );
    expect((await stat(secretFile)).mode & 0o777).toBe(0o600);
    expect(await readFile(join(single.root, "s1.log"), "utf8")).not.toContain(secret);
    const self = await single.request("s1", "GET", "/v1/acl/tokens/self", undefined, secret);
    expect(self.status).toBe(200);
    expect(self.body.policies).toEqual(["global-management"]);
    expect((await single.request("s1", "GET", "/v1/cluster/members", undefined, null)).status).toBe(
      403,
    );

    // A node without a token cannot join; one with a token that may write `cluster` can.
    await single.define("s2");
    single.start("s2", [`--join=${single.get("s1").http}`]);
    const code = await eventually(
      "the tokenless node to give up",
      async () => {
        const child = single.get("s2").process;
        return child?.exitCode ?? undefined;
      },
      30_000,
    );
    expect(code).not.toBe(0);
    const log = await readFile(join(single.root, "s2.log"), "utf8");
    expect(log).toContain("cluster write");
    // s3 runs without --acl-enabled: the cluster's ACLs hold on it all the same.
    await single.define("s3");
    single.start("s3", [`--join=${single.get("s1").http}`, `--acl-token=${secret}`]);
    await eventually(
      "s3 to join as a member",
      async () => {
        const members = await single.request("s1", "GET", "/v1/cluster/members", undefined, secret);
        const list = (members.body.members ?? []) as { id: string }[];
        return list.some((member) => member.id === "s3") ? true : undefined;
      },
      30_000,
    );
    const state = await eventually(
      "s3 to apply the ACLs",
      async () => {
        const answer = await single.request(
          "s3",
          "GET",
          "/v1/cluster/state-hash",
          undefined,
          secret,
        );
        return answer.status === 200 ? answer : undefined;
      },
      30_000,
    );
    expect(state.status).toBe(200);
    const write = await single.request(
      "s3",
      "PUT",
      "/v1/services/web/instances/x",
      { address: "10.0.0.1", port: 80 },
      null,
    );
    expect(write.status).toBe(403);
  });
});
