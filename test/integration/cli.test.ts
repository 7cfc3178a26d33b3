import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster } from "./agents.js";

const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));
let cluster: AgentCluster;

beforeAll(async () => {
  cluster = await AgentCluster.create();
  await cluster.bootstrap(["n1", "n2", "n3"]);
  await cluster.leader();
}, 60_000);

afterAll(async () => {
  await cluster.destroy();
});

function muster(...args: string[]) {
  const run = spawnSync(process.execPath, ["--import", "tsx", cli, ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

describe("the muster CLI for people", () => {
  it("registers, lists services and instances as tables or JSON, and shows the members", () => {
    const http = ["--http", cluster.get("n2").http];
    const registered = muster(
      "register",
      "web",
      "w1",
      "--address",
      "10.0.0.1",
      "--port",
      "80",
      "--tag",
      "v1",
      "--meta",
      "zone=a",
      "--ttl",
      "1h",
      ...http,
    );
    expect(registered.status, registered.stderr).toBe(0);
    expect(registered.stdout).toContain("registered w1 of web at 10.0.0.1:80");
    const list = muster("services", "--http", cluster.get("n3").http);
    expect(list.stdout.trim().split("\n")).toEqual([
      "SERVICE  INSTANCES  PASSING  TAGS",
      "web      1          1        v1",
    ]);
    const instances = muster("services", "web", ...http);
    expect(instances.stdout.split("\n")[1]).toMatch(/^w1 +10\.0\.0\.1:80 +passing +100 +v1 /);
    const json = JSON.parse(muster("services", "web", "--json", ...http).stdout) as {
      instances: { id: string; meta: Record<string, string> }[];
    };
    expect(json.instances.map((i) => [i.id, i.meta.zone])).toEqual([["w1", "a"]]);
    const members = muster("members", ...http)
      .stdout.trim()
      .split("\n");
    expect(members[0]).toMatch(/^ID +ROLE +VOTER +HTTP +GRPC +RAFT +DNS$/);
    expect(members.filter((line) => / (leader|follower) +true /.test(line))).toHaveLength(3);
    expect(muster("deregister", "web", "w1", ...http).status).toBe(0);
  });

  it("says what was wrong and exits non-zero", () => {
    const bad = muster(
      "register",
      "web",
      "w2",
      "--address",
      "10.0.0.1",
      "--port",
      "99999",
      "--http",
      cluster.get("n1").http,
    );
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain("field port");
    const missing = muster("services", "nope", "--http", cluster.get("n1").http);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("no instances of service nope");
    const unreachable = muster("members", "--http", "127.0.0.1:1");
    expect(unreachable.status).toBe(1);
  });
});
