import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  balancerPolicies,
  type Instance,
  type MusterClient,
  SessionLostError,
} from "../../client-sdk/src/index.js";
import { AgentCluster, eventually, sleep } from "./agents.js";
import {
  type InstanceProcess,
  client as makeClient,
  startInstance,
  stopAll,
} from "./sdk-harness.js";

const ids = ["n1", "n2", "n3"];
let cluster: AgentCluster;
let client: MusterClient;
let instances: InstanceProcess[];

beforeEach(async () => {
  cluster = await AgentCluster.create({ args: ["--ttl-checkpoint-interval=1s"] });
  await cluster.bootstrap(ids);
  await cluster.leader();
  client = makeClient(cluster);
  instances = [];
});
afterEach(async () => {
  await stopAll(instances);
  await client.close();
  await cluster.destroy();
});

async function start(service: string, id: string, env: Record<string, string> = {}) {
  const instance = await startInstance(cluster, service, id, env);
  instances.push(instance);
  return instance;
}

function idsOf(list: readonly Instance[]): string[] {
  return list.map((instance) => instance.id).sort();
}

/** One call through `policy`'s balancer; the answering instance's id. */
async function callOnce(
  url: string,
  balancer: ReturnType<MusterClient["balancer"]>,
  key: string,
): Promise<string> {
  const response = await client.fetch(url, { balancer, key, signal: AbortSignal.timeout(10_000) });
  expect(response.status).toBe(200);
  return ((await response.json()) as { id: string }).id;
}

describe("SDK against a real cluster", () => {
  it("registers, discovers and balances with every policy; a killed instance is evicted and no call fails", async () => {
    await Promise.all(["a", "b", "c"].map((id) => start("web", id)));
    const view = client.discover("web");
    await eventually("all three instances in the view", async () =>
      view.instances.length === 3 ? true : undefined,
    );
    const balancers = balancerPolicies.map((policy) => client.balancer("web", { policy }));
    for (const balancer of balancers) {
      await balancer.view.ready();
      const seen = new Set<string>();
      for (let call = 0; call < 30; call++)
        seen.add(await callOnce("http://web/hello", balancer, `key-${call}`));
      // Every policy spreads calls (hashing by 30 keys reaches every instance too).
      expect([...seen].sort(), balancer.balancer.policy).toEqual(["a", "b", "c"]);
    }

    const victim = instances.find((instance) => instance.id === "a") as InstanceProcess;
    victim.child.kill("SIGKILL");
    await victim.exited;
    // Keep calling through every balancer until the registry evicts it: nothing fails.
    let calls = 0;
    const deadline = Date.now() + 20_000;
    while (view.instances.some((instance) => instance.id === "a")) {
      expect(Date.now(), "the killed instance was not evicted in 20 s").toBeLessThan(deadline);
      for (const balancer of balancers) {
        await callOnce("http://web/x", balancer, `k${calls++}`);
      }
    }
    expect(calls).toBeGreaterThan(0);
    for (const balancer of balancers) {
      await eventually(`${balancer.balancer.policy} to drop the evicted instance`, async () =>
        balancer.view.instances.some((i) => i.id === "a") ? undefined : true,
      );
      for (let call = 0; call < 20; call++)
        expect(await callOnce("http://web/y", balancer, `z${call}`)).not.toBe("a");
    }
    view.close();
  });

  it("power of two choices prefers a fast instance over one with injected latency", async () => {
    await start("api", "fast");
    await start("api", "slow", { MUSTER_TEST_DELAY_MS: "150" });
    const balancer = client.balancer("api", { policy: "p2c" });
    await eventually("both instances", async () =>
      balancer.view.instances.length === 2 ? true : undefined,
    );
    const counts = new Map<string, number>();
    for (let call = 0; call < 100; call++) {
      const id = await callOnce("http://api/", balancer, "");
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    expect(counts.get("fast") ?? 0, JSON.stringify([...counts])).toBeGreaterThan(85);
  });

  it("keeps a registration alive and discovery answering through a kill -9 of the registry leader", async () => {
    await start("web", "steady", { MUSTER_TEST_TTL: "3s" });
    const view = client.discover("web", { healthy: false });
    await eventually("the instance in the view", async () =>
      view.instances.length === 1 ? true : undefined,
    );
    const statuses = new Set<string>();
    view.on("change", (list: readonly Instance[]) => {
      for (const instance of list) statuses.add(instance.status);
    });
    const leader = await cluster.leader();
    await cluster.kill(leader, "SIGKILL");
    // Through the election and the new leader's first TTLs, the instance never goes critical.
    const until = Date.now() + 8000;
    while (Date.now() < until) {
      expect(idsOf(view.instances)).toEqual(["steady"]);
      await sleep(100);
    }
    expect([...statuses].filter((status) => status !== "passing")).toEqual([]);
    // The client found the new leader on its own: a new instance shows up in the same view.
    await start("web", "later");
    await eventually("the view to follow the new leader", async () =>
      idsOf(view.instances).join() === "later,steady" ? true : undefined,
    );
    view.close();
  });

  it("drains on SIGTERM: callers move away, no call fails, and it is deregistered before it exits", async () => {
    await start("web", "stays", { MUSTER_TEST_DELAY_MS: "20" });
    const leaving = await start("web", "leaves", {
      MUSTER_TEST_DELAY_MS: "20",
      MUSTER_TEST_DRAIN: "2s",
    });
    const balancer = client.balancer("web", { policy: "round-robin" });
    await eventually("both instances", async () =>
      balancer.view.instances.length === 2 ? true : undefined,
    );
    let stop = false;
    let failures = 0;
    let served = 0;
    const callers = Array.from({ length: 4 }, async () => {
      while (!stop) {
        const response = await client
          .fetch("http://web/", { balancer, retries: 0 })
          .catch(() => null);
        if (response?.status === 200) {
          await response.body?.cancel();
          served += 1;
        } else failures += 1;
      }
    });
    await sleep(300);
    leaving.child.kill("SIGTERM");
    const exit = await leaving.exited;
    stop = true;
    await Promise.all(callers);
    expect(failures).toBe(0);
    expect(served).toBeGreaterThan(20);
    expect(exit.signal).toBe("SIGTERM");
    expect(leaving.lines).toContain("deregistered");
    // Callers had stopped choosing it before it went away.
    expect(balancer.view.instances.map((i) => i.id)).toEqual(["stays"]);
    const left = await client.call("GET", "/v1/services/web");
    expect(idsOf(left.body.instances as Instance[])).toEqual(["stays"]);
  });

  it("keeps serving the last view with every registry node stopped, and says how stale it is", async () => {
    await start("web", "a");
    await start("web", "b");
    const view = client.discover("web");
    await eventually("both instances", async () =>
      view.instances.length === 2 ? true : undefined,
    );
    expect(view.staleness.stale).toBe(false);
    for (const id of ids) await cluster.kill(id, "SIGKILL");
    await eventually(
      "the view to notice",
      async () => (view.staleness.stale ? true : undefined),
      30_000,
    );
    await sleep(500);
    expect(idsOf(view.instances)).toEqual(["a", "b"]);
    expect(view.staleness.ageMs).toBeGreaterThan(0);
    view.close();
  });
});

describe("SDK locks and elections", () => {
  it("withLock hands the signal an abort when the session is lost", async () => {
    const outcome = await client.withLock(
      "nightly",
      async ({ token, signal }) => {
        expect(token).toBeGreaterThan(0);
        const session = (await client.call("GET", "/v1/locks/nightly")).body.holder as {
          session: string;
        };
        await client.call("DELETE", `/v1/sessions/${session.session}`);
        const started = Date.now();
        await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
        return { reason: signal.reason, afterMs: Date.now() - started };
      },
      { sessionOptions: { ttl: "3s" } },
    );
    expect(outcome.reason).toBeInstanceOf(SessionLostError);
    // Renewals run every TTL/3: the next one finds the session gone.
    expect(outcome.afterMs).toBeLessThan(3000);
  });

  it("an election has one leader at a time; observers see every change", async () => {
    const observer = client.observe("primary");
    const seen: (string | null)[] = [];
    observer.on("leader", (leader: { value: string } | null) => seen.push(leader?.value ?? null));
    const first = client.elect("primary", "one", { sessionOptions: { ttl: "2s" } });
    await new Promise((resolve) => first.once("elected", resolve));
    const second = client.elect("primary", "two", { sessionOptions: { ttl: "2s" } });
    const secondElected = new Promise((resolve) => second.once("elected", resolve));
    await sleep(500);
    expect(first.isLeader).toBe(true);
    expect(second.isLeader).toBe(false);
    const firstToken = first.token as number;
    await first.resign();
    await secondElected;
    expect(second.token as number).toBeGreaterThan(firstToken);
    await second.resign();
    await eventually("the observer to see the last change", async () =>
      seen.at(-1) === null && seen.includes("two") ? true : undefined,
    );
    // The waiting candidate takes over in the same entry that ends the first one's term.
    expect(seen).toEqual([null, "one", "two", null]);
    observer.close();
  });
});
