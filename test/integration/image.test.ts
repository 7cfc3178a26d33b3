import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { eventually } from "./agents.js";

/**
 * There is no Docker engine here: this runs the image's own build steps, ENTRYPOINT, CMD,
 * ENV and HEALTHCHECK from the Dockerfile, without Docker, for three nodes configured the
 * way docker-compose.yml configures them (MUSTER_* variables only), on 127.0.0.1.
 */

const root = fileURLToPath(new URL("../..", import.meta.url));
const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
/** Instructions with their continuation lines joined. */
const instructions = dockerfile
  .replace(/\\\n\s*/g, " ")
  .split("\n")
  .filter((line) => /^[A-Z]+ /.test(line));

function instruction(name: string, stage: "build" | "runtime"): string[] {
  const starts = instructions.flatMap((line, at) => (line.startsWith("FROM ") ? [at] : []));
  const [from, to] = stage === "build" ? [starts[0], starts[1]] : [starts[1], instructions.length];
  return instructions
    .slice(from, to)
    .filter((line) => line.startsWith(`${name} `))
    .map((line) => line.slice(name.length + 1).trim());
}

function execForm(text: string | undefined): string[] {
  const parsed: unknown = JSON.parse(text ?? "null");
  if (!Array.isArray(parsed)) throw new Error(`not an exec-form instruction: ${text}`);
  return parsed as string[];
}

/** ENV KEY=VALUE pairs of the runtime stage. */
function imageEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of instruction("ENV", "runtime")) {
    for (const pair of line.split(/\s+/)) {
      const [key, value] = pair.split("=");
      if (key !== undefined && value !== undefined) env[key] = value;
    }
  }
  return env;
}

const workdir = mkdtempSync(join(root, ".image-"));
const started: ChildProcess[] = [];

afterAll(() => {
  for (const child of started) child.kill("SIGKILL");
  rmSync(workdir, { recursive: true, force: true });
});

async function port(): Promise<number> {
  const { createServer } = await import("node:net");
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        resolve(typeof address === "object" && address !== null ? address.port : 0),
      );
    });
  });
}

describe("the container image's command line, without Docker", () => {
  it("builds with the image's steps, and three agents configured by MUSTER_* form a cluster and pass the HEALTHCHECK", async () => {
    // The build stage's RUN, with dist in a work directory of our own.
    const build = instruction("RUN", "build").find((line) => line.includes("tsc"));
    expect(build).toBeDefined();
    execFileSync(
      process.execPath,
      [
        join(root, "node_modules/typescript/bin/tsc"),
        "-p",
        "tsconfig.json",
        "--outDir",
        join(workdir, "dist"),
      ],
      {
        cwd: root,
        stdio: "pipe",
      },
    );
    execFileSync("cp", ["-r", "proto", join(workdir, "dist")], { cwd: root });

    const entrypoint = execForm(instruction("ENTRYPOINT", "runtime")[0]);
    const command = execForm(instruction("CMD", "runtime")[0]);
    expect([...entrypoint, ...command]).toEqual(["node", "dist/server/cli.js", "agent"]);
    const ids = ["n1", "n2", "n3"];
    const ports = new Map<string, number[]>();
    for (const id of ids) ports.set(id, [await port(), await port(), await port(), await port()]);
    const address = (id: string, which: number) => `127.0.0.1:${ports.get(id)?.[which]}`;
    const peers = ids.map((id) => `${id}=${address(id, 2)}`).join(",");
    const envOf = (id: string) => ({
      ...process.env,
      ...imageEnv(),
      MUSTER_DATA_DIR: join(workdir, `data-${id}`),
      MUSTER_PEERS: peers,
      MUSTER_NODE_ID: id,
      MUSTER_HTTP: address(id, 0),
      MUSTER_GRPC: address(id, 1),
      MUSTER_RAFT: address(id, 2),
      MUSTER_DNS: address(id, 3),
    });
    for (const id of ids) {
      const [program, ...args] = [...entrypoint, ...command];
      const child = spawn(program === "node" ? process.execPath : (program as string), args, {
        cwd: workdir,
        env: envOf(id),
        stdio: "ignore",
      });
      started.push(child);
    }
    // The image's HEALTHCHECK, run as Docker would run it in each container.
    const healthcheck = instruction("HEALTHCHECK", "runtime")[0] ?? "";
    const probe = execForm(healthcheck.slice(healthcheck.indexOf("CMD ") + 4));
    for (const id of ids) {
      await eventually(
        `${id} to pass the HEALTHCHECK`,
        async () => {
          const [program, ...args] = probe;
          const run = spawnSync(program === "node" ? process.execPath : (program as string), args, {
            env: envOf(id),
            timeout: 3000,
          });
          return run.status === 0 ? true : undefined;
        },
        30_000,
      );
    }
    const registered = await fetch(`http://${address("n2", 0)}/v1/services/web/instances/w1`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ address: "10.0.0.1", port: 80 }),
    });
    expect(registered.status).toBe(200);
    const read = await fetch(`http://${address("n3", 0)}/v1/services/web?consistency=linearizable`);
    expect(
      ((await read.json()) as { instances: { id: string }[] }).instances.map((i) => i.id),
    ).toEqual(["w1"]);
  }, 90_000);
});
