import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerMusterResolver } from "../../client-sdk/src/grpc.js";
import type { MusterClient, Registration } from "../../client-sdk/src/index.js";
import { AgentCluster } from "./agents.js";
import { endpoints, client as makeClient } from "./sdk-harness.js";

const repository = fileURLToPath(new URL("../../", import.meta.url));
let cluster: AgentCluster;
let client: MusterClient;
let scratch: string;

beforeAll(async () => {
  cluster = await AgentCluster.create();
  await cluster.bootstrap(["n1", "n2", "n3"]);
  await cluster.leader();
  client = makeClient(cluster);
  scratch = await mkdtemp(join(tmpdir(), "muster-sdk-"));
});
afterAll(async () => {
  await client.close();
  await cluster.destroy();
  await rm(scratch, { recursive: true, force: true });
});

interface Run {
  readonly code: number | null;
  readonly output: string;
}

/** Run a plain JavaScript program of the repository against the test cluster, bounded in time. */
function run(script: string, args: readonly string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [join(repository, script), ...args], {
    env: { ...process.env, MUSTER_ENDPOINTS: endpoints(cluster).join(","), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (chunk) => {
    output += String(chunk);
  });
  child.stderr?.on("data", (chunk) => {
    output += String(chunk);
  });
  const done = new Promise<Run>((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
  return { child, done, output: () => output };
}

async function waitForLine(read: () => string, pattern: RegExp, child: ChildProcess) {
  const deadline = Date.now() + 30_000;
  while (!pattern.test(read())) {
    if (Date.now() > deadline || child.exitCode !== null)
      throw new Error(`no ${pattern}: ${read()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("SDK in processes", () => {
  it("withLock: processes never run the function at the same time, and tokens only grow", async () => {
    const file = join(scratch, "guarded.log");
    const runs = [1, 2, 3].map(() =>
      run("test/integration/fixtures/sdk-locker.mjs", [], {
        MUSTER_TEST_FILE: file,
        MUSTER_TEST_LOCK: "guarded",
        MUSTER_TEST_ROUNDS: "4",
      }),
    );
    const results = await Promise.all(runs.map((r) => r.done));
    for (const result of results) expect(result.code, result.output).toBe(0);
    const lines = (await readFile(file, "utf8")).trim().split("\n");
    expect(lines).toHaveLength(3 * 4 * 2);
    let last = 0;
    for (let i = 0; i < lines.length; i += 2) {
      const [startWord, startPid, startToken] = (lines[i] as string).split(" ");
      const [endWord, endPid, endToken] = (lines[i + 1] as string).split(" ");
      // Every start is followed by the end of the same holder: no two ran at once.
      expect([startWord, endWord, endPid, endToken]).toEqual([
        "start",
        "end",
        startPid,
        startToken,
      ]);
      expect(Number(startToken)).toBeGreaterThan(last);
      last = Number(startToken);
    }
  });

  it("the examples run: a service registers, a caller balances over its instances, jobs take turns", async () => {
    const services = [run("examples/service.mjs", []), run("examples/service.mjs", [])];
    try {
      for (const service of services)
        await waitForLine(service.output, /registered/, service.child);
      const ports = services.map((s) => /127\.0\.0\.1:(\d+) and registered/.exec(s.output())?.[1]);
      const caller = await run("examples/caller.mjs", ["round-robin", "4"]).done;
      expect(caller.code, caller.output).toBe(0);
      for (const port of ports) expect(caller.output).toContain(`from port ${port}`);

      const jobs = await Promise.all(
        [1, 2].map(() => run("examples/nightly-job.mjs", [], { JOB_WORK_MS: "300" }).done),
      );
      const tokens = jobs.map((job) => {
        expect(job.code, job.output).toBe(0);
        expect(job.output).toMatch(/finished the report/);
        return Number(/fencing token (\d+)/.exec(job.output)?.[1]);
      });
      expect(new Set(tokens).size).toBe(2);

      for (const service of services) service.child.kill("SIGTERM");
      for (const service of services) {
        const result = await service.done;
        expect(result.output).toContain("deregistered");
      }
      const left = await client.call("GET", "/v1/services/greeter").catch((error) => error);
      expect(left.status).toBe(404);
    } finally {
      for (const service of services) service.child.kill("SIGKILL");
    }
  });

  it("muster:/// targets resolve in grpc-js channels and follow the registry", async () => {
    registerMusterResolver(grpc, client);
    const servers: grpc.Server[] = [];
    const registrations: Registration[] = [];
    const who = {
      path: "/test.Who/Name",
      requestStream: false,
      responseStream: false,
      requestSerialize: (value: Buffer) => value,
      requestDeserialize: (bytes: Buffer) => bytes,
      responseSerialize: (value: Buffer) => value,
      responseDeserialize: (bytes: Buffer) => bytes,
    } as const;
    try {
      for (const name of ["g1", "g2"]) {
        const server = new grpc.Server();
        server.addService(
          { name: who },
          {
            name: (_call: unknown, callback: grpc.sendUnaryData<Buffer>) =>
              callback(null, Buffer.from(name)),
          },
        );
        const port = await new Promise<number>((resolve, reject) =>
          server.bindAsync(
            "127.0.0.1:0",
            grpc.ServerCredentials.createInsecure(),
            (error, bound) => (error === null ? resolve(bound) : reject(error)),
          ),
        );
        servers.push(server);
        registrations.push(
          await client.register({
            service: "names",
            id: name,
            address: "127.0.0.1",
            port,
            handleSignals: false,
            drainDelay: 0,
          }),
        );
      }
      const channelClient = new grpc.Client("muster:///names", grpc.credentials.createInsecure(), {
        "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
      });
      const call = () =>
        new Promise<string>((resolve, reject) =>
          channelClient.makeUnaryRequest(
            who.path,
            who.requestSerialize,
            who.responseDeserialize,
            Buffer.alloc(0),
            { deadline: Date.now() + 10_000 },
            (error, value) =>
              error !== null || value === undefined ? reject(error) : resolve(String(value)),
          ),
        );
      const answered = new Set<string>();
      for (let i = 0; i < 20; i++) answered.add(await call());
      expect([...answered].sort()).toEqual(["g1", "g2"]);
      // Drained and deregistered: the channel stops choosing it.
      await registrations[0]?.close();
      const deadline = Date.now() + 15_000;
      let streak = 0;
      while (streak < 10 && Date.now() < deadline)
        streak = (await call()) === "g2" ? streak + 1 : 0;
      expect(streak).toBe(10);
      channelClient.close();
    } finally {
      for (const registration of registrations) await registration.close();
      for (const server of servers) server.forceShutdown();
    }
  });
});
