import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { TransportCounters } from "../raft/transport/grpc-transport.js";

/** Why the peer transport dropped a message, as the `reason` label says it. */
const dropReasons = {
  "queue-full": "droppedQueueFull",
  "other-cluster": "droppedOtherCluster",
  undecodable: "droppedUndecodable",
  misaddressed: "droppedMisaddressed",
  "not-a-member": "droppedStranger",
} as const satisfies Record<string, keyof TransportCounters>;

/** What the agent reports at /metrics, in one registry per agent. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Histogram({
    name: "muster_http_request_duration_seconds",
    help: "HTTP requests by route, method and status",
    labelNames: ["route", "method", "status"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
    registers: [this.registry],
  });
  readonly heartbeats = new Counter({
    name: "muster_heartbeats_total",
    help: "Heartbeats handled by this node as leader",
    registers: [this.registry],
  });
  readonly evictions = new Counter({
    name: "muster_evictions_total",
    help: "Instances removed after staying critical for deregisterAfter",
    registers: [this.registry],
  });
  readonly leaderChanges = new Counter({
    name: "muster_raft_leader_changes_total",
    help: "Times this node saw the cluster's leader change (including to none)",
    registers: [this.registry],
  });
  readonly aclDenials = new Counter({
    name: "muster_acl_denials_total",
    help: "Requests refused by ACLs, by the resource of the missing permission",
    labelNames: ["resource"] as const,
    registers: [this.registry],
  });

  constructor(
    raft: () => { term: number; commit: number; applied: number; leader: boolean },
    watchers: () => number,
    instancesByStatus: () => Record<string, number>,
    transport: () => TransportCounters,
    /** Whether this node leads and has stopped evicting (engaged on its own, or forced on). */
    evictionsStopped: () => boolean,
  ) {
    new Gauge({
      name: "muster_instances",
      help: "Registered instances by the status lookups see",
      labelNames: ["status"] as const,
      registers: [this.registry],
      collect() {
        for (const [status, count] of Object.entries(instancesByStatus()))
          this.set({ status }, count);
      },
    });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read());
        },
      });
    gauge("muster_raft_term", "Current Raft term", () => raft().term);
    gauge("muster_raft_commit_index", "Raft commit index", () => raft().commit);
    gauge("muster_raft_applied_index", "Index applied to the registry", () => raft().applied);
    gauge("muster_raft_is_leader", "1 on the leader", () => (raft().leader ? 1 : 0));
    gauge("muster_watchers", "Blocking queries and watch streams waiting", watchers);
    gauge(
      "muster_self_preservation_engaged",
      "1 on the leader while self-preservation holds evictions back (engaged or forced on)",
      () => (evictionsStopped() ? 1 : 0),
    );
    // The transport keeps plain counts: copied at each scrape.
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    counter(
      "muster_raft_messages_sent_total",
      "Raft messages queued to peers",
      () => transport().sent,
    );
    counter(
      "muster_raft_messages_received_total",
      "Raft messages from peers handed to Raft",
      () => transport().received,
    );
    counter(
      "muster_raft_reconnects_total",
      "Connections to peers made again after a failure",
      () => transport().reconnects,
    );
    new Counter({
      name: "muster_raft_messages_dropped_total",
      help: "Raft messages dropped by the peer transport, by reason",
      labelNames: ["reason"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        const counts = transport();
        for (const [reason, field] of Object.entries(dropReasons))
          this.inc({ reason }, counts[field]);
      },
    });
  }
}
