import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentCluster, eventually, serverSentEvents, sleep } from "./agents.js";

const ids = ["n1", "n2", "n3"];
const ttlMs = 2000;
const checkpointMs = 1000;
const deregisterAfterMs = 3000;
/** Fast timings: election timeout 200 ms, randomized up to 400 ms. */
const maxElectionMs = 400;

let cluster: AgentCluster;
beforeEach(async () => {
  cluster = await AgentCluster.create({
    args: [
      `--ttl-checkpoint-interval=${checkpointMs}ms`,
      `--deregister-after=${deregisterAfterMs}ms`,
    ],
  });
  await cluster.bootstrap(ids);
  await cluster.leader();
});
afterEach(async () => {
  await cluster.destroy();
});

interface InstanceView {
  id: string;
  status: string;
  tags: string[];
}

function body(port: number, tags: string[] = []) {
  return { address: "10.0.0.1", port, tags, ttl: `${ttlMs}ms` };
}

async function register(via: string, service: string, id: string, tags: string[] = []) {
  const answer = await cluster.request(
    via,
    "PUT",
    `/v1/services/${service}/instances/${id}`,
    body(8080, tags),
  );
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  return answer.body;
}

/** The instances of `service` as `via` sees them right now; [] when it has none. */
async function lookup(via: string, service: string, query = "consistency=stale") {
  const answer = await cluster.request(via, "GET", `/v1/services/${service}?${query}`);
  if (answer.status === 404) return [];
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  return answer.body.instances as InstanceView[];
}

/** Each node's muster_self_preservation_engaged, in the order of `ids`. */
async function engagedGauges(): Promise<number[]> {
  return Promise.all(
    ids.map(async (id) => {
      const text = await (await fetch(`http://${cluster.get(id).http}/metrics`)).text();
      return Number(/^muster_self_preservation_engaged (\d+)$/m.exec(text)?.[1] ?? Number.NaN);
    }),
  );
}

async function statusOf(via: string, service: string, id: string): Promise<string> {
  const found = (await lookup(via, service)).find((instance) => instance.id === id);
  return found?.status ?? "gone";
}

function running(): string[] {
  return cluster.running().map((agent) => agent.id);
}

/** Heartbeats `refs` every `everyMs` through whichever node answers, until stopped. */
function heartbeater(refs: readonly { service: string; id: string }[], everyMs: number) {
  let stopped = false;
  let failures = 0;
  const loop = (async () => {
    let turn = 0;
    while (!stopped) {
      for (const ref of refs) {
        const via = running()[turn++ % running().length] ?? "n1";
        const path = `/v1/services/${ref.service}/instances/${ref.id}/heartbeat`;
        const answer = await cluster.request(via, "PUT", path, {}).catch(() => null);
        if (answer?.status !== 200) failures++;
      }
      await sleep(everyMs);
    }
  })();
  return {
    get failures() {
      return failures;
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}

describe("registry over HTTP on a three-node cluster", () => {
  it("registers, heartbeats, looks up (all, healthy, by tag) and deregisters through any node", async () => {
    const registered = await register("n1", "web", "w1", ["v1", "blue"]);
    expect(registered).toMatchObject({ id: "w1", service: "web", status: "passing", ttl: "2s" });
    const bare = await cluster.request("n3", "PUT", "/v1/services/web/instances/w1/heartbeat");
    expect(bare.status, JSON.stringify(bare.body)).toBe(200);
    await register("n2", "web", "w2", ["v1"]);
    await register("n3", "web", "w3", ["v2"]);
    const down = await cluster.request("n2", "PUT", "/v1/services/web/instances/w3/heartbeat", {
      status: "critical",
      output: "disk full",
    });
    expect(down.status, JSON.stringify(down.body)).toBe(200);
    for (const via of ids) {
      const all = await lookup(via, "web", "consistency=linearizable");
      expect(all.map((i) => i.id)).toEqual(["w1", "w2", "w3"]);
      const healthy = await lookup(via, "web", "healthy=true&consistency=linearizable");
      expect(healthy.map((i) => i.id)).toEqual(["w1", "w2"]);
      const tagged = await lookup(via, "web", "tag=v1&tag=blue&consistency=linearizable");
      expect(tagged.map((i) => i.id)).toEqual(["w1"]);
    }
    const list = await cluster.request("n3", "GET", "/v1/services?consistency=linearizable");
    expect(list.body.services).toEqual([
      { name: "web", instances: 3, passing: 2, tags: ["blue", "v1", "v2"] },
    ]);
    const gone = await cluster.request("n3", "DELETE", "/v1/services/web/instances/w2");
    expect(gone.status).toBe(200);
    expect((await lookup("n1", "web", "consistency=linearizable")).map((i) => i.id)).toEqual([
      "w1",
      "w3",
    ]);
    const again = await cluster.request("n1", "PUT", "/v1/services/web/instances/w2/heartbeat", {});
    expect(again.status).toBe(404);
  });

  it("marks a silent instance critical within TTL + 1 s and removes it after deregisterAfter", async () => {
    const registeredAt = Date.now();
    await register("n2", "web", "silent");
    const critical = await eventually(
      "the instance to turn critical",
      async () => ((await statusOf("n1", "web", "silent")) === "critical" ? Date.now() : undefined),
      ttlMs + 3000,
    );
    expect(critical - registeredAt).toBeGreaterThanOrEqual(ttlMs);
    expect(critical - registeredAt).toBeLessThanOrEqual(ttlMs + 1000);
    const removed = await eventually(
      "the instance to be removed",
      async () => ((await statusOf("n3", "web", "silent")) === "gone" ? Date.now() : undefined),
      deregisterAfterMs + 3000,
    );
    expect(removed - critical).toBeGreaterThanOrEqual(deregisterAfterMs - 200);
    const metricsOf = async (id: string) =>
      (await fetch(`http://${cluster.get(id).http}/metrics`)).text();
    const leaderMetrics = await metricsOf(await cluster.leader());
    expect(leaderMetrics).toMatch(/^muster_evictions_total 1$/m);
    expect(leaderMetrics).toMatch(/^muster_instances\{status="critical"\} 0$/m);
    expect(leaderMetrics).toMatch(/^muster_raft_leader_changes_total [1-9]/m);
    // n1 answered the lookups above.
    expect(await metricsOf("n1")).toMatch(
      /^muster_http_request_duration_seconds_count\{.*route="\/v1\/services\/:service".*status="200".*\} [1-9]/m,
    );
  });

  it("never marks an instance that keeps heartbeating critical across a kill -9 of the leader", async () => {
    await register("n1", "web", "live");
    const beat = heartbeater([{ service: "web", id: "live" }], ttlMs / 4);
    const seen = new Set<string>();
    const applied = new Set<string>();
    const watch = (async () => {
      const until = Date.now() + 3 * ttlMs + 2000;
      while (Date.now() < until) {
        for (const via of running()) {
          const status = await statusOf(via, "web", "live").catch(() => "?");
          // A stale read may come before the node applied the registration: not yet "gone".
          if (status === "?" || (status === "gone" && !applied.has(via))) continue;
          applied.add(via);
          seen.add(status);
        }
        await sleep(50);
      }
    })();
    await sleep(ttlMs);
    const leader = await cluster.leader();
    await cluster.kill(leader, "SIGKILL");
    await cluster.leader();
    await watch;
    await beat.stop();
    expect([...seen]).toEqual(["passing"]);
  });

  it("evicts a silent instance within the bound while leaders are killed one after another", async () => {
    await register("n1", "web", "silent");
    const lastHeartbeat = Date.now();
    // Watched from the start: on a busy machine a restart can take longer than TTL and
    // deregisterAfter together, and the instance may be critical and gone before the kills end.
    let critical: number | null = null;
    const watch = (async () => {
      while (critical === null && Date.now() - lastHeartbeat < 60_000) {
        // Any node that answers: a killed or restarting one does not.
        const statuses = await Promise.all(
          running().map((via) => statusOf(via, "web", "silent").catch(() => "unknown")),
        );
        if (statuses.includes("critical")) critical = Date.now();
        await sleep(50);
      }
    })();
    let electionMs = 0;
    for (const pause of [300, 800]) {
      await sleep(pause);
      const leader = await cluster.leader();
      await cluster.kill(leader, "SIGKILL");
      const killed = Date.now();
      await cluster.leader();
      electionMs = Date.now() - killed;
      cluster.start(leader, [cluster.peersArg(ids)]);
    }
    // TTL + checkpoint interval + election timeout, plus the (last) election itself.
    const bound = ttlMs + checkpointMs + maxElectionMs + electionMs;
    await watch;
    expect(critical, "the silent instance never seen critical").not.toBeNull();
    // Slack for the lessor's 250 ms look, the commit, our 50 ms polling, and a busy machine.
    expect((critical ?? Number.POSITIVE_INFINITY) - lastHeartbeat).toBeLessThanOrEqual(
      bound + 1500,
    );
  });

  it("self-preservation stops evictions, never reporting a critical instance as passing, when most instances go silent at once, and releases", async () => {
    const refs = Array.from({ length: 12 }, (_, i) => ({ service: "web", id: `i${i}` }));
    for (const ref of refs) await register("n1", ref.service, ref.id);
    const steady = heartbeater(refs.slice(0, 3), ttlMs / 4);
    const preservation = async () =>
      (await cluster.request("n2", "GET", "/v1/cluster/self-preservation")).body;
    const engaged = await eventually(
      "self-preservation to engage",
      async () => ((await preservation()).engaged === true ? await preservation() : undefined),
      ttlMs + 2000,
    );
    expect(engaged).toMatchObject({ mode: "auto", total: 12 });
    // Past the TTL and deregisterAfter: the silent ones are critical, and still registered.
    await sleep(ttlMs + deregisterAfterMs + 1500);
    const statuses = await Promise.all(refs.map((r) => statusOf("n3", r.service, r.id)));
    expect(statuses).toEqual([...Array(3).fill("passing"), ...Array(9).fill("critical")]);
    const leader = await cluster.leader();
    const gauge = await (await fetch(`http://${cluster.get(leader).http}/metrics`)).text();
    expect(gauge).toMatch(/^muster_self_preservation_engaged 1$/m);

    const all = heartbeater(refs, ttlMs / 4);
    await eventually(
      "self-preservation to release",
      async () => ((await preservation()).engaged === false ? true : undefined),
      ttlMs + 2000,
    );
    await eventually(
      "every instance passing again",
      async () => {
        const back = await Promise.all(refs.map((r) => statusOf("n3", r.service, r.id)));
        return back.every((status) => status === "passing") ? true : undefined;
      },
      ttlMs + 2000,
    );
    await all.stop();
    await steady.stop();
  });

  it("an operator can force self-preservation off", async () => {
    const set = await cluster.request("n3", "PUT", "/v1/cluster/self-preservation", {
      mode: "off",
    });
    expect(set.status, JSON.stringify(set.body)).toBe(200);
    const refs = Array.from({ length: 12 }, (_, i) => ({ service: "web", id: `i${i}` }));
    for (const ref of refs) await register("n1", ref.service, ref.id);
    await eventually(
      "every silent instance to turn critical",
      async () => {
        const found = await lookup("n2", "web");
        return found.every((i) => i.status === "critical") ? true : undefined;
      },
      ttlMs + 3000,
    );
    expect(
      (await cluster.request("n1", "GET", "/v1/cluster/self-preservation")).body,
    ).toMatchObject({ mode: "off", engaged: false });
    expect(await engagedGauges()).toEqual([0, 0, 0]);
  });

  it("an operator can force self-preservation on: silent instances turn critical but stay, and the leader's gauge says so", async () => {
    const on = await cluster.request("n2", "PUT", "/v1/cluster/self-preservation", { mode: "on" });
    expect(on.status, JSON.stringify(on.body)).toBe(200);
    const leader = await cluster.leader();
    const expected = ids.map((id) => (id === leader ? 1 : 0));
    await eventually(
      "the leader's gauge to read 1",
      async () =>
        JSON.stringify(await engagedGauges()) === JSON.stringify(expected) ? true : undefined,
      5000,
    );
    await register("n1", "web", "silent");
    await sleep(ttlMs + deregisterAfterMs + 1500);
    expect(await statusOf("n3", "web", "silent")).toBe("critical");
    expect(await engagedGauges()).toEqual(expected);
  });

  it("a blocking query answers a change promptly, and is not woken by another service", async () => {
    await register("n1", "web", "w0");
    await register("n1", "db", "d0");
    const latencies: number[] = [];
    for (let change = 1; change <= 5; change++) {
      const before = await cluster.request("n2", "GET", "/v1/services/web?consistency=stale");
      const index = before.body.index as number;
      const blocked = cluster.request("n2", "GET", `/v1/services/web?index=${index}&wait=10s`);
      await sleep(100);
      await register("n3", "web", `w${change}`);
      const acknowledged = performance.now();
      const answer = await blocked;
      latencies.push(performance.now() - acknowledged);
      expect(answer.body.index).toBeGreaterThan(index);
      expect((answer.body.instances as InstanceView[]).map((i) => i.id)).toContain(`w${change}`);
    }
    latencies.sort((a, b) => a - b);
    expect(latencies[2]).toBeLessThan(100);

    const db = await cluster.request("n1", "GET", "/v1/services/db?consistency=stale");
    const dbIndex = db.body.index as number;
    const started = performance.now();
    const quiet = cluster.request("n1", "GET", `/v1/services/db?index=${dbIndex}&wait=1s`);
    await register("n2", "web", "other");
    const answer = await quiet;
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(answer.body.index).toBe(dbIndex);
  });

  it("an SSE watcher sees the current instances, then each change in order", async () => {
    await register("n1", "web", "w0");
    const controller = new AbortController();
    const response = await fetch(`http://${cluster.get("n3").http}/v1/watch/services/web`, {
      signal: controller.signal,
    });
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const events: { id: number; ids: string[]; at: number }[] = [];
    const reading = (async () => {
      for await (const { id, data } of serverSentEvents(response.body)) {
        const view = data as { instances: InstanceView[] };
        events.push({ id, ids: view.instances.map((i) => i.id), at: performance.now() });
      }
    })().catch(() => undefined);
    await eventually("the initial event", async () => (events.length > 0 ? true : undefined));
    const acknowledged: number[] = [];
    await register("n2", "web", "w1");
    acknowledged.push(performance.now());
    await eventually("the registration event", async () => (events.length > 1 ? true : undefined));
    await cluster.request("n1", "DELETE", "/v1/services/web/instances/w0");
    acknowledged.push(performance.now());
    await eventually("the deregistration event", async () =>
      events.length > 2 ? true : undefined,
    );
    controller.abort();
    await reading;
    expect(events.map((e) => e.ids)).toEqual([["w0"], ["w0", "w1"], ["w1"]]);
    expect(events[1]?.id).toBeLessThan(events[2]?.id ?? 0);
    for (const [position, at] of acknowledged.entries()) {
      expect((events[position + 1]?.at ?? Number.POSITIVE_INFINITY) - at).toBeLessThan(100);
    }
  });

  it("a linearizable read on one node sees a write acknowledged by another", async () => {
    for (let round = 0; round < 10; round++) {
      const writer = ids[round % 3] ?? "n1";
      const reader = ids[(round + 1) % 3] ?? "n2";
      await register(writer, "web", `r${round}`);
      const seen = await lookup(reader, "web", "consistency=linearizable");
      expect(seen.map((i) => i.id)).toContain(`r${round}`);
    }
  });

  it("without a quorum a node says how long since it heard a leader, and opens stale watches only", async () => {
    await register("n1", "web", "w1");
    await cluster.converged();
    // The survivor is the leader: deposed, it never hears from a leader again.
    const survivor = await cluster.leader();
    const index = (await cluster.request(survivor, "GET", "/v1/services/web")).body.index as number;
    const opened = await openWatch(survivor, "web", "");
    expect(opened.status).toBe(200);
    expect(opened.headers.get("x-muster-index")).toBe(String(index));
    opened.close();

    for (const id of ids.filter((id) => id !== survivor)) await cluster.kill(id, "SIGKILL");
    const contact = async () => {
      const answer = await fetch(
        `http://${cluster.get(survivor).http}/v1/services/web?consistency=stale`,
      );
      expect(answer.status).toBe(200);
      return {
        leader: answer.headers.get("x-muster-known-leader"),
        ms: Number(answer.headers.get("x-muster-last-contact")),
      };
    };
    const lost = await eventually("the survivor to know of no leader", async () => {
      const seen = await contact();
      return seen.leader === "false" ? seen : undefined;
    });
    // Counting from the last contact, not "never".
    expect(lost.ms).toBeGreaterThanOrEqual(0);
    await sleep(1000);
    expect((await contact()).ms).toBeGreaterThanOrEqual(lost.ms + 900);

    const stale = await openWatch(survivor, "web", "?consistency=stale");
    expect(stale.status).toBe(200);
    expect(stale.headers.get("x-muster-index")).toBe(String(index));
    stale.close();
    const fresh = await openWatch(survivor, "web", "");
    expect(fresh.status).toBe(503);
    fresh.close();
  });
});

/** Opens a watch stream and returns once its headers are in; close() ends it. */
async function openWatch(via: string, service: string, query: string) {
  const abort = new AbortController();
  const response = await fetch(
    `http://${cluster.get(via).http}/v1/watch/services/${service}${query}`,
    { signal: AbortSignal.any([abort.signal, AbortSignal.timeout(15_000)]) },
  );
  return {
    status: response.status,
    headers: response.headers,
    close: () => abort.abort(),
  };
}
