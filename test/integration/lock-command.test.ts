import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster, eventually, sleep } from "./agents.js";

const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));
const ids = ["n1", "n2", "n3"];

let cluster: AgentCluster;
let scratch: string;
const started: ChildProcess[] = [];

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "muster-lock-command-"));
  cluster = await AgentCluster.create({ args: ["--lock-delay=1s"] });
  await cluster.bootstrap(ids);
  // Generous: agents load slowly on a busy machine.
  await cluster.leader(45_000);
}, 90_000);

/** Kill `child` and what it started: each muster runs in a process group of its own. */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

afterEach(() => {
  for (const child of started.splice(0)) killGroup(child);
});

afterAll(async () => {
  await cluster?.destroy();
  if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
});

interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
}

/** `muster ARGS...` as a real process; resolves when it exits, killed after `limitMs`. */
function muster(args: readonly string[], env: Record<string, string> = {}, limitMs = 60_000) {
  const child = spawn(process.execPath, ["--import", "tsx", cli, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  started.push(child);
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  child.stdout?.resume();
  const exited = new Promise<Finished>((resolve) => {
    const limit = setTimeout(() => killGroup(child), limitMs);
    child.once("exit", (code, signal) => {
      clearTimeout(limit);
      resolve({ code, signal, stderr });
    });
  });
  return { child, exited };
}

/**
 * A command that appends "start TOKEN" to $OUT_FILE, sleeps `sleepMs` (or, with `gate`, waits
 * until that file exists, at most 30 s), appends "end TOKEN", then exits with `exitCode`.
 */
function guarded(tokenEnv: string, sleepMs: number, exitCode = 0, gate?: string): string[] {
  const finish = `fs.appendFileSync(process.env.OUT_FILE, "end " + token + "\\n"); process.exit(${exitCode});`;
  const wait =
    gate === undefined
      ? `setTimeout(() => { ${finish} }, ${sleepMs});`
      : [
          "const until = Date.now() + 30000;",
          `const poll = setInterval(() => { if (fs.existsSync(${JSON.stringify(gate)}) || Date.now() > until) { clearInterval(poll); ${finish} } }, 20);`,
        ].join(" ");
  const script = [
    "const fs = require('node:fs');",
    `const token = process.env.${tokenEnv};`,
    'fs.appendFileSync(process.env.OUT_FILE, "start " + token + "\\n");',
    wait,
  ].join(" ");
  return [process.execPath, "-e", script];
}

async function lines(file: string): Promise<string[]> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text.split("\n").filter((line) => line !== "");
}

/** Every start is followed by its own end before the next start; returns the tokens in order. */
function nonOverlapping(log: readonly string[]): number[] {
  expect(log.length % 2, log.join("\n")).toBe(0);
  const tokens: number[] = [];
  for (let i = 0; i < log.length; i += 2) {
    const start = /^start (\d+)$/.exec(log[i] ?? "");
    const end = /^end (\d+)$/.exec(log[i + 1] ?? "");
    expect(start, log.join("\n")).not.toBeNull();
    expect(end?.[1], log.join("\n")).toBe(start?.[1]);
    tokens.push(Number(start?.[1]));
  }
  return tokens;
}

function http(i: number): string {
  return cluster.get(ids[i % ids.length] as string).http;
}

describe("muster lock and muster elect against a three-node cluster", () => {
  it("runs 5 contending commands one at a time, with strictly increasing fencing tokens", async () => {
    const out = join(scratch, "lock-5.log");
    const runs = Array.from({ length: 5 }, (_, i) =>
      muster(["lock", "job", "--http", http(i), "--", ...guarded("MUSTER_LOCK_TOKEN", 300)], {
        OUT_FILE: out,
      }),
    );
    const finished = await Promise.all(runs.map((run) => run.exited));
    for (const result of finished) expect(result, result.stderr).toMatchObject({ code: 0 });
    const tokens = nonOverlapping(await lines(out));
    expect(tokens).toHaveLength(5);
    for (let i = 1; i < tokens.length; i++)
      expect(tokens[i]).toBeGreaterThan(tokens[i - 1] as number);
    // Released at the end (not left to expire): the lock is free and nobody waits.
    const lock = await cluster.request("n1", "GET", "/v1/locks/job");
    expect(lock.body).toMatchObject({ holder: null, waiters: 0 });
  }, 90_000);

  it("exits with the command's exit status", async () => {
    const out = join(scratch, "status.log");
    const run = muster(
      ["lock", "status", "--http", http(1), "--", ...guarded("MUSTER_LOCK_TOKEN", 10, 3)],
      { OUT_FILE: out },
    );
    const result = await run.exited;
    expect(result.code, result.stderr).toBe(3);
    expect(nonOverlapping(await lines(out))).toHaveLength(1);
  }, 60_000);

  it("gives up with status 1 and a message when the lock stays taken for --wait", async () => {
    const holder = await cluster.request("n1", "POST", "/v1/sessions", { ttl: "30s" });
    const session = holder.body.id as string;
    const taken = await cluster.request("n2", "POST", "/v1/locks/busy/acquire", {
      session,
      value: "someone-else",
    });
    expect(taken.status).toBe(200);
    const out = join(scratch, "busy.log");
    const begun = Date.now();
    const result = await muster(
      ["lock", "busy", "--http", http(2), "--wait", "1s", "--", ...guarded("MUSTER_LOCK_TOKEN", 0)],
      { OUT_FILE: out },
    ).exited;
    expect(result.code, result.stderr).toBe(1);
    expect(Date.now() - begun).toBeGreaterThanOrEqual(1000);
    expect(result.stderr).toContain('could not acquire the lock "busy" within 1s');
    expect(result.stderr).toContain(session);
    expect(await lines(out)).toEqual([]);
    await cluster.request("n1", "DELETE", `/v1/sessions/${session}`);
  }, 60_000);

  it("stops the command with SIGTERM when its session is deleted under it", async () => {
    const out = join(scratch, "lost.log");
    const run = muster(
      ["lock", "lost", "--http", http(0), "--", ...guarded("MUSTER_LOCK_TOKEN", 60_000)],
      { OUT_FILE: out },
    );
    await eventually("the command to start", async () =>
      (await lines(out)).length === 1 ? true : undefined,
    );
    const lock = await cluster.request("n3", "GET", "/v1/locks/lost");
    const holder = lock.body.holder as { session: string; token: number };
    expect(`start ${holder.token}`).toBe((await lines(out))[0]);
    expect((await cluster.request("n3", "DELETE", `/v1/sessions/${holder.session}`)).status).toBe(
      200,
    );
    const result = await run.exited;
    // SIGTERM ended the command (128 + 15), and it never wrote its end line.
    expect(result.code, result.stderr).toBe(143);
    expect(result.stderr).toContain('lost the lock "lost"');
    expect(await lines(out)).toHaveLength(1);
  }, 60_000);

  it("passes SIGTERM on to the command and releases the lock after it exits", async () => {
    const out = join(scratch, "signal.log");
    const script = [
      "const fs = require('node:fs');",
      'fs.appendFileSync(process.env.OUT_FILE, "start " + process.env.MUSTER_LOCK_TOKEN + "\\n");',
      "process.on('SIGTERM', () => { fs.appendFileSync(process.env.OUT_FILE, 'sigterm\\n'); process.exit(7); });",
      "setTimeout(() => process.exit(0), 60000);",
    ].join(" ");
    const run = muster(
      ["lock", "signal", "--http", http(1), "--", process.execPath, "-e", script],
      {
        OUT_FILE: out,
      },
    );
    await eventually("the command to start", async () =>
      (await lines(out)).length === 1 ? true : undefined,
    );
    run.child.kill("SIGTERM");
    const result = await run.exited;
    expect(result.code, result.stderr).toBe(7);
    expect((await lines(out))[1]).toBe("sigterm");
    const lock = await cluster.request("n2", "GET", "/v1/locks/signal");
    expect(lock.body).toMatchObject({ holder: null, waiters: 0 });
  }, 60_000);

  it("muster elect: the second candidate runs only after the first finished", async () => {
    const out = join(scratch, "elect.log");
    const gate = join(scratch, "elect.go");
    const candidate = (value: string, via: string, gated: boolean) =>
      muster(
        [
          "elect",
          "leader",
          "--value",
          value,
          "--http",
          via,
          "--",
          ...guarded("MUSTER_ELECTION_TOKEN", 10, 0, gated ? gate : undefined),
        ],
        { OUT_FILE: out },
      );
    const first = candidate("a", http(0), true);
    await eventually("the first leader to start", async () =>
      (await lines(out)).length > 0 ? true : undefined,
    );
    const leader = await cluster.request("n2", "GET", "/v1/elections/leader");
    expect(leader.body.leader).toMatchObject({ value: "a" });
    const second = candidate("b", http(2), false);
    // The second candidate queues (the election's index moves) while the first still leads.
    const queued = await cluster.request(
      "n2",
      "GET",
      `/v1/elections/leader?index=${leader.body.index as number}&wait=20s`,
    );
    expect(queued.body.index).toBeGreaterThan(leader.body.index as number);
    expect(queued.body.leader).toMatchObject({ value: "a" });
    await sleep(300);
    expect(await lines(out)).toHaveLength(1);
    await writeFile(gate, "");
    const [one, two] = await Promise.all([first.exited, second.exited]);
    expect(one.code, one.stderr).toBe(0);
    expect(two.code, two.stderr).toBe(0);
    const tokens = nonOverlapping(await lines(out));
    expect(tokens).toHaveLength(2);
    expect(tokens[1]).toBeGreaterThan(tokens[0] as number);
    const after = await cluster.request("n1", "GET", "/v1/elections/leader");
    expect(after.body.leader).toBeNull();
  }, 60_000);
});
