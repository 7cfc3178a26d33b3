import { execFileSync, spawnSync } from "node:child_process";
import { Resolver } from "node:dns/promises";
import { fileURLToPath } from "node:url";
import { Packet } from "dns2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { queryDns } from "../../dns/client.js";
import { AgentCluster, eventually } from "./agents.js";

const ids = ["n1", "n2", "n3"];
let cluster: AgentCluster;

beforeAll(async () => {
  cluster = await AgentCluster.create();
  await cluster.bootstrap(ids);
  await cluster.leader();
  // Nothing heartbeats here: TTLs long enough for the whole file.
  const instances: [string, Record<string, unknown>][] = [
    ["w1", { address: "10.0.0.1", port: 8081, tags: ["v1", "blue"], weight: 10, ttl: "1h" }],
    ["w2", { address: "10.0.0.2", port: 8082, tags: ["v2"], ttl: "1h" }],
    ["w6", { address: "fd00::6", port: 8086, tags: ["v1"], ttl: "1h" }],
    ["w7", { address: "10.0.0.7", port: 8087, status: "critical", ttl: "1h" }],
  ];
  for (const [id, body] of instances) {
    const answer = await cluster.request("n1", "PUT", `/v1/services/web/instances/${id}`, body);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  }
  // Every node answers from its own state: wait until each has applied the writes.
  await cluster.converged();
}, 60_000);

afterAll(async () => {
  await cluster.destroy();
});

/** A fresh c-ares channel per lookup: nothing cached between questions. */
function resolver(id: string): Resolver {
  const resolver = new Resolver({ timeout: 2000, tries: 2 });
  resolver.setServers([cluster.get(id).dns]);
  return resolver;
}

function dnsPort(id: string): number {
  return Number(cluster.get(id).dns.split(":")[1]);
}

function ask(id: string, name: string, type: number, transport: "udp" | "tcp", edns = false) {
  return queryDns(cluster.get(id).dns, name, type, { transport, edns, timeoutMs: 3000 });
}

describe("DNS from every node, through real resolvers", () => {
  it("c-ares resolves SRV, A and AAAA of healthy instances on every node", async () => {
    for (const id of ids) {
      const srv = await resolver(id).resolveSrv("_web._tcp.service.muster");
      expect(srv.map((r) => [r.name, r.port, r.weight, r.priority]).sort()).toEqual([
        ["w1.web.instance.muster", 8081, 10, 1],
        ["w2.web.instance.muster", 8082, 100, 1],
        ["w6.web.instance.muster", 8086, 100, 1],
      ]);
      expect((await resolver(id).resolve4("web.service.muster")).sort()).toEqual([
        "10.0.0.1",
        "10.0.0.2",
      ]);
      expect(await resolver(id).resolve6("WEB.service.muster")).toEqual(["fd00::6"]);
      expect(await resolver(id).resolve4("w2.web.instance.muster")).toEqual(["10.0.0.2"]);
    }
  });

  it("sees tag filters in both forms", async () => {
    expect(await resolver("n2").resolve4("blue.web.service.muster")).toEqual(["10.0.0.1"]);
    const tagged = await resolver("n3").resolveSrv("_web._v1.service.muster");
    expect(tagged.map((r) => r.name).sort()).toEqual([
      "w1.web.instance.muster",
      "w6.web.instance.muster",
    ]);
  });

  it("gets NXDOMAIN for an unknown service, NODATA for a missing type, REFUSED outside", async () => {
    await expect(resolver("n1").resolve4("nope.service.muster")).rejects.toMatchObject({
      code: "ENOTFOUND",
    });
    await expect(resolver("n1").resolveTxt("web.service.muster")).rejects.toMatchObject({
      code: "ENODATA",
    });
    await expect(resolver("n1").resolve4("web.service.example")).rejects.toMatchObject({
      code: "EREFUSED",
    });
    const nx = await ask("n2", "nope.service.muster", Packet.TYPE.A, "udp");
    expect(nx.header.rcode).toBe(3);
    expect(nx.authorities.map((r) => r.type)).toEqual([Packet.TYPE.SOA]);
  });

  it("sees an instance disappear once its TTL runs out", async () => {
    const answer = await cluster.request("n2", "PUT", "/v1/services/brief/instances/b1", {
      address: "10.9.9.9",
      port: 1,
      ttl: "2s",
    });
    expect(answer.status).toBe(200);
    await eventually("the instance to appear in DNS", async () =>
      (await resolver("n3").resolve4("brief.service.muster")).includes("10.9.9.9")
        ? true
        : undefined,
    );
    await eventually(
      "the instance to leave DNS",
      async () => {
        const gone = await resolver("n3")
          .resolve4("brief.service.muster")
          .then(() => false)
          .catch((error: { code?: string }) => error.code === "ENODATA");
        return gone ? true : undefined;
      },
      8000,
    );
  });

  it("leaves out an instance whose id is too long for a DNS label, and keeps serving", async () => {
    const id = "x".repeat(64);
    const answer = await cluster.request("n1", "PUT", `/v1/services/long/instances/${id}`, {
      address: "10.7.7.7",
      port: 7,
      ttl: "1h",
    });
    expect(answer.status).toBe(200);
    await cluster.converged();
    for (const node of ids) {
      await expect(resolver(node).resolveSrv("long.service.muster")).rejects.toMatchObject({
        code: "ENODATA",
      });
      expect(await resolver(node).resolve4("long.service.muster")).toEqual(["10.7.7.7"]);
      expect((await cluster.request(node, "GET", "/healthz")).status).toBe(200);
    }
  });

  it("truncates a 200-instance answer over UDP and gives all of it over TCP", async () => {
    for (let start = 0; start < 200; start += 25) {
      await Promise.all(
        Array.from({ length: 25 }, (_, offset) => start + offset).map(async (n) => {
          const answer = await cluster.request("n1", "PUT", `/v1/services/big/instances/b${n}`, {
            address: `10.1.${Math.floor(n / 250)}.${n % 250}`,
            port: 9000 + n,
            ttl: "1h",
          });
          expect(answer.status).toBe(200);
        }),
      );
    }
    await cluster.converged();
    for (const edns of [false, true]) {
      const udp = await ask("n2", "big.service.muster", Packet.TYPE.SRV, "udp", edns);
      expect(udp.header.tc).toBe(1);
      expect(udp.answers).toHaveLength(0);
    }
    const tcp = await ask("n2", "big.service.muster", Packet.TYPE.SRV, "tcp");
    expect(tcp.header.tc).toBe(0);
    expect(tcp.answers).toHaveLength(200);
    expect(tcp.additionals).toHaveLength(200);
    const small = await ask("n3", "web.service.muster", Packet.TYPE.A, "udp", true);
    expect([small.header.tc, small.header.aa, small.answers.length]).toEqual([0, 1, 2]);
    expect(small.additionals.map((r) => r.type)).toEqual([Packet.TYPE.EDNS]);
  });

  it("dig prints the SRV records (when dig is installed)", (context) => {
    if (spawnSync("dig", ["-v"]).error !== undefined) {
      context.skip();
      return;
    }
    const output = execFileSync(
      "dig",
      [
        "@127.0.0.1",
        "-p",
        String(dnsPort("n1")),
        "+short",
        "+tries=2",
        "+time=2",
        "web.service.muster",
        "SRV",
      ],
      { encoding: "utf8" },
    );
    expect(output.trim().split("\n").sort()).toEqual([
      "1 10 8081 w1.web.instance.muster.",
      "1 100 8082 w2.web.instance.muster.",
      "1 100 8086 w6.web.instance.muster.",
    ]);
  });

  it("muster resolve prints what DNS answers, following a truncated answer over TCP", () => {
    const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));
    const run = (...args: string[]) =>
      execFileSync(
        process.execPath,
        ["--import", "tsx", cli, "resolve", ...args, "--server", cluster.get("n1").dns],
        {
          encoding: "utf8",
          timeout: 20_000,
        },
      );
    const srv = run("_web._tcp.service.muster");
    expect(srv).toContain(";; status: NOERROR");
    expect(srv).toMatch(
      /^_web\._tcp\.service\.muster\.\t5\tIN\tSRV\t1 10 8081 w1\.web\.instance\.muster\.$/m,
    );
    expect(run("big.service.muster", "--type", "A").match(/\tIN\tA\t/g)).toHaveLength(200);
    expect(run("nope.service.muster", "--type", "A")).toContain(";; status: NXDOMAIN");
  });

  it("keeps answering from local state with no leader, and SERVFAIL past --dns-max-stale", async () => {
    const strict = await AgentCluster.create({ args: ["--dns-max-stale=1s"] });
    try {
      await strict.bootstrap(ids);
      await strict.leader();
      const registered = await strict.request("n1", "PUT", "/v1/services/web/instances/w1", {
        address: "10.0.0.1",
        port: 80,
      });
      expect(registered.status).toBe(200);
      await strict.converged();
      for (const id of ["n2", "n3"]) {
        await strict.kill(id, "SIGKILL");
        await cluster.kill(id, "SIGKILL");
      }
      await eventually("n1 to know it has no leader", async () => {
        const leader = await cluster.request("n1", "GET", "/v1/cluster/leader");
        return leader.body.leader === null ? true : undefined;
      });
      // The default: a node without a leader still answers what it knows.
      expect(await resolver("n1").resolve4("web.service.muster")).toContain("10.0.0.1");
      // With --dns-max-stale, once no leader was heard from for that long: SERVFAIL.
      const servfail = await eventually(
        "SERVFAIL from the lone node",
        async () => {
          const answer = await queryDns(strict.get("n1").dns, "web.service.muster", Packet.TYPE.A, {
            transport: "udp",
            edns: false,
            timeoutMs: 2000,
          });
          return answer.header.rcode === 2 ? answer : undefined;
        },
        10_000,
      );
      expect(servfail.answers).toHaveLength(0);
    } finally {
      await strict.destroy();
    }
  });
});
