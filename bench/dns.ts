import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AgentCluster } from "../test/integration/agents.js";
import { percentile } from "./stats.js";

/**
 * DNS throughput of one agent of a three-agent cluster (default timings) on 127.0.0.1,
 * measured with dnsperf exactly as the peer baseline measures dnsmasq
 * (../shared/bench/dns-baseline.sh, beside the repository): dnsperf defaults (1 client, 100 outstanding, 5 s
 * timeout, no EDNS) at full rate for a mixed SRV+A file, an SRV-only and an A-only file,
 * then a fixed 10,000 qps for latency percentiles. Then the baseline script itself runs
 * (dnsmasq, same durations), and the ratios muster/dnsmasq are printed.
 *
 * Env: DNS_BENCH_SECONDS (per dnsperf run, 20), DNS_BENCH_BASELINE (the script; "skip" to
 * skip it), DNS_BENCH_FIXED_QPS (10000).
 */

const ids = ["n1", "n2", "n3"];
const seconds = Number(process.env.DNS_BENCH_SECONDS ?? 20);
const fixedQps = Number(process.env.DNS_BENCH_FIXED_QPS ?? 10_000);
const baselineScript =
  process.env.DNS_BENCH_BASELINE ??
  fileURLToPath(new URL("../../shared/bench/dns-baseline.sh", import.meta.url));
const instances = 10;
const warmupSeconds = 3;

/**
 * The query files mirror the baseline's: mixed is 1 SRV : 1 A, the SRV half on the service
 * name (some in the tag form), the A half split between the service name, instance names
 * and the tag form; srv is the service's SRV only; a is the service name and each instance.
 */
function queryFiles(): Record<"mixed" | "srv" | "a", string[]> {
  const mixed: string[] = [];
  for (let n = 1; n <= instances; n++) {
    mixed.push(n % 5 === 0 ? "blue.web.service.muster SRV" : "web.service.muster SRV");
    if (n % 2 === 1) mixed.push("web.service.muster A");
    else if (n % 4 === 0) mixed.push("blue.web.service.muster A");
    else mixed.push(`w${n}.web.instance.muster A`);
  }
  const a = ["web.service.muster A"];
  for (let n = 1; n <= instances; n++) a.push(`w${n}.web.instance.muster A`);
  return { mixed, srv: ["web.service.muster SRV"], a };
}

interface PerfFigures {
  readonly qps: number;
  readonly completed: number;
  readonly lost: number;
  readonly avgMs: number;
  readonly maxMs: number;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  readonly rcodes: string;
  readonly responseBytes: string;
  /** CPU the measured process used during the run, in cores. */
  readonly serverCores: number;
}

async function run(
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs: number; echo?: boolean },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
      if (options.echo === true) process.stderr.write(chunk);
    });
    const timer = setTimeout(() => child.kill("SIGTERM"), options.timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

let clockTicks = 100;

/** utime + stime of a process, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}

async function dnsperf(
  port: number,
  file: string,
  fixed: boolean,
  serverPid: number,
  duration = seconds,
): Promise<PerfFigures> {
  const args = ["-s", "127.0.0.1", "-p", String(port), "-l", String(duration), "-d", file];
  if (fixed) args.push("-Q", String(fixedQps), "-v");
  const cpuBefore = await cpuSeconds(serverPid);
  const result = await run("dnsperf", args, { timeoutMs: (seconds + 30) * 1000 });
  const cpuAfter = await cpuSeconds(serverPid);
  const out = result.stdout;
  if (result.code !== 0 || !/Queries per second/.test(out)) {
    throw new Error(`dnsperf ${args.join(" ")} failed:\n${out}\n${result.stderr}`);
  }
  const number = (pattern: RegExp) => Number(pattern.exec(out)?.[1] ?? Number.NaN);
  let p50Ms: number | null = null;
  let p99Ms: number | null = null;
  if (fixed) {
    // "> NOERROR web.service.muster SRV 0.000123"
    const latencies = out
      .split("\n")
      .filter((line) => line.startsWith("> "))
      .map((line) => Number(line.trim().split(/\s+/).at(-1)) * 1000)
      .filter((value) => Number.isFinite(value));
    p50Ms = percentile(latencies, 50);
    p99Ms = percentile(latencies, 99);
  }
  return {
    qps: number(/Queries per second:\s+([\d.]+)/),
    completed: number(/Queries completed:\s+(\d+)/),
    lost: number(/Queries lost:\s+(\d+)/),
    avgMs: number(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
    maxMs: number(/Average Latency \(s\):.*max ([\d.]+)/) * 1000,
    p50Ms,
    p99Ms,
    rcodes: /Response codes:\s+(.*)/.exec(out)?.[1]?.trim() ?? "?",
    responseBytes: /Average packet size:\s+(.*)/.exec(out)?.[1]?.trim() ?? "?",
    serverCores: (cpuAfter - cpuBefore) / duration,
  };
}

/** Server CPU per answered query: steadier than qps when the load tool shares the cores. */
function cpuPerQuery(cores: number, qps: number): string {
  return `${((cores / qps) * 1e6).toFixed(1)} µs CPU/query`;
}

function describe(label: string, figures: PerfFigures): string {
  const latency =
    figures.p50Ms === null
      ? `avg ${figures.avgMs.toFixed(3)} ms, max ${figures.maxMs.toFixed(1)} ms`
      : `avg ${figures.avgMs.toFixed(3)} ms, p50 ${figures.p50Ms.toFixed(3)} ms, p99 ${figures.p99Ms?.toFixed(3)} ms, max ${figures.maxMs.toFixed(1)} ms`;
  return (
    `  ${label.padEnd(18)} ${Math.round(figures.qps).toLocaleString("en-US").padStart(7)} qps, ` +
    `${figures.lost} lost of ${figures.completed + figures.lost}, ${latency}, ` +
    `server ${figures.serverCores.toFixed(2)} cores = ${cpuPerQuery(figures.serverCores, figures.qps)}; ` +
    `${figures.rcodes}; ${figures.responseBytes}`
  );
}

async function musterFigures(files: Record<string, string>): Promise<Record<string, PerfFigures>> {
  const cluster = await AgentCluster.create({ defaultTimings: true });
  try {
    await cluster.bootstrap(ids);
    const leader = await cluster.leader();
    for (let n = 1; n <= instances; n++) {
      const answer = await cluster.request(leader, "PUT", `/v1/services/web/instances/w${n}`, {
        address: `127.0.0.${10 + n}`,
        port: 8080 + n,
        tags: n % 2 === 0 ? ["blue", "v1"] : ["v1"],
        // Longer than the benchmark: no instance may expire while dnsperf runs.
        ttl: "1h",
      });
      if (answer.status !== 200) throw new Error(`register w${n}: ${JSON.stringify(answer.body)}`);
    }
    await cluster.converged();
    // dnsperf asks a follower: the node that does no Raft work beyond applying entries.
    const target = ids.find((id) => id !== leader) ?? "n1";
    const agent = cluster.get(target);
    const pid = agent.process?.pid;
    if (pid === undefined) throw new Error(`${target} is not running`);
    const port = Number(agent.dns.slice(agent.dns.lastIndexOf(":") + 1));
    console.log(
      `muster: three agents (default timings), ${instances} instances of web with tags; dnsperf -> ${target} (follower) at ${agent.dns}, ${seconds} s per run`,
    );
    // JIT and answer cache warm-up, not measured.
    await dnsperf(port, files.mixed as string, false, pid, warmupSeconds);
    const figures: Record<string, PerfFigures> = {};
    for (const [name, fixed] of [
      ["mixed", false],
      ["srv", false],
      ["a", false],
      ["mixed", true],
    ] as const) {
      const label = fixed ? `${name} @${fixedQps / 1000}k qps` : `${name} full rate`;
      const result = await dnsperf(port, files[name] as string, fixed, pid);
      figures[fixed ? `${name}-fixed` : name] = result;
      console.log(describe(label, result));
    }
    return figures;
  } finally {
    await cluster.destroy();
  }
}

interface BaselineRow {
  readonly file: string;
  readonly mode: string;
  readonly qps: number;
  readonly lost: number;
  readonly p50: string;
  readonly p99: string;
  readonly cores: string;
  readonly responseBytes: string;
}

/** The peer baseline, run as its README says; null when it is not on this machine. */
async function dnsmasqFigures(): Promise<BaselineRow[] | null> {
  if (baselineScript === "skip" || !existsSync(baselineScript)) {
    console.log(
      baselineScript === "skip"
        ? "dnsmasq baseline: skipped"
        : `dnsmasq baseline: skipped (${baselineScript} not found)`,
    );
    return null;
  }
  const outDir = await mkdtemp(join(tmpdir(), "dns-baseline-"));
  try {
    console.log(`dnsmasq baseline: ${baselineScript} with DURATION=${seconds} REPS=1`);
    const result = await run("bash", [baselineScript], {
      env: {
        DURATION: String(seconds),
        REPS: "1",
        FIXED_QPS: String(fixedQps),
        OUT_DIR: outDir,
      },
      timeoutMs: (seconds + 40) * 4 * 1000 + 60_000,
    });
    const tsv = join(outDir, "results.tsv");
    if (result.code !== 0 || !existsSync(tsv)) {
      console.log(`dnsmasq baseline failed (exit ${result.code}):\n${result.stderr.slice(-2000)}`);
      return null;
    }
    const [head, ...lines] = (await readFile(tsv, "utf8")).trim().split("\n");
    const columns = (head ?? "").split("\t");
    const column = (fields: string[], name: string) => fields[columns.indexOf(name)] ?? "";
    // The script logs each run's packet sizes, in the order of results.tsv.
    const sizes = [...result.stderr.matchAll(/Average packet size:\s+(.*)/g)].map((m) => m[1]);
    return lines.map((line, index) => {
      const fields = line.split("\t");
      return {
        responseBytes: sizes[index]?.trim() ?? "?",
        file: column(fields, "file"),
        mode: column(fields, "mode"),
        qps: Number(column(fields, "qps")),
        lost: Number(column(fields, "lost")),
        p50: column(fields, "p50_ms"),
        p99: column(fields, "p99_ms"),
        cores: column(fields, "dnsmasq_cpu_cores"),
      };
    });
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
}

export async function runDnsBench(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "muster-dnsperf-"));
  try {
    const files: Record<string, string> = {};
    for (const [name, lines] of Object.entries(queryFiles())) {
      files[name] = join(dir, `queries-${name}.txt`);
      await writeFile(files[name], `${lines.join("\n")}\n`);
    }
    try {
      await run("dnsperf", ["-h"], { timeoutMs: 5000 });
    } catch {
      throw new Error("this benchmark needs dnsperf: apt-get install -y dnsperf");
    }
    clockTicks = Number((await run("getconf", ["CLK_TCK"], { timeoutMs: 5000 })).stdout) || 100;
    const muster = await musterFigures(files);
    const dnsmasq = await dnsmasqFigures();
    if (dnsmasq === null) return;
    console.log("dnsmasq (same machine, right after):");
    for (const row of dnsmasq) {
      const latency = row.mode === "fixed" ? `, p50 ${row.p50} ms, p99 ${row.p99} ms` : "";
      console.log(
        `  ${`${row.file} ${row.mode === "fixed" ? `@${fixedQps / 1000}k qps` : "full rate"}`.padEnd(18)} ${Math.round(row.qps).toLocaleString("en-US").padStart(7)} qps, ${row.lost} lost${latency}, dnsmasq ${row.cores} cores = ${cpuPerQuery(Number(row.cores), row.qps)}; ${row.responseBytes}`,
      );
    }
    console.log(
      "muster / dnsmasq, queries per second at full rate (target >= 0.5, no loss); and the inverse ratio of server CPU per query (what qps would be if the server alone were the limit):",
    );
    for (const file of ["mixed", "srv", "a"]) {
      const ours = muster[file];
      const theirs = dnsmasq.find((row) => row.file === file && row.mode === "max");
      if (ours === undefined || theirs === undefined) continue;
      const ratio = ours.qps / theirs.qps;
      const verdict = ratio >= 0.5 && ours.lost === 0 ? "meets" : "misses";
      console.log(
        `  ${file.padEnd(6)} ${ratio.toFixed(2)} (${Math.round(ours.qps).toLocaleString("en-US")} / ${Math.round(theirs.qps).toLocaleString("en-US")}), muster lost ${ours.lost}: ${verdict} the target; ` +
          `CPU per query dnsmasq/muster ${(Number(theirs.cores) / theirs.qps / (ours.serverCores / ours.qps)).toFixed(2)}`,
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
