import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { AgentCluster } from "../test/integration/agents.js";
import { httpFloorLatencies } from "./http-floor.js";
import { keepAliveHeartbeats } from "./keepalive-load.js";
import { median, percentile } from "./stats.js";
import { watchAll, watchBlocking, watchStream } from "./watchers.js";
import { perSecond, wrk } from "./wrk.js";

/**
 * The registry's own figures on three real agents (LevelDB with fsync, gRPC between peers,
 * default timings) on 127.0.0.1, driven by wrk like etcd's baseline: registrations,
 * heartbeats, lookups, and how long watchers take to see a change. When etcd is installed,
 * each round of registrations is followed by the etcd baseline at the same levels, and the
 * ratios compare medians of the rounds.
 *
 * Each round of registrations runs on a cluster of its own and adds at most
 * `registeredIdsPerThread` ids per wrk thread and level. At 10,000 instances the leader
 * lost its lease under 256-connection lookups, so the other figures are taken on a
 * separate, small registry.
 */

const ids = ["n1", "n2", "n3"];
const durationSeconds = 5;
const levels = [16, 256];
/** Rounds of registrations, each followed by etcd's baseline. */
const pairedRounds = 3;
const registeredIdsPerThread = 3000;
/**
 * Registrations before the measured ones, on each fresh cluster: the agents' first seconds
 * run unoptimized code (a fresh cluster's first 5 s ran at 0.4-0.8 of its third).
 */
const warmUpSeconds = 10;
/** The registry size at which registrations are measured again. */
const largeRegistry = 50_000;
const heartbeatInstances = 1000;
const watcherCount = 1000;
const watchedChanges = 20;
const warmupChanges = 3;
const registerScript = fileURLToPath(new URL("./registry-register.lua", import.meta.url));
const heartbeatScript = fileURLToPath(new URL("./registry-heartbeat.lua", import.meta.url));
/** KeepAlive streams (one connection each) and the heartbeats each keeps in flight. */
const keepAliveLevels = [
  { streams: 1, inFlight: 16 },
  { streams: 16, inFlight: 16 },
];
const etcdScript =
  process.env.ETCD_BASELINE ??
  fileURLToPath(new URL("../../shared/bench/etcd-baseline.sh", import.meta.url));

type Rates = Map<string, number>;

function instanceBody(port: number, ttl: string) {
  return { address: "10.1.2.3", port, tags: ["bench"], ttl };
}

async function registerAll(
  cluster: AgentCluster,
  node: string,
  service: string,
  count: number,
  ttl: string,
): Promise<void> {
  for (let first = 0; first < count; first += 100) {
    const batch = Array.from({ length: Math.min(100, count - first) }, (_, k) => first + k);
    const answers = await Promise.all(
      batch.map((n) =>
        cluster.request(
          node,
          "PUT",
          `/v1/services/${service}/instances/${service}-${n}`,
          instanceBody(1000 + n, ttl),
        ),
      ),
    );
    const failed = answers.find((answer) => answer.status !== 200);
    if (failed !== undefined) throw new Error(`registration failed: ${JSON.stringify(failed)}`);
  }
}

function row(label: string, connections: number, figures: ReturnType<typeof wrk>): string {
  return `  ${label} ${String(connections).padStart(3)} conns: ${perSecond(figures.perSecond)}/s, p50 ${figures.p50}, p99 ${figures.p99}`;
}

async function instanceCount(cluster: AgentCluster, node: string): Promise<number> {
  const list = await cluster.request(node, "GET", "/v1/services");
  const services = list.body.services as { instances: number }[];
  return services.reduce((sum, service) => sum + service.instances, 0);
}

async function registrations(cluster: AgentCluster, rates: Rates): Promise<void> {
  const leader = await cluster.leader();
  const url = `http://${cluster.get(leader).http}`;
  const warm = wrk({
    url,
    connections: levels[0] as number,
    durationSeconds: warmUpSeconds,
    script: registerScript,
    env: { PREFIX: "warm", KEYSPACE: "500" },
  });
  console.log(
    `Registrations (PUT, ~100-byte body, a new id each up to ${registeredIdsPerThread.toLocaleString("en-US")} per wrk thread) to the leader ${leader}, after ${warmUpSeconds} s of them at ${levels[0]} conns (${perSecond(warm.perSecond)}/s, not counted)`,
  );
  for (const connections of levels) {
    const figures = wrk({
      url,
      connections,
      durationSeconds,
      script: registerScript,
      env: { PREFIX: `c${connections}`, KEYSPACE: String(registeredIdsPerThread) },
    });
    rates.set(`register/${connections}`, figures.perSecond);
    console.log(row("", connections, figures));
  }
  const total = await instanceCount(cluster, leader);
  console.log(`  registry now holds ${total.toLocaleString("en-US")} instances`);
}

/** Registrations again once the registry holds `largeRegistry` instances (TTL 24h each). */
async function registrationsAtScale(cluster: AgentCluster): Promise<void> {
  const leader = await cluster.leader();
  const url = `http://${cluster.get(leader).http}`;
  const [fillConnections, connections] = [levels[1] as number, levels[0] as number];
  let total = 0;
  for (let run = 0; run < 10 && total < largeRegistry; run++) {
    wrk({
      url,
      connections: fillConnections,
      durationSeconds,
      script: registerScript,
      // Each run of wrk counts from 0 again: a prefix of its own makes its ids new.
      env: { PREFIX: `fill${run}`, KEYSPACE: String(largeRegistry) },
    });
    total = await instanceCount(cluster, leader);
  }
  const figures = wrk({
    url,
    connections,
    durationSeconds,
    script: registerScript,
    env: { PREFIX: "large", KEYSPACE: String(registeredIdsPerThread) },
  });
  console.log(
    `Registrations into a registry of ${total.toLocaleString("en-US")} instances, new ids, on ${leader}`,
  );
  console.log(row("", connections, figures));
}

async function heartbeats(cluster: AgentCluster, rates: Rates): Promise<void> {
  const leader = await cluster.leader();
  await registerAll(cluster, leader, "hb", heartbeatInstances, "30s");
  console.log(
    `Heartbeats (PUT .../heartbeat, body {}) over ${heartbeatInstances} instances on ${leader}`,
  );
  for (const connections of levels) {
    const figures = wrk({
      url: `http://${cluster.get(leader).http}`,
      connections,
      durationSeconds,
      script: heartbeatScript,
      env: { COUNT: String(heartbeatInstances) },
    });
    rates.set(`heartbeat/${connections}`, figures.perSecond);
    console.log(row("", connections, figures));
  }
  console.log(
    `Heartbeats over gRPC KeepAlive streams (one connection each) over the same instances on ${leader}`,
  );
  for (const level of keepAliveLevels) {
    const figures = await keepAliveHeartbeats({
      address: cluster.get(leader).grpc,
      service: "hb",
      instances: heartbeatInstances,
      durationSeconds,
      ...level,
    });
    rates.set(`keepalive/${level.streams * level.inFlight}`, figures.perSecond);
    console.log(
      `  ${String(level.streams).padStart(3)} streams x ${level.inFlight} in flight: ${perSecond(figures.perSecond)}/s, p50 ${figures.p50.toFixed(2)} ms, p99 ${figures.p99.toFixed(2)} ms`,
    );
  }
  // Deregistered, so that their TTLs do not run out during the next phases.
  for (let n = 0; n < heartbeatInstances; n++) {
    const answer = await cluster.request(leader, "DELETE", `/v1/services/hb/instances/hb-${n}`);
    if (answer.status !== 200) throw new Error(`deregistration failed: ${JSON.stringify(answer)}`);
  }
}

async function lookups(cluster: AgentCluster, rates: Rates): Promise<void> {
  const leader = await cluster.leader();
  const follower = ids.find((id) => id !== leader) ?? "n1";
  await registerAll(cluster, leader, "lookup", 10, "24h");
  console.log("Lookups (GET /v1/services/lookup, 10 instances)");
  for (const [role, node] of [
    ["leader", leader],
    ["follower", follower],
  ] as const) {
    for (const consistency of ["default", "stale"]) {
      for (const connections of levels) {
        const figures = wrk({
          url: `http://${cluster.get(node).http}/v1/services/lookup?consistency=${consistency}`,
          connections,
          durationSeconds,
        });
        rates.set(`lookup-${role}-${consistency}/${connections}`, figures.perSecond);
        console.log(row(`${role} ${consistency.padEnd(7)}`, connections, figures));
      }
    }
  }
  const now = await cluster.leader();
  if (now !== leader) console.log(`  the leader moved from ${leader} to ${now} during the lookups`);
}

/** Blocking queries and watch streams parked on all nodes together. */
async function parked(cluster: AgentCluster): Promise<number> {
  const counts = await Promise.all(
    ids.map(async (id) => {
      const response = await fetch(`http://${cluster.get(id).http}/metrics`);
      return Number(/^muster_watchers (\d+)/m.exec(await response.text())?.[1] ?? 0);
    }),
  );
  return counts.reduce((sum, count) => sum + count, 0);
}

interface WatchTimes {
  /** Per (watcher, change), in ms: from the PUT's 200 to the watcher seeing the new index. */
  readonly fromAnswer: number[];
  /** The same from when the PUT was sent: commit plus notification. */
  readonly fromSend: number[];
  /** Per change: the PUT's own latency. */
  readonly put: number[];
}

/**
 * `watcherCount` watchers spread over the three nodes; `warmupChanges` registrations not
 * measured (the first wakes of a fresh process run unoptimized code), then `watchedChanges`
 * measured ones, one at a time once every watcher is parked again. The leader wakes its own
 * watchers in the same step as it answers the PUT, so some see the change before the writer
 * does.
 */
async function watchLatencies(
  cluster: AgentCluster,
  leader: string,
  kind: "blocking" | "stream",
): Promise<WatchTimes> {
  const start = await cluster.request(leader, "GET", "/v1/services/watched");
  const group = watchAll(watcherCount, start.body.index as number, (watcher, n) => {
    const address = cluster.get(ids[n % ids.length] as string).http;
    return kind === "blocking"
      ? watchBlocking(watcher, address, "/v1/services/watched")
      : watchStream(watcher, address, "/v1/watch/services/watched");
  });
  const { watchers, until } = group;
  try {
    const times: WatchTimes = { fromAnswer: [], fromSend: [], put: [] };
    for (let change = 0; change < warmupChanges + watchedChanges; change++) {
      await until(
        "every watcher to be parked",
        async () => (await parked(cluster)) >= watcherCount,
      );
      const sent = performance.now();
      const response = await fetch(
        `http://${cluster.get(leader).http}/v1/services/watched/instances/${kind}-${change}`,
        {
          method: "PUT",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(instanceBody(2000 + change, "24h")),
        },
      );
      const acknowledged = performance.now();
      if (response.status !== 200) throw new Error(`registration answered ${response.status}`);
      const index = ((await response.json()) as { modifyIndex: number }).modifyIndex;
      await until(`every watcher to see index ${index}`, () =>
        watchers.every((watcher) => watcher.seen >= index),
      );
      if (change < warmupChanges) continue;
      times.put.push(acknowledged - sent);
      for (const watcher of watchers) {
        times.fromAnswer.push(watcher.seenAt - acknowledged);
        times.fromSend.push(watcher.seenAt - sent);
      }
    }
    return times;
  } finally {
    group.close();
  }
}

async function watches(cluster: AgentCluster, rates: Rates): Promise<void> {
  const leader = await cluster.leader();
  await registerAll(cluster, leader, "watched", 10, "24h");
  console.log(
    `Watch latency: ${watcherCount} watchers over ${ids.length} nodes, ${watchedChanges} registrations one at a time (${(watcherCount * watchedChanges).toLocaleString("en-US")} pairs)`,
  );
  for (const [kind, label] of [
    ["blocking", "blocking queries (keep-alive)"],
    ["stream", "SSE streams"],
  ] as const) {
    const times = await watchLatencies(cluster, leader, kind);
    const ms = (values: number[], p: number) => `${percentile(values, p).toFixed(1)} ms`;
    rates.set(`watch-${kind}-p99`, percentile(times.fromAnswer, 99));
    console.log(
      `  ${label}: from the PUT's 200 p50 ${ms(times.fromAnswer, 50)}, p99 ${ms(times.fromAnswer, 99)} (min ${ms(times.fromAnswer, 0)}); from the PUT sent p50 ${ms(times.fromSend, 50)}, p99 ${ms(times.fromSend, 99)}; PUT median ${ms(times.put, 50)}`,
    );
  }
  const view = await cluster.request(leader, "GET", "/v1/services/watched");
  for (const [kind, label] of [
    ["blocking", "blocking queries"],
    ["stream", "SSE streams"],
  ] as const) {
    const floor = await httpFloorLatencies({
      kind,
      servers: ids.length,
      watcherCount,
      changes: watchedChanges,
      warmup: warmupChanges,
      body: JSON.stringify(view.body),
    });
    rates.set(`watch-${kind}-floor-p99`, percentile(floor, 99));
    console.log(
      `  floor: the same ${label} against ${ids.length} bare node:http processes answering from memory: p50 ${percentile(floor, 50).toFixed(1)} ms, p99 ${percentile(floor, 99).toFixed(1)} ms`,
    );
  }
}

/** etcd-baseline.sh at the same levels and duration; rates keyed like muster's, or why not. */
function etcdBaseline(): Rates | string {
  if (!existsSync(etcdScript)) return `no etcd baseline script at ${etcdScript}`;
  if (spawnSync("etcd", ["--version"]).error !== undefined)
    return "etcd is not installed (apt-get install -y etcd-server etcd-client)";
  const base = mkdtempSync(join(tmpdir(), "etcd-baseline-"));
  try {
    const env = {
      ...process.env,
      BASE: base,
      OUT_DIR: join(base, "results"),
      DURATION: String(durationSeconds),
      REPS: "1",
      CONNS: levels.join(" "),
      FAILOVER_TRIALS: "0",
    };
    const run = spawnSync("bash", [etcdScript], { env, encoding: "utf8", timeout: 600_000 });
    if (run.status !== 0) throw new Error(`etcd baseline failed:\n${run.stderr.slice(-2000)}`);
    const rates: Rates = new Map();
    const lines = readFileSync(join(base, "results", "results.tsv"), "utf8")
      .trim()
      .split("\n");
    for (const line of lines.slice(1)) {
      const [, kind, conns, , rps, , , p99, , non2xx] = line.split("\t");
      if (non2xx !== "0") throw new Error(`etcd ${kind} at ${conns} conns: ${non2xx} non-2xx`);
      rates.set(`${kind}/${conns}`, Number(rps));
      rates.set(`${kind}-p99/${conns}`, Number(p99));
    }
    return rates;
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

function ratio(muster: number | undefined, etcd: number | undefined): string {
  return muster === undefined || etcd === undefined ? "?" : (muster / etcd).toFixed(2);
}

function compare(muster: Rates, etcd: Rates): void {
  console.log(
    `etcd 3.4 baseline, medians of the rounds (${durationSeconds} s per run, leader); muster's registrations are medians too:`,
  );
  for (const connections of levels) {
    const figures = ["put", "range-lin", "range-ser"]
      .map((kind) => {
        const rate = perSecond(etcd.get(`${kind}/${connections}`) ?? Number.NaN);
        return `${kind} ${rate}/s (p99 ${etcd.get(`${kind}-p99/${connections}`)} ms)`;
      })
      .join(", ");
    console.log(`  ${String(connections).padStart(3)} conns: ${figures}`);
  }
  console.log("Ratios muster / etcd:");
  for (const connections of levels) {
    const at = (key: string) => muster.get(`${key}/${connections}`);
    const serializable = etcd.get(`range-ser/${connections}`);
    const lookupRatios = ["leader-default", "leader-stale", "follower-default", "follower-stale"]
      .map((key) => `${key} ${ratio(at(`lookup-${key}`), serializable)}`)
      .join(", ");
    console.log(
      `  ${String(connections).padStart(3)} conns: registrations/put ${ratio(at("register"), etcd.get(`put/${connections}`))}; lookups/serializable range: ${lookupRatios}`,
    );
  }
}

function verdicts(muster: Rates, etcd: Rates | string): void {
  const met = (ok: boolean) => (ok ? "met" : "NOT met");
  const best = (key: string) => Math.max(...levels.map((c) => muster.get(`${key}/${c}`) ?? 0));
  console.log("Targets:");
  if (typeof etcd !== "string") {
    const atEvery = (key: string, etcdKey: string) =>
      levels.every((c) => (muster.get(`${key}/${c}`) ?? 0) >= (etcd.get(`${etcdKey}/${c}`) ?? 0));
    console.log(
      `  registrations >= etcd puts at ${levels.join(" and ")} conns: ${met(atEvery("register", "put"))}`,
    );
    for (const key of ["leader-default", "leader-stale", "follower-default", "follower-stale"]) {
      console.log(
        `  lookups (${key}) >= etcd serializable ranges at ${levels.join(" and ")} conns: ${met(atEvery(`lookup-${key}`, "range-ser"))}`,
      );
    }
  }
  const overHttp = best("heartbeat");
  const overKeepAlive = Math.max(
    ...keepAliveLevels.map((l) => muster.get(`keepalive/${l.streams * l.inFlight}`) ?? 0),
  );
  console.log(
    `  heartbeats >= 50,000/s: ${met(Math.max(overHttp, overKeepAlive) >= 50_000)} (best ${perSecond(overKeepAlive)}/s over KeepAlive streams, ${perSecond(overHttp)}/s over HTTP)`,
  );
  for (const kind of ["blocking", "stream"]) {
    const p99 = muster.get(`watch-${kind}-p99`) ?? Number.POSITIVE_INFINITY;
    const floor = muster.get(`watch-${kind}-floor-p99`) ?? Number.NaN;
    console.log(
      `  watch p99 < 50 ms (${kind}): ${met(p99 < 50)} (${p99.toFixed(1)} ms; bare node:http floor ${floor.toFixed(1)} ms)`,
    );
  }
}

/** A fresh three-agent cluster for `run`, stopped afterwards. */
async function withCluster(run: (cluster: AgentCluster) => Promise<void>): Promise<void> {
  const cluster = await AgentCluster.create({ defaultTimings: true });
  try {
    await cluster.bootstrap(ids);
    await cluster.leader(30_000);
    await run(cluster);
  } finally {
    await cluster.destroy();
  }
}

/** Per key, the median over rounds. */
function medianRates(rounds: readonly Rates[]): Rates {
  const keys = new Set(rounds.flatMap((round) => [...round.keys()]));
  return new Map(
    [...keys].map((key) => [
      key,
      median(rounds.flatMap((round) => (round.has(key) ? [round.get(key) as number] : []))),
    ]),
  );
}

export async function runRegistryBench(): Promise<void> {
  console.log(`Three agents, fsync on, default timings, wrk -t2, ${durationSeconds} s per run`);
  // Registrations and etcd's baseline take turns, so that a slow spell of this shared machine
  // falls on both; the figures compared are the medians of the rounds.
  const musterRounds: Rates[] = [];
  const etcdRounds: Rates[] = [];
  let noEtcd: string | null = null;
  for (let round = 1; round <= pairedRounds; round++) {
    console.log(`Round ${round} of ${pairedRounds}:`);
    const mine: Rates = new Map();
    await withCluster((cluster) => registrations(cluster, mine));
    musterRounds.push(mine);
    if (noEtcd !== null) continue;
    const etcd = etcdBaseline();
    if (typeof etcd === "string") {
      noEtcd = etcd;
      continue;
    }
    etcdRounds.push(etcd);
    const puts = levels.map(
      (c) =>
        `${c} conns ${perSecond(etcd.get(`put/${c}`) ?? Number.NaN)}/s (registrations/put ${ratio(mine.get(`register/${c}`), etcd.get(`put/${c}`))})`,
    );
    console.log(`  etcd puts right after: ${puts.join(", ")}`);
  }
  const rates = medianRates(musterRounds);
  await withCluster(registrationsAtScale);
  await withCluster(async (cluster) => {
    await heartbeats(cluster, rates);
    await lookups(cluster, rates);
    await watches(cluster, rates);
  });
  const etcd = noEtcd ?? medianRates(etcdRounds);
  if (typeof etcd === "string") console.log(`No etcd comparison: ${etcd}`);
  else compare(rates, etcd);
  verdicts(rates, etcd);
}
