import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Agent, fetch } from "undici";
import type { TlsFileSet } from "./tls-certs.js";

const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));

/** The election timeout of test clusters. */
export const testElectionTimeoutMs = 200;

/** Fast timings so that elections and failovers take a fraction of a second. */
const fastTimingArgs = [
  "--heartbeat-interval=20ms",
  `--election-timeout=${testElectionTimeoutMs}ms`,
  "--snapshot-every=20",
  "--log-level=info",
];
/** The product's defaults, for benchmarks. */
const defaultTimingArgs = ["--log-level=warn"];

export interface AgentProcess {
  readonly id: string;
  readonly http: string;
  readonly raft: string;
  readonly grpc: string;
  readonly dns: string;
  readonly dataDir: string;
  process: ChildProcess | null;
}

/**
 * Ports of this process: below the kernel's ephemeral range (ports handed out for port 0 and
 * outgoing connections cannot take one between the check and the agent's bind), and one
 * block per vitest worker, so that clusters of test files running side by side (whose agents
 * restart on the same ports) never pick each other's.
 */
const portBlock = (() => {
  const blocks = 10;
  const size = 1200;
  const worker = Number(process.env.VITEST_POOL_ID ?? 0);
  const first = 20_000 + (worker % blocks) * size;
  return { first, size };
})();

/** Ports this process handed out: never twice, even to checks running at the same time. */
const handedOut = new Set<number>();

async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = portBlock.first + Math.floor(Math.random() * portBlock.size);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free port from ${portBlock.first} in 100 tries`);
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Poll until `probe` returns a value, at most `timeoutMs`. */
export async function eventually<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
      lastError = null;
    } catch (error) {
      lastError = error;
    }
    await sleep(50);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastError === null ? "" : `: ${String(lastError)}`}`,
  );
}

/** A Server-Sent Events body's events as they arrive: each one's id and parsed data. */
export async function* serverSentEvents(
  body: ReadableStream<Uint8Array> | null,
): AsyncGenerator<{ id: number; data: unknown }> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body ?? []) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const id = /^id: (\d+)$/m.exec(event)?.[1];
      const data = /^data: (.*)$/m.exec(event)?.[1];
      if (id !== undefined && data !== undefined) yield { id: Number(id), data: JSON.parse(data) };
    }
  }
}

export interface HttpAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** Real `muster agent` processes on 127.0.0.1, each with its own ports and data directory. */
export class AgentCluster {
  readonly agents = new Map<string, AgentProcess>();
  /** HTTPS with the cluster's CA and certificate when it runs TLS; undefined: plain HTTP. */
  private readonly dispatcher: Agent | undefined;

  private constructor(
    /** Each agent's data directory and log (<id>.log) live under it. */
    readonly root: string,
    private readonly timingArgs: readonly string[],
    private readonly env: Readonly<Record<string, string>>,
    private readonly tls: TlsFileSet | null,
    /** The ACL token `request` sends unless told otherwise. */
    private readonly token: string | null,
  ) {
    this.dispatcher =
      tls === null
        ? undefined
        : new Agent({
            connect: {
              ca: readFileSync(tls.ca),
              cert: readFileSync(tls.cert),
              key: readFileSync(tls.key),
            },
          });
  }

  /**
   * `defaultTimings`: run with the product's default heartbeat and election timeout;
   * `args`: more flags for every agent; `env`: more environment variables; `tls`: every
   * agent runs TLS with these files (start's `args` may give one agent others), and the
   * harness's requests speak HTTPS with them; `token`: the ACL token requests carry.
   */
  static async create(
    options: {
      defaultTimings?: boolean;
      args?: readonly string[];
      env?: Readonly<Record<string, string>>;
      tls?: TlsFileSet;
      token?: string;
    } = {},
  ): Promise<AgentCluster> {
    const root = await mkdtemp(join(tmpdir(), "muster-cluster-"));
    const timings = options.defaultTimings === true ? defaultTimingArgs : fastTimingArgs;
    const tls = options.tls ?? null;
    const tlsArgs =
      tls === null ? [] : [`--tls-ca=${tls.ca}`, `--tls-cert=${tls.cert}`, `--tls-key=${tls.key}`];
    return new AgentCluster(
      root,
      [...timings, ...tlsArgs, ...(options.args ?? [])],
      options.env ?? {},
      tls,
      options.token ?? null,
    );
  }

  async define(id: string): Promise<AgentProcess> {
    const [http, raft, grpc, dns] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const agent: AgentProcess = {
      id,
      http: `127.0.0.1:${http}`,
      raft: `127.0.0.1:${raft}`,
      grpc: `127.0.0.1:${grpc}`,
      dns: `127.0.0.1:${dns}`,
      dataDir: join(this.root, id),
      process: null,
    };
    this.agents.set(id, agent);
    return agent;
  }

  /** Define and start `ids` as a bootstrap cluster. */
  async bootstrap(ids: readonly string[]): Promise<void> {
    for (const id of ids) await this.define(id);
    const peers = ids.map((id) => `${id}=${this.get(id).raft}`).join(",");
    for (const id of ids) this.start(id, [`--peers=${peers}`]);
  }

  peersArg(ids: readonly string[]): string {
    return `--peers=${ids.map((id) => `${id}=${this.get(id).raft}`).join(",")}`;
  }

  get(id: string): AgentProcess {
    const agent = this.agents.get(id);
    if (agent === undefined) throw new Error(`no agent ${id}`);
    return agent;
  }

  start(id: string, args: readonly string[]): void {
    const agent = this.get(id);
    const log = createWriteStream(join(this.root, `${id}.log`), { flags: "a" });
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        cli,
        "agent",
        `--node-id=${id}`,
        `--data-dir=${agent.dataDir}`,
        `--http=${agent.http}`,
        `--raft=${agent.raft}`,
        `--grpc=${agent.grpc}`,
        `--dns=${agent.dns}`,
        ...this.timingArgs,
        ...args,
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...this.env } },
    );
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    // A process that dies without a word still says so in its log.
    child.once("close", (code, signal) => log.end(`${JSON.stringify({ exited: code, signal })}\n`));
    agent.process = child;
  }

  /** Send `signal`; resolves with the exit code once the process is gone. */
  async kill(id: string, signal: NodeJS.Signals): Promise<number | null> {
    const child = this.get(id).process;
    if (child === null || child.exitCode !== null || child.signalCode !== null)
      return child?.exitCode ?? null;
    const exited = new Promise<number | null>((resolve) =>
      child.once("exit", (code) => resolve(code)),
    );
    child.kill(signal);
    const code = await exited;
    this.get(id).process = null;
    return code;
  }

  running(): AgentProcess[] {
    return [...this.agents.values()].filter((agent) => agent.process !== null);
  }

  /** `token`: the ACL token to send instead of the cluster's (null: none). */
  async request(
    id: string,
    method: string,
    path: string,
    body?: unknown,
    token: string | null = this.token,
  ): Promise<HttpAnswer> {
    const scheme = this.tls === null ? "http" : "https";
    const headers: Record<string, string> = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const address = this.get(id).http;
    const response = await fetch(`${scheme}://${address}${path}`, {
      method,
      headers,
      dispatcher: this.dispatcher,
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(8000),
    }).catch((error: unknown) => {
      const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
      throw new Error(`${method} ${path} on ${id} (${address}): ${String(cause)}`);
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  }

  /**
   * The leader every running agent agrees on. Agents start slowly on a loaded 2-core machine
   * (each compiles its TypeScript, and other test files run clusters beside them): up to a
   * minute.
   */
  async leader(timeoutMs = 60_000): Promise<string> {
    return eventually(
      "every running agent to agree on a leader",
      async () => {
        const running = this.running();
        const answers = await Promise.all(
          running.map((agent) => this.request(agent.id, "GET", "/v1/cluster/leader")),
        );
        const ids = answers.map((answer) => (answer.body.leader as { id: string } | null)?.id);
        const first = ids[0];
        if (
          first !== undefined &&
          running.some((agent) => agent.id === first) &&
          ids.every((id) => id === first)
        )
          return first;
        // Thrown, so that a timeout says what each agent last answered.
        throw new Error(
          `leaders named: ${running.map((agent, i) => `${agent.id}: ${ids[i] ?? "none"}`).join(", ")}`,
        );
      },
      timeoutMs,
    );
  }

  /** Every running agent reports the same state hash at the same applied index. */
  async converged(timeoutMs = 60_000): Promise<{ appliedIndex: number; hash: string }> {
    return eventually(
      "every running agent to reach the same state",
      async () => {
        const answers = await Promise.all(
          this.running().map((agent) => this.request(agent.id, "GET", "/v1/cluster/state-hash")),
        );
        const hashes = new Set(
          answers.map((answer) => `${answer.body.appliedIndex}/${answer.body.hash}`),
        );
        return hashes.size === 1
          ? (answers[0]?.body as { appliedIndex: number; hash: string })
          : undefined;
      },
      timeoutMs,
    );
  }

  /** Stop every agent; their data and logs are removed unless `keep` (or MUSTER_KEEP_TEST_DATA). */
  async destroy(keep = process.env.MUSTER_KEEP_TEST_DATA !== undefined): Promise<void> {
    for (const agent of this.agents.values()) await this.kill(agent.id, "SIGKILL");
    await this.dispatcher?.close();
    if (!keep) await rm(this.root, { recursive: true, force: true });
  }
}
