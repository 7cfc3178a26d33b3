import type { FaultCluster } from "./fault-cluster.js";
import { nodeIds } from "./fault-cluster.js";
import type { Random } from "./random.js";

export const faultKinds = [
  "partition-leader",
  "partition-minority",
  "partition-bridge",
  "one-way",
  "delay",
  "kill",
  "kill-leader",
  "pause",
  "restart",
  "wipe-rejoin",
] as const;
export type FaultKind = (typeof faultKinds)[number];

async function currentLeader(cluster: FaultCluster): Promise<string | null> {
  for (const id of nodeIds) {
    if (!cluster.running(id)) continue;
    const answer = await cluster.agents.request(id, "GET", "/v1/cluster/leader").catch(() => null);
    const leader = (answer?.body.leader as { id?: string } | null | undefined)?.id;
    if (leader !== undefined) return leader;
  }
  return null;
}

function others(id: string): string[] {
  return nodeIds.filter((other) => other !== id);
}

/**
 * Inject one fault, hold it for a while, then undo it; returns what it did.
 */
export async function injectFault(
  cluster: FaultCluster,
  random: Random,
  kind: FaultKind,
  holdMs: number,
): Promise<string> {
  const hold = () => new Promise((resolve) => setTimeout(resolve, holdMs));
  const victim = random.pick(nodeIds);
  switch (kind) {
    case "partition-leader": {
      const leader = (await currentLeader(cluster)) ?? victim;
      cluster.partition([[leader], others(leader)]);
      await hold();
      cluster.heal();
      return `isolated ${leader}`;
    }
    case "partition-minority":
      cluster.partition([[victim], others(victim)]);
      await hold();
      cluster.heal();
      return `isolated ${victim}`;
    case "partition-bridge": {
      // A sees B, B sees C, C does not see A: B is the bridge.
      const [a, c] = others(victim) as [string, string];
      cluster.link(a, c).block();
      cluster.link(c, a).block();
      await hold();
      cluster.heal();
      return `cut ${a}-${c}, ${victim} bridges`;
    }
    case "one-way": {
      const leader = (await currentLeader(cluster)) ?? victim;
      // The leader's messages stop reaching one follower, whose messages still arrive.
      const follower = random.pick(others(leader));
      cluster.cutOneWay(leader, follower);
      await hold();
      cluster.heal();
      return `cut ${leader}>${follower}`;
    }
    case "delay": {
      const ms = random.between(20, 150);
      cluster.setDelay(ms);
      await hold();
      cluster.heal();
      return `${ms} ms on every link`;
    }
    case "kill":
    case "kill-leader": {
      const target = kind === "kill" ? victim : ((await currentLeader(cluster)) ?? victim);
      await cluster.kill(target);
      await hold();
      cluster.start(target);
      return `killed ${target}`;
    }
    case "pause":
      cluster.pause(victim);
      await hold();
      cluster.resume(victim);
      return `paused ${victim}`;
    case "restart":
      await cluster.stop(victim);
      cluster.start(victim);
      await hold();
      return `restarted ${victim}`;
    case "wipe-rejoin":
      await cluster.wipeAndRejoin(victim);
      await hold();
      return `wiped and rejoined ${victim}`;
  }
}
