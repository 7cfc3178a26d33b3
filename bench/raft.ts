import { fileURLToPath } from "node:url";
import { AgentCluster, eventually } from "../test/integration/agents.js";
import { type CpuTime, cpuTime, perOperation } from "./cpu.js";
import { median } from "./stats.js";
import { perSecond, wrk } from "./wrk.js";

/**
 * Three real agents (LevelDB with fsync, gRPC between peers, default timings) on 127.0.0.1.
 * Each proposal is an HTTP registration of about 100 bytes sent to the leader by wrk, the
 * tool etcd's baseline uses; it counts when the leader answers 200, that is once the entry
 * is committed on a quorum and applied. Then the same load on a one-agent cluster: an
 * estimate of the ceiling for three, whose leader does all that one agent does and
 * replicates besides (three batch differently, so it is no proof).
 */

const ids = ["n1", "n2", "n3"];
const durationSeconds = 5;
const putScript = fileURLToPath(new URL("./raft-put.lua", import.meta.url));

/** Leader kill -9 to the next registration a survivor acknowledges. */
async function failoverGapMs(cluster: AgentCluster): Promise<number> {
  const leader = await cluster.leader();
  const survivor = ids.find((id) => id !== leader) ?? "n1";
  await cluster.kill(leader, "SIGKILL");
  const killed = performance.now();
  await eventually(
    "a write after failover",
    async () => {
      const answer = await cluster.request(survivor, "PUT", "/v1/services/failover/instances/f", {
        address: "10.0.0.1",
        port: 1,
      });
      return answer.status === 200 ? true : undefined;
    },
    30_000,
  );
  const gap = performance.now() - killed;
  cluster.start(leader, [cluster.peersArg(ids)]);
  await cluster.converged(30_000);
  return gap;
}

/** wrk at each level against the leader, with the CPU each agent spent per commit. */
async function proposerLevels(cluster: AgentCluster, levels: readonly number[]): Promise<void> {
  const leader = await cluster.leader();
  const followers = cluster.running().filter((agent) => agent.id !== leader);
  const pids = [cluster.get(leader), ...followers].map((agent) => {
    const pid = agent.process?.pid;
    if (pid === undefined) throw new Error(`agent ${agent.id} is not running`);
    return pid;
  });
  for (const proposers of levels) {
    const before: CpuTime[] = pids.map(cpuTime);
    const result = wrk({
      url: `http://${cluster.get(leader).http}`,
      connections: proposers,
      durationSeconds,
      script: putScript,
    });
    const cpu = pids.map(
      (pid, k) =>
        `${k === 0 ? "leader" : "follower"} ${perOperation(before[k] as CpuTime, cpuTime(pid), result.requests)}`,
    );
    console.log(
      `  ${String(proposers).padStart(3)} proposers: ${perSecond(result.perSecond)} commits/s, p50 ${result.p50}, p99 ${result.p99}; CPU per commit: ${cpu.join(", ")}`,
    );
  }
}

export async function runRaftBench(): Promise<void> {
  const cluster = await AgentCluster.create({ defaultTimings: true });
  try {
    await cluster.bootstrap(ids);
    console.log(
      `Three agents, fsync on, wrk PUT registrations of ~100 bytes to the leader, ${durationSeconds} s per level`,
    );
    await proposerLevels(cluster, [1, 16, 256]);
    const gaps: number[] = [];
    for (let trial = 0; trial < 5; trial++) gaps.push(await failoverGapMs(cluster));
    const trials = gaps.map((gap) => Math.round(gap)).join(", ");
    console.log(
      `Failover gap (leader kill -9 to next acknowledged write), 5 trials: median ${Math.round(median(gaps))} ms [${trials}]`,
    );
  } finally {
    await cluster.destroy();
  }
  const single = await AgentCluster.create({ defaultTimings: true });
  try {
    await single.bootstrap(["n1"]);
    console.log("One agent (no replication: an estimate of the ceiling for three), the same load");
    await proposerLevels(single, [16, 256]);
  } finally {
    await single.destroy();
  }
}
