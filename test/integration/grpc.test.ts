import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster, eventually } from "./agents.js";

const ids = ["n1", "n2", "n3"];
const protoFile = fileURLToPath(new URL("../../proto/muster/v1/muster.proto", import.meta.url));
const healthProto = fileURLToPath(
  new URL("../../node_modules/grpc-health-check/proto/health/v1/health.proto", import.meta.url),
);
const reflectionProto = fileURLToPath(
  new URL(
    "../../node_modules/@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto",
    import.meta.url,
  ),
);

type Fields = Record<string, unknown>;
type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;
const packages = grpc.loadPackageDefinition(
  protoLoader.loadSync([protoFile, healthProto, reflectionProto], {
    longs: Number,
    enums: String,
    oneofs: true,
  }),
) as unknown as {
  muster: {
    v1: Record<string, new (address: string, credentials: grpc.ChannelCredentials) => Client>;
  };
  grpc: {
    health: {
      v1: { Health: new (address: string, credentials: grpc.ChannelCredentials) => Client };
    };
    reflection: {
      v1: {
        ServerReflection: new (address: string, credentials: grpc.ChannelCredentials) => Client;
      };
    };
  };
};

let cluster: AgentCluster;
const clients: grpc.Client[] = [];

function client(service: string, node: string, on: AgentCluster = cluster): Client {
  const Service = packages.muster.v1[service];
  if (Service === undefined) throw new Error(`no service ${service}`);
  const created = new Service(on.get(node).grpc, grpc.credentials.createInsecure());
  clients.push(created);
  return created;
}

/** The status of instance `id` in a Watch event, if it is there. */
function statusOf(event: Fields, id: string): string | undefined {
  const found = ((event.instances ?? []) as Fields[]).find((instance) => instance.id === id);
  return found === undefined ? undefined : String(found.status);
}

/** A unary call as a promise; rejects with the gRPC error. */
function call(
  target: Client,
  method: string,
  request: Fields,
  timeoutMs = 10_000,
): Promise<Fields> {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    (
      target[method] as (
        r: Fields,
        o: grpc.CallOptions,
        cb: (e: grpc.ServiceError | null, v: Fields) => void,
      ) => void
    ).call(target, request, { deadline }, (error, value) =>
      error === null ? resolve(value) : reject(error),
    );
  });
}

async function failure(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error("the call succeeded");
}

beforeAll(async () => {
  cluster = await AgentCluster.create({ args: ["--deregister-after=2s"] });
  await cluster.bootstrap(ids);
  await cluster.leader();
}, 60_000);

afterAll(async () => {
  for (const created of clients) created.close();
  await cluster.destroy();
});

describe("the gRPC API on a three-node cluster", () => {
  it("registers, reads, lists and deregisters through any node, with HTTP's validation", async () => {
    const registry = client("Registry", "n2");
    const registered = await call(registry, "register", {
      service: "web",
      id: "w1",
      address: "10.0.0.1",
      port: 8080,
      tags: ["v1"],
      meta: { zone: "a" },
      ttl: "30s",
    });
    expect(registered.instance).toMatchObject({
      id: "w1",
      port: 8080,
      status: "passing",
      ttl: "30s",
    });
    const got = await call(client("Registry", "n3"), "get", {
      service: "web",
      healthy: true,
      tags: ["v1"],
      consistency: "linearizable",
    });
    expect((got.instances as Fields[]).map((i) => i.id)).toEqual(["w1"]);
    expect(got.index).toBeGreaterThan(0);
    const list = await call(client("Registry", "n1"), "list", { consistency: "linearizable" });
    expect(list.services).toEqual([{ name: "web", instances: 1, passing: 1, tags: ["v1"] }]);

    const bad = await failure(
      call(registry, "register", { service: "web", id: "w2", address: "10.0.0.2", port: 70000 }),
    );
    expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(bad.metadata.get("field")).toEqual(["port"]);
    const badName = await failure(
      call(registry, "register", { service: "Web_1", id: "w2", address: "x", port: 1 }),
    );
    expect([badName.code, badName.metadata.get("field")[0]]).toEqual([
      grpc.status.INVALID_ARGUMENT,
      "service",
    ]);
    const missing = await failure(call(registry, "get", { service: "nope" }));
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    await call(registry, "deregister", { service: "web", id: "w1" });
    const again = await failure(call(registry, "deregister", { service: "web", id: "w1" }));
    expect(again.code).toBe(grpc.status.NOT_FOUND);
  });

  it("sessions, locks with fencing tokens, and elections", async () => {
    const sessions = client("Sessions", "n1");
    const locks = client("Locks", "n3");
    const a = await call(sessions, "create", { ttl: "10s", name: "a" });
    const b = await call(sessions, "create", {});
    expect(a).toMatchObject({ name: "a", ttl: "10s", behavior: "release" });
    expect(await call(sessions, "renew", { id: a.id })).toMatchObject({ id: a.id });
    expect(await call(client("Sessions", "n2"), "get", { id: b.id })).toMatchObject({ ttl: "15s" });
    const first = await call(locks, "acquire", { name: "job", session: a.id, value: "x" });
    expect(first).toMatchObject({ acquired: true });
    const second = await call(locks, "acquire", { name: "job", session: b.id });
    expect(second).toMatchObject({
      acquired: false,
      holder: { session: a.id, token: first.token },
    });
    expect(await call(locks, "check", { name: "job", token: first.token })).toMatchObject({
      current: true,
    });
    const wrong = await failure(call(locks, "release", { name: "job", session: b.id }));
    expect(wrong.code).toBe(grpc.status.FAILED_PRECONDITION);
    await call(locks, "release", { name: "job", session: a.id });
    const taken = await call(locks, "acquire", { name: "job", session: b.id, wait: "1s" });
    expect(taken.token).toBeGreaterThan(first.token as number);
    expect(await call(locks, "check", { name: "job", token: first.token })).toMatchObject({
      current: false,
    });
    expect(await call(locks, "get", { name: "job" })).toMatchObject({
      holder: { session: b.id },
      waiters: 0,
    });
    // A wait longer than the call's deadline ends with the deadline, and leaves the queue.
    const waited = performance.now();
    const blocked = await call(locks, "acquire", { name: "job", session: a.id, wait: "1m" }, 2000);
    expect(blocked).toMatchObject({ acquired: false });
    expect(performance.now() - waited).toBeLessThan(2000);
    expect(await call(locks, "get", { name: "job", consistency: "linearizable" })).toMatchObject({
      waiters: 0,
    });
    const unknown = await failure(
      call(locks, "acquire", { name: "job", session: "00000000-0000-0000-0000-000000000000" }),
    );
    expect(unknown.code).toBe(grpc.status.NOT_FOUND);

    const elections = client("Elections", "n2");
    const elected = await call(elections, "campaign", {
      name: "primary",
      session: a.id,
      value: "a:1",
    });
    expect(elected).toMatchObject({ elected: true });
    const lost = await call(elections, "campaign", {
      name: "primary",
      session: b.id,
      value: "b:1",
    });
    expect(lost).toMatchObject({ elected: false, leader: { value: "a:1" } });
    const noValue = await failure(call(elections, "campaign", { name: "primary", session: b.id }));
    expect([noValue.code, noValue.metadata.get("field")[0]]).toEqual([
      grpc.status.INVALID_ARGUMENT,
      "value",
    ]);
    await call(elections, "resign", { name: "primary", session: a.id });
    const none = await call(elections, "get", { name: "primary", consistency: "linearizable" });
    expect(none.leader).toBeUndefined();
    await call(sessions, "destroy", { id: a.id });
    expect((await failure(call(sessions, "get", { id: a.id }))).code).toBe(grpc.status.NOT_FOUND);
  });

  it("Watch sends the instances, then every change in order, and resumes from an index", async () => {
    const registry = client("Registry", "n1");
    await call(registry, "register", {
      service: "api",
      id: "a1",
      address: "10.0.1.1",
      port: 1,
      ttl: "30s",
    });
    const events: Fields[] = [];
    const stream = (
      client("Registry", "n3").watch as (r: Fields) => grpc.ClientReadableStream<Fields>
    )({
      service: "api",
    });
    stream.on("data", (event: Fields) => events.push(event));
    stream.on("error", () => undefined);
    await eventually("the first event", async () => (events.length >= 1 ? true : undefined));
    await call(registry, "register", {
      service: "api",
      id: "a2",
      address: "10.0.1.2",
      port: 2,
      ttl: "2s",
    });
    // A status change, reported by a heartbeat over KeepAlive.
    const keepAlive = (
      client("Registry", "n2").keepAlive as () => grpc.ClientDuplexStream<Fields, Fields>
    )();
    keepAlive.on("data", () => undefined);
    keepAlive.write({ heartbeat: { service: "api", id: "a1", status: "warning" } });
    keepAlive.end();
    // a2 stops heartbeating: its TTL runs out and it turns critical.
    await eventually(
      "a2 to turn critical",
      async () => (events.some((e) => statusOf(e, "a2") === "critical") ? true : undefined),
      8000,
    );
    // Critical for deregisterAfter: evicted.
    await eventually(
      "a2 to be evicted",
      async () =>
        events.some((e) => statusOf(e, "a2") === undefined && statusOf(e, "a1") === "warning")
          ? true
          : undefined,
      8000,
    );
    await call(client("Registry", "n2"), "deregister", { service: "api", id: "a1" });
    await eventually("the deregistration", async () =>
      events.some((e) => ((e.instances ?? []) as Fields[]).length === 0) ? true : undefined,
    );
    stream.cancel();
    const steps = events.map((event) =>
      ((event.instances ?? []) as Fields[]).map((i) => `${i.id}:${i.status}`).join(" "),
    );
    expect(steps).toEqual([
      "a1:passing",
      "a1:passing a2:passing",
      "a1:warning a2:passing",
      "a1:warning a2:critical",
      "a1:warning",
      "",
    ]);
    const indexes = events.map((event) => event.index as number);
    expect(indexes).toEqual([...indexes].sort((x, y) => x - y));
    // Resuming from the first event's index replays what came after it.
    const resumed: Fields[] = [];
    const again = (
      client("Registry", "n2").watch as (r: Fields) => grpc.ClientReadableStream<Fields>
    )({
      service: "api",
      index: indexes[0],
    });
    again.on("data", (event: Fields) => resumed.push(event));
    again.on("error", () => undefined);
    await eventually("the resumed event", async () => (resumed.length >= 1 ? true : undefined));
    again.cancel();
    expect(resumed[0]?.instances ?? []).toEqual([]);
  });

  it("KeepAlive heartbeats instances and renews sessions over one stream", async () => {
    const registry = client("Registry", "n2");
    await call(registry, "register", {
      service: "kept",
      id: "k1",
      address: "10.0.2.1",
      port: 1,
      ttl: "2s",
    });
    const session = await call(client("Sessions", "n1"), "create", { ttl: "2s" });
    const stream = (
      client("Registry", "n3").keepAlive as () => grpc.ClientDuplexStream<Fields, Fields>
    )();
    const answers: Fields[] = [];
    stream.on("data", (answer: Fields) => answers.push(answer));
    stream.on("error", () => undefined);
    for (let round = 0; round < 8; round++) {
      stream.write({ heartbeat: { service: "kept", id: "k1" } });
      stream.write({ session: session.id });
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    stream.write({ heartbeat: { service: "kept", id: "gone" } });
    await eventually("every answer", async () => (answers.length >= 17 ? true : undefined));
    stream.end();
    expect(answers.slice(0, 16).every((answer) => answer.ok === true)).toBe(true);
    expect(answers[16]).toMatchObject({ ok: false, code: "NOT_FOUND" });
    // Four seconds on a 2 s TTL: only the stream kept them alive.
    const kept = await call(registry, "get", { service: "kept", consistency: "linearizable" });
    expect((kept.instances as Fields[])[0]).toMatchObject({ id: "k1", status: "passing" });
    expect(await call(client("Sessions", "n2"), "get", { id: session.id })).toMatchObject({
      id: session.id,
    });
  });

  it("KeepAlive on the leader renews in memory; status changes, unknown instances and bad bodies still follow the HTTP rules", async () => {
    const leader = await cluster.leader();
    const registry = client("Registry", leader);
    await call(registry, "register", {
      service: "beat",
      id: "b1",
      address: "10.0.4.1",
      port: 1,
      ttl: "2s",
    });
    const heartbeats = async () => {
      const text = await (await fetch(`http://${cluster.get(leader).http}/metrics`)).text();
      return Number(/^muster_heartbeats_total (\d+)/m.exec(text)?.[1] ?? Number.NaN);
    };
    const before = await heartbeats();
    const stream = (
      client("Registry", leader).keepAlive as () => grpc.ClientDuplexStream<Fields, Fields>
    )();
    const answers: Fields[] = [];
    stream.on("data", (answer: Fields) => answers.push(answer));
    stream.on("error", () => undefined);
    // Six rounds of 500 ms on a 2 s TTL, many heartbeats in flight at once in each.
    for (let round = 0; round < 6; round++) {
      for (let k = 0; k < 50; k++) stream.write({ heartbeat: { service: "beat", id: "b1" } });
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    stream.write({ heartbeat: { service: "beat", id: "b1", status: "warning", output: "slow" } });
    stream.write({ heartbeat: { service: "beat", id: "b1", status: "sleepy" } });
    stream.write({ heartbeat: { service: "beat", id: "nobody" } });
    stream.write({ heartbeat: { service: "beat", id: "b1" } });
    await eventually("every answer", async () => (answers.length >= 304 ? true : undefined));
    stream.end();
    expect(answers.slice(0, 300).every((answer) => answer.ok && answer.status === "passing")).toBe(
      true,
    );
    expect(answers[300]).toMatchObject({ ok: true, status: "warning" });
    expect(answers[301]).toMatchObject({ ok: false, code: "INVALID_ARGUMENT" });
    expect(String(answers[301]?.message)).toContain("status");
    expect(answers[302]).toMatchObject({ ok: false, code: "NOT_FOUND" });
    expect(answers[303]).toMatchObject({ ok: true, status: "warning" });
    expect((await heartbeats()) - before).toBe(302);
    // Three seconds on a 2 s TTL: only the stream kept it alive, with the status it reported.
    const kept = await call(registry, "get", { service: "beat", consistency: "linearizable" });
    expect((kept.instances as Fields[])[0]).toMatchObject({
      id: "b1",
      status: "warning",
      output: "slow",
    });
  });

  it("grpc.health.v1 answers SERVING with a leader, NOT_SERVING without; reflection lists the services", async () => {
    const health = new packages.grpc.health.v1.Health(
      cluster.get("n1").grpc,
      grpc.credentials.createInsecure(),
    );
    clients.push(health);
    // Health is refreshed a few times a second; a probe polls it.
    await eventually("SERVING", async () =>
      (await call(health, "check", { service: "" })).status === "SERVING" ? true : undefined,
    );
    expect(await call(health, "check", { service: "muster.v1.Registry" })).toEqual({
      status: "SERVING",
    });
    const reflection = new packages.grpc.reflection.v1.ServerReflection(
      cluster.get("n1").grpc,
      grpc.credentials.createInsecure(),
    );
    clients.push(reflection);
    const listed = await new Promise<string[]>((resolve, reject) => {
      const stream = (
        reflection.serverReflectionInfo as () => grpc.ClientDuplexStream<Fields, Fields>
      )();
      stream.on("data", (answer: Fields) => {
        const services = (answer.listServicesResponse as { service: { name: string }[] }).service;
        resolve(services.map((service) => service.name));
        stream.end();
      });
      stream.on("error", reject);
      stream.write({ listServices: "" });
    });
    for (const name of ["Registry", "Sessions", "Locks", "Elections", "Cluster"]) {
      expect(listed).toContain(`muster.v1.${name}`);
    }
    const cluster2 = client("Cluster", "n1");
    const members = await call(cluster2, "members", {});
    expect((members.members as Fields[]).map((m) => m.id).sort()).toEqual(ids);
    expect((await call(cluster2, "leader", {})).leader).toBeDefined();
    for (const id of ["n2", "n3"]) await cluster.kill(id, "SIGKILL");
    await eventually(
      "NOT_SERVING without a leader",
      async () =>
        (await call(health, "check", { service: "" })).status === "NOT_SERVING" ? true : undefined,
      10_000,
    );
    const write = await failure(
      call(client("Registry", "n1"), "register", {
        service: "web",
        id: "late",
        address: "10.0.0.9",
        port: 9,
      }),
    );
    expect(write.code).toBe(grpc.status.UNAVAILABLE);
  });

  it("Watch resumes from its last index on another node after the one it used is killed", async () => {
    const fresh = await AgentCluster.create();
    const local = (service: string, node: string) => client(service, node, fresh);
    try {
      await fresh.bootstrap(ids);
      const leader = await fresh.leader();
      const follower = ids.find((id) => id !== leader) ?? "n2";
      const other = ids.find((id) => id !== leader && id !== follower) ?? "n3";
      await call(local("Registry", leader), "register", {
        service: "w",
        id: "a",
        address: "10.0.0.1",
        port: 1,
        ttl: "30s",
      });
      const seen: Fields[] = [];
      const stream = (
        local("Registry", follower).watch as (r: Fields) => grpc.ClientReadableStream<Fields>
      )({ service: "w" });
      const ended = new Promise((resolve) => stream.on("error", resolve));
      stream.on("data", (event: Fields) => seen.push(event));
      await eventually("the first event", async () => (seen.length >= 1 ? true : undefined));
      await fresh.kill(follower, "SIGKILL");
      await ended;
      // Changes while the watcher is away.
      await call(local("Registry", leader), "register", {
        service: "w",
        id: "b",
        address: "10.0.0.2",
        port: 2,
        ttl: "30s",
      });
      const last = seen.at(-1)?.index as number;
      const resumed: Fields[] = [];
      const again = (
        local("Registry", other).watch as (r: Fields) => grpc.ClientReadableStream<Fields>
      )({ service: "w", index: last });
      again.on("data", (event: Fields) => resumed.push(event));
      again.on("error", () => undefined);
      await eventually("the change made while away", async () =>
        resumed.length >= 1 ? true : undefined,
      );
      again.cancel();
      expect(((resumed[0]?.instances ?? []) as Fields[]).map((i) => i.id)).toEqual(["a", "b"]);
      expect(resumed[0]?.index).toBeGreaterThan(last);
    } finally {
      await fresh.destroy();
    }
  });

  it("KeepAlive keeps 100 instances and a session alive across a kill -9 of the leader", async () => {
    const fresh = await AgentCluster.create();
    const local = (service: string, node: string) => client(service, node, fresh);
    try {
      await fresh.bootstrap(ids);
      const leader = await fresh.leader();
      const via = ids.find((id) => id !== leader) ?? "n2";
      const registry = local("Registry", via);
      const refs = Array.from({ length: 100 }, (_, n) => `k${n}`);
      for (const id of refs) {
        await call(registry, "register", {
          service: "kept",
          id,
          address: "10.0.3.1",
          port: 1,
          ttl: "2s",
        });
      }
      const session = await call(local("Sessions", via), "create", { ttl: "2s" });
      const stream = (
        local("Registry", via).keepAlive as () => grpc.ClientDuplexStream<Fields, Fields>
      )();
      stream.on("data", () => undefined);
      stream.on("error", () => undefined);
      let beating = true;
      const beats = (async () => {
        while (beating) {
          for (const id of refs) stream.write({ heartbeat: { service: "kept", id } });
          stream.write({ session: session.id });
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      })();
      const statuses = new Set<string>();
      const sample = async () => {
        const got = await call(local("Registry", via), "get", {
          service: "kept",
          consistency: "stale",
        }).catch(() => null);
        for (const instance of (got?.instances ?? []) as Fields[])
          statuses.add(String(instance.status));
      };
      await new Promise((resolve) => setTimeout(resolve, 1000));
      await fresh.kill(leader, "SIGKILL");
      const until = Date.now() + 6000;
      while (Date.now() < until) {
        await sample();
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      beating = false;
      await beats;
      stream.end();
      expect([...statuses]).toEqual(["passing"]);
      const kept = await call(local("Registry", via), "get", {
        service: "kept",
        consistency: "linearizable",
      });
      expect((kept.instances as Fields[]).length).toBe(100);
      expect(await call(local("Sessions", via), "get", { id: session.id })).toMatchObject({
        id: session.id,
      });
    } finally {
      await fresh.destroy();
    }
  }, 60_000);
});
