import { bootstrapState, Raft } from "../raft/core/raft.js";
import type { Message, NodeId } from "../raft/core/types.js";
import { runSeed } from "../test/sim/campaign.js";
import { median } from "./stats.js";

/**
 * Throughput of the pure Raft core: three cores wired together in memory, no disk and
 * no network, so the figure is the core's own cost per committed entry.
 */
function committedPerSecond(batch: number, totalEntries: number): number {
  const ids: NodeId[] = ["n1", "n2", "n3"];
  let seed = 1;
  const cores = new Map(
    ids.map((id) => [
      id,
      new Raft(
        {
          id,
          electionTicks: 10,
          heartbeatTicks: 1,
          randomInt: (bound) => (seed++ * 7919) % bound,
          maxEntriesPerAppend: 1024,
          maxAppendBytes: 1024 * 1024,
          maxInflightAppends: 64,
          maxUncommittedEntries: 1 << 20,
          preVote: true,
          checkQuorum: true,
        },
        bootstrapState(ids),
      ),
    ]),
  );
  const leader = cores.get("n1") as Raft;
  const queue: Message[] = [];
  let applied = 0;
  const drain = () => {
    for (let rounds = 0; rounds < 1_000_000; rounds++) {
      let busy = false;
      for (const [id, core] of cores) {
        if (!core.hasReady()) continue;
        busy = true;
        const ready = core.ready();
        queue.push(...ready.messages, ...ready.messagesAfterPersist);
        if (id === "n1") applied += ready.committedEntries.length;
        core.advance(ready);
      }
      const messages = queue.splice(0);
      for (const message of messages) cores.get(message.to)?.step(message);
      if (!busy && messages.length === 0) return;
    }
    throw new Error("cluster did not go quiet");
  };
  for (let ticks = 0; ticks < 100 && leader.status().role !== "leader"; ticks++) {
    leader.tick();
    drain();
  }
  if (leader.status().role !== "leader") throw new Error("n1 did not become leader");
  const payload = new Uint8Array(100);
  const startApplied = applied;
  const started = performance.now();
  for (let proposed = 0; proposed < totalEntries; proposed += batch) {
    for (let i = 0; i < batch; i++) leader.propose(payload);
    drain();
  }
  const seconds = (performance.now() - started) / 1000;
  return (applied - startApplied) / seconds;
}

function simulatorEventsPerSecond(): number {
  const started = performance.now();
  let events = 0;
  for (let seed = 1; seed <= 20; seed++)
    events += runSeed(seed, seed % 2 === 0 ? 3 : 5, 5000).events;
  return events / ((performance.now() - started) / 1000);
}

export function runRaftCoreBench(): void {
  const runs = 5;
  console.log("Raft core, three in-memory cores, 100-byte commands (median of 5 runs)");
  for (const batch of [1, 16, 256]) {
    const figures = Array.from({ length: runs }, () => committedPerSecond(batch, 50_000));
    console.log(
      `  proposals per ready batch ${String(batch).padStart(3)}: ${Math.round(median(figures)).toLocaleString("en-US")} committed entries/s`,
    );
  }
  const simulator = Array.from({ length: 3 }, simulatorEventsPerSecond);
  console.log(
    `Simulator: ${Math.round(median(simulator)).toLocaleString("en-US")} events/s (median of 3 runs of 20 seeds)`,
  );
}
