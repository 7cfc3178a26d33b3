import { rm } from "node:fs/promises";
import { AgentCluster, eventually } from "../integration/agents.js";
import { LinkProxy } from "./proxy.js";

export const nodeIds = ["n1", "n2", "n3"] as const;

/**
 * Three real agents whose Raft links all go through proxies the test controls: node X
 * reaches node Y through the proxy of the link X->Y (`--raft-dial`), so any link can be cut
 * or slowed in one direction.
 */
export class FaultCluster {
  /** "n1>n2" -> the proxy n1 dials to reach n2. */
  readonly links = new Map<string, LinkProxy>();
  private readonly paused = new Set<string>();
  /** How each node started last: a node that rejoined restarts as it joined. */
  private readonly launch = new Map<string, string>();
  private readonly starts = new Map<string, number>();

  private constructor(readonly agents: AgentCluster) {}

  static async start(
    env: Readonly<Record<string, string>> = {},
    args: readonly string[] = [],
  ): Promise<FaultCluster> {
    const agents = await AgentCluster.create({ env, args });
    const cluster = new FaultCluster(agents);
    for (const id of nodeIds) await agents.define(id);
    for (const from of nodeIds)
      for (const to of nodeIds)
        if (from !== to)
          cluster.links.set(`${from}>${to}`, await LinkProxy.start(agents.get(to).raft));
    for (const id of nodeIds) cluster.launch.set(id, agents.peersArg(nodeIds));
    for (const id of nodeIds) cluster.start(id);
    await agents.leader();
    return cluster;
  }

  private args(id: string, more: readonly string[]): string[] {
    const dial = nodeIds
      .filter((other) => other !== id)
      .map((other) => `${other}=${this.link(id, other).address}`)
      .join(",");
    return [`--raft-dial=${dial}`, ...more];
  }

  /** How many times the node's process was started: stale reads compare within one. */
  incarnation(id: string): number {
    return this.starts.get(id) ?? 0;
  }

  link(from: string, to: string): LinkProxy {
    const proxy = this.links.get(`${from}>${to}`);
    if (proxy === undefined) throw new Error(`no link ${from}>${to}`);
    return proxy;
  }

  /** Cut every link between the groups, in both directions; links inside a group stay. */
  partition(groups: readonly (readonly string[])[]): void {
    const groupOf = new Map<string, number>();
    groups.forEach((group, index) => {
      for (const id of group) groupOf.set(id, index);
    });
    for (const [name, proxy] of this.links) {
      const [from, to] = name.split(">") as [string, string];
      if (groupOf.get(from) !== groupOf.get(to)) proxy.block();
    }
  }

  /** Cut one direction only: `from`'s messages no longer reach `to`. */
  cutOneWay(from: string, to: string): void {
    this.link(from, to).block();
  }

  setDelay(ms: number): void {
    for (const proxy of this.links.values()) proxy.setDelay(ms);
  }

  heal(): void {
    for (const proxy of this.links.values()) {
      proxy.unblock();
      proxy.setDelay(0);
    }
  }

  /** Started and not exited (a node that gave up joining has exited on its own). */
  running(id: string): boolean {
    const child = this.agents.get(id).process;
    return child !== null && child.exitCode === null && child.signalCode === null;
  }

  async kill(id: string): Promise<void> {
    this.paused.delete(id);
    await this.agents.kill(id, "SIGKILL");
  }

  /** SIGTERM and wait for the exit (the agent hands leadership over first). */
  async stop(id: string): Promise<void> {
    this.resume(id);
    await this.agents.kill(id, "SIGTERM");
  }

  start(id: string): void {
    if (this.running(id)) return;
    this.starts.set(id, this.incarnation(id) + 1);
    this.agents.start(id, this.args(id, [this.launch.get(id) ?? this.agents.peersArg(nodeIds)]));
  }

  pause(id: string): void {
    const child = this.agents.get(id).process;
    if (child === null || this.paused.has(id)) return;
    child.kill("SIGSTOP");
    this.paused.add(id);
  }

  resume(id: string): void {
    const child = this.agents.get(id).process;
    if (child !== null && this.paused.has(id)) child.kill("SIGCONT");
    this.paused.delete(id);
  }

  /**
   * Whether every node is a voter, as every running node sees it: one node that lags (just
   * resumed, say) may still show a configuration the cluster has left.
   */
  private async allVoters(): Promise<boolean> {
    for (const id of nodeIds) {
      if (!this.running(id)) continue;
      const answer = await this.agents.request(id, "GET", "/v1/cluster/members").catch(() => null);
      const members = (answer?.body.members ?? []) as { id: string; voter: boolean }[];
      if (members.length !== nodeIds.length || !members.every((member) => member.voter))
        return false;
    }
    return true;
  }

  /**
   * Remove `id` from the cluster, wipe its data and join it again as a new learner; returns
   * once it is a voter again. Only from a cluster of three voters: removing a voter from two
   * would leave no quorum to commit the removal.
   */
  async wipeAndRejoin(id: string): Promise<void> {
    await eventually(
      "three voters",
      async () => ((await this.allVoters()) ? true : undefined),
      60_000,
    );
    await this.kill(id);
    const others = nodeIds.filter((other) => other !== id && this.running(other));
    await eventually(
      `removal of ${id}`,
      async () => {
        for (const other of others) {
          const answer = await this.agents
            .request(other, "DELETE", `/v1/cluster/members/${id}`)
            .catch(() => null);
          if (answer !== null && answer.status === 200) return true;
          if (answer !== null)
            throw new Error(`${other}: ${answer.status} ${JSON.stringify(answer.body)}`);
        }
        return undefined;
      },
      30_000,
    );
    await rm(this.agents.get(id).dataDir, { recursive: true, force: true });
    const via = others[0] ?? "n1";
    this.launch.set(id, `--join=${this.agents.get(via).http}`);
    this.start(id);
    await eventually(
      `${id} to be a voter again`,
      async () => {
        if (!this.running(id)) throw new Error(`${id} exited while joining (see its log)`);
        return (await this.allVoters()) ? true : undefined;
      },
      90_000,
    );
  }

  /** Heal, resume and start every node; wait until all agree on a leader and one state. */
  async recover(): Promise<{ appliedIndex: number; hash: string }> {
    this.heal();
    for (const id of nodeIds) {
      this.resume(id);
      this.start(id);
    }
    await this.agents.leader(60_000);
    return this.agents.converged(60_000);
  }

  async destroy(keep?: boolean): Promise<void> {
    for (const id of nodeIds) this.resume(id);
    await this.agents.destroy(keep);
    for (const proxy of this.links.values()) await proxy.close();
  }
}
