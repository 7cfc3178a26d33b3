import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentCluster, eventually } from "./agents.js";

let cluster: AgentCluster;
beforeEach(async () => {
  cluster = await AgentCluster.create();
});
afterEach(async () => {
  await cluster.destroy();
});

const ids = ["n1", "n2", "n3"];

function instance(port: number) {
  return { address: "10.0.0.1", port };
}

/** Register through `via` until it succeeds (bounded), as a client retrying a 503 would. */
async function register(via: () => string, id: string, port: number): Promise<void> {
  await eventually(`registration of ${id}`, async () => {
    const answer = await cluster.request(
      via(),
      "PUT",
      `/v1/services/web/instances/${id}`,
      instance(port),
    );
    return answer.status === 200 ? true : undefined;
  });
}

/** The HTTP status of a request, or the network error that stopped it. */
async function statusOf(request: Promise<{ status: number }>): Promise<number | string> {
  try {
    return (await request).status;
  } catch (error) {
    return `network error: ${String(error)}`;
  }
}

async function instanceIds(via: string): Promise<string[]> {
  const answer = await cluster.request(via, "GET", "/v1/services/web?consistency=stale");
  const instances = answer.body.instances as { id: string; createIndex: number }[];
  return [...instances].sort((a, b) => a.createIndex - b.createIndex).map((i) => i.id);
}

describe("a cluster of three muster agents", () => {
  it("elects one leader and commits writes made through any node on every node", async () => {
    await cluster.bootstrap(ids);
    await cluster.leader();
    for (const [position, via] of ids.entries()) {
      const answer = await cluster.request(
        via,
        "PUT",
        `/v1/services/web/instances/w${position}`,
        instance(8000 + position),
      );
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    }
    await cluster.converged();
    for (const via of ids) expect(await instanceIds(via)).toEqual(["w0", "w1", "w2"]);
  });

  it("survives kill -9 of the leader and, after every node restarts, still holds every acknowledged write in order", async () => {
    await cluster.bootstrap(ids);
    const first = await cluster.leader();
    const acknowledged: string[] = [];
    const follower = ids.find((id) => id !== first) ?? "n1";
    for (let i = 0; i < 10; i++) {
      await register(() => follower, `a${i}`, 9000 + i);
      acknowledged.push(`a${i}`);
    }
    await cluster.kill(first, "SIGKILL");
    const second = await cluster.leader();
    expect(second).not.toBe(first);
    const survivor = () => cluster.running()[0]?.id ?? "n1";
    for (let i = 0; i < 10; i++) {
      await register(survivor, `b${i}`, 9100 + i);
      acknowledged.push(`b${i}`);
    }
    for (const id of ids) await cluster.kill(id, "SIGKILL");
    for (const id of ids) cluster.start(id, [cluster.peersArg(ids)]);
    await cluster.leader();
    await cluster.converged();
    for (const via of ids) expect(await instanceIds(via)).toEqual(acknowledged);
  });

  it("hands leadership over on SIGTERM before the leader exits, and fails no write", async () => {
    await cluster.bootstrap(ids);
    const leader = await cluster.leader();
    const others = ids.filter((id) => id !== leader);
    const statuses: (number | string)[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing && i < 500; i++) {
        const via = others[i % 2] ?? "n1";
        statuses.push(
          await statusOf(
            cluster.request(via, "PUT", `/v1/services/web/instances/t${i}`, instance(7000 + i)),
          ),
        );
      }
    })();
    await eventually("some writes", async () => (statuses.length >= 5 ? true : undefined));
    const exitCode = await cluster.kill(leader, "SIGTERM");
    expect(exitCode).toBe(0);
    // Leadership moved before the exit: a survivor already names the new leader.
    const named = await cluster.request(others[0] ?? "n1", "GET", "/v1/cluster/leader");
    const next = (named.body.leader as { id: string } | null)?.id;
    expect(next === undefined ? null : next).not.toBeNull();
    expect(others).toContain(next);
    const afterHandover = statuses.length;
    await eventually("writes after the handover", async () =>
      statuses.length >= afterHandover + 5 ? true : undefined,
    );
    writing = false;
    await writer;
    expect(statuses.filter((status) => status !== 200)).toEqual([]);
  });

  it("lets a node whose data was wiped rejoin and catch up through a snapshot", async () => {
    await cluster.bootstrap(ids);
    const leader = await cluster.leader();
    const wiped = ids.find((id) => id !== leader) ?? "n3";
    for (let i = 0; i < 60; i++) await register(() => leader, `s${i}`, 6000 + i);
    await cluster.kill(wiped, "SIGKILL");
    const removal = await cluster.request(leader, "DELETE", `/v1/cluster/members/${wiped}`);
    expect(removal.status, JSON.stringify(removal.body)).toBe(200);
    await rm(cluster.get(wiped).dataDir, { recursive: true, force: true });
    cluster.start(wiped, [`--join=${cluster.get(leader).http}`]);
    await eventually("the wiped node to be a voter again", async () => {
      const members = await cluster.request(leader, "GET", "/v1/cluster/members");
      const entry = (members.body.members as { id: string; voter: boolean }[]).find(
        (m) => m.id === wiped,
      );
      return entry?.voter === true ? true : undefined;
    });
    await cluster.converged();
    expect(await instanceIds(wiped)).toHaveLength(60);
    expect((await readdir(join(cluster.get(wiped).dataDir, "snapshots"))).length).toBeGreaterThan(
      0,
    );
  });

  it("a node asked to join while the cluster has no leader keeps asking, and joins once it has one", async () => {
    await cluster.bootstrap(ids);
    const leader = await cluster.leader();
    const [first, second] = ids.filter((id) => id !== leader) as [string, string];
    // Two of three down: the one left cannot commit the new member.
    await cluster.kill(first, "SIGKILL");
    await cluster.kill(second, "SIGKILL");
    await cluster.define("n4");
    cluster.start("n4", [`--join=${cluster.get(leader).http}`]);
    await eventually(
      "n4 to be told there is no leader, and to ask again",
      async () =>
        (await readFile(join(cluster.root, "n4.log"), "utf8")).includes('"event":"join-retry"')
          ? true
          : undefined,
      20_000,
    );
    expect(cluster.get("n4").process?.exitCode).toBeNull();
    cluster.start(first, [cluster.peersArg(ids)]);
    cluster.start(second, [cluster.peersArg(ids)]);
    await eventually(
      "n4 to join",
      async () => {
        const members = await cluster.request(await cluster.leader(), "GET", "/v1/cluster/members");
        const entry = (members.body.members as { id: string }[]).find((m) => m.id === "n4");
        return entry === undefined ? undefined : true;
      },
      60_000,
    );
    await cluster.converged();
  }, 120_000);

  it("adds a fourth node as a learner, promotes it and removes another, committing throughout", async () => {
    await cluster.bootstrap(ids);
    const leader = await cluster.leader();
    await cluster.define("n4");
    const statuses: (number | string)[] = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing && i < 1000; i++) {
        statuses.push(
          await statusOf(
            cluster.request(leader, "PUT", `/v1/services/web/instances/m${i}`, instance(5000 + i)),
          ),
        );
      }
    })();
    cluster.start("n4", [`--join=${cluster.get(leader).http}`]);
    // A new agent's start alone (loading its sources) takes seconds on a busy machine.
    await eventually(
      "n4 promoted to voter",
      async () => {
        const members = await cluster.request(leader, "GET", "/v1/cluster/members");
        const entry = (members.body.members as { id: string; voter: boolean }[]).find(
          (m) => m.id === "n4",
        );
        return entry?.voter === true ? true : undefined;
      },
      30_000,
    );
    const removed = ids.find((id) => id !== leader) ?? "n2";
    const removal = await cluster.request(leader, "DELETE", `/v1/cluster/members/${removed}`);
    expect(removal.status, JSON.stringify(removal.body)).toBe(200);
    await cluster.kill(removed, "SIGTERM");
    const count = statuses.length;
    await eventually("writes after the removal", async () =>
      statuses.length >= count + 5 ? true : undefined,
    );
    writing = false;
    await writer;
    expect(statuses.filter((status) => status !== 200)).toEqual([]);
    const members = await cluster.request(leader, "GET", "/v1/cluster/members");
    expect((members.body.members as { id: string }[]).map((m) => m.id).sort()).toEqual(
      ids
        .filter((id) => id !== removed)
        .concat("n4")
        .sort(),
    );
    await cluster.converged();
  });
});
