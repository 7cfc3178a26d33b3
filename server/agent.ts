import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import type { Server as HttpsServer } from "node:https";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { RegistryDnsView } from "../dns/registry-view.js";
import { DnsServer } from "../dns/server.js";
import { isMember, isVoter } from "../raft/core/config.js";
import { bootstrapState, joiningState } from "../raft/core/raft.js";
import { RaftError, RaftNode } from "../raft/node.js";
import { LevelStorage } from "../raft/storage/level-storage.js";
import { GrpcTransport } from "../raft/transport/grpc-transport.js";
import { AclResolver, hashSecret } from "./acl/resolver.js";
import { describePermission, type Permission } from "./acl/rules.js";
import { ApiFetch, describeFetchFailure } from "./api-fetch.js";
import type { AgentConfig } from "./config.js";
import { MusterError } from "./errors.js";
import {
  encodeCommand,
  type InstanceRef,
  type InstanceStatus,
  type MemberAddresses,
  type RegistryCommand,
  type RegistryResult,
  RegistryStateMachine,
  type SelfPreservationMode,
} from "./fsm/registry.js";
import { GrpcApi } from "./grpc/api.js";
import { buildHttpApp, fromRaftError } from "./http/app.js";
import { tokenOf } from "./http/authorize.js";
import { forwardedHeader, forwardingKeyHeader, WatchQuota } from "./http/limits.js";
import { validHeartbeatBody } from "./http/schemas.js";
import { clientGone } from "./http/streams.js";
import { Lessor, type SelfPreservationState } from "./lessor.js";
import { Metrics } from "./metrics.js";
import { httpsSecureContextOptions, TlsCredentials } from "./tls.js";
import { Watches } from "./watches.js";

const proposeTimeoutMs = 5000;
/** Where the first leader keeps a management secret it made (in its data directory, 0600). */
const bootstrapSecretFile = "acl-bootstrap-token";
const joinTimeoutMs = 10_000;
/**
 * How long a joining node keeps asking while the cluster cannot take it yet (electing, a
 * member unreachable): like a restart under a supervisor, without the restart.
 */
const joinRetryMs = 60_000;
/** Failures of the network rather than of the request: worth asking again. */
const transientFetchFailures = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_CLOSED",
]);
/** Appends stay well under the peers' message limit (4 MiB), whatever the entries hold. */
const maxAppendBytes = 1024 * 1024;
/** How long a write may wait for a leader before it fails with 503. */
const leaderWaitMs = 5000;
/** A learner this close to the leader's commit index is promoted to voter. */
const promotionLagEntries = 100;
/** How often the leader's lessor looks for TTLs that ran out: each look visits every instance. */
const lessorIntervalMs = 250;
export type Consistency = "stale" | "default" | "linearizable";

/**
 * One `muster agent`: Raft over LevelDB and gRPC, the registry state machine, and the HTTP
 * API. Any node takes any request; writes that reach a follower are forwarded to the leader.
 */
/** `GET /v1/cluster/leader`. */
export interface LeaderInfo {
  readonly leader: { id: string; raft: string | null; http: string | null } | null;
  readonly term: number;
}

/** `GET /v1/cluster/members`. */
export interface MembersInfo {
  readonly term: number;
  readonly commitIndex: number;
  readonly members: readonly {
    id: string;
    raft: string | null;
    http: string | null;
    grpc: string | null;
    dns: string | null;
    role: "leader" | "follower" | "learner";
    voter: boolean;
  }[];
}

export class Agent {
  readonly fsm = new RegistryStateMachine();
  readonly watches = new Watches();
  readonly watchQuota: WatchQuota;
  readonly metrics: Metrics;
  readonly acl: AclResolver;
  private readonly lessor: Lessor;
  private lessorTimer: NodeJS.Timeout | null = null;
  private knownLeader: string | null = null;
  private lessorTerm = 0;
  private node!: RaftNode<RegistryResult>;
  private transport!: GrpcTransport;
  private http!: FastifyInstance;
  private dns!: DnsServer;
  private grpc!: GrpcApi;
  private housekeeping: NodeJS.Timeout | null = null;
  private housekeepingRound = false;
  private stopping = false;

  private constructor(
    readonly config: AgentConfig,
    private readonly logger: Logger,
    private clusterId: string,
    private readonly tls: TlsCredentials | null,
    /** Requests to other members' HTTP APIs (forwarded writes, joining). */
    private readonly api: ApiFetch,
  ) {
    this.watchQuota = new WatchQuota(config);
    this.acl = new AclResolver(config.aclEnabled, this.fsm.acl);
    this.metrics = new Metrics(
      () => {
        const status = this.node.status();
        return {
          term: status.term,
          commit: status.commit,
          applied: status.applied,
          leader: status.role === "leader",
        };
      },
      () => this.watches.size,
      () => {
        const counts: Record<InstanceStatus, number> = {
          passing: 0,
          warning: 0,
          critical: 0,
          maintenance: 0,
        };
        for (const instance of this.fsm.allInstances()) counts[instance.effectiveStatus]++;
        return counts;
      },
      () => this.transport.counters,
      () => this.lessor.isLeading && this.lessor.selfPreservation().engaged,
    );
    this.lessor = new Lessor(this.fsm, {
      // Election timeouts are randomized up to twice the configured one.
      graceMs: config.ttlCheckpointIntervalMs + 2 * config.electionTimeoutMs,
      checkpointIntervalMs: config.ttlCheckpointIntervalMs,
      // A tick later than due by an election timeout: followers would have started an
      // election meanwhile, so a leader back from such a gap is in the place of a new one.
      stallMs: lessorIntervalMs + config.electionTimeoutMs,
      deregisterAfterMs: config.deregisterAfterMs,
      selfPreservationThreshold: config.selfPreservationThreshold,
      selfPreservationMinInstances: config.selfPreservationMinInstances,
      now: () => performance.now(),
      wallClock: () => Date.now(),
      propose: (command) => this.propose(command),
      onSelfPreservation: (engaged, atRisk, total) => {
        this.logger.warn(
          {
            event: engaged ? "self-preservation-engaged" : "self-preservation-released",
            atRisk,
            total,
          },
          engaged
            ? "self-preservation: %d of %d instances at risk, evictions stopped"
            : "self-preservation released: %d of %d instances at risk",
          atRisk,
          total,
        );
      },
      onEvicted: (count) => this.metrics.evictions.inc(count),
      onStall: (gapMs, graced) =>
        this.logger.warn(
          { event: "lessor-stalled", gapMs: Math.round(gapMs), graced },
          "this node could not run for %d ms: %d countdowns that ran out meanwhile get a new leader's grace",
          Math.round(gapMs),
          graced,
        ),
    });
  }

  /** The shortest TTL a registration may ask for: 1.5 x the longest election timeout, at least 2 s. */
  get minTtlMs(): number {
    return Math.max(2000, Math.ceil(1.5 * 2 * this.config.electionTimeoutMs));
  }

  static async start(config: AgentConfig, logger: Logger): Promise<Agent> {
    // Bad certificate files stop the start here, before anything binds.
    const tls = config.tls === null ? null : TlsCredentials.load(config.tls);
    const api = new ApiFetch(tls?.current ?? null);
    await mkdir(config.dataDir, { recursive: true });
    const clusterIdFile = join(config.dataDir, "cluster-id");
    const stored = await readFile(clusterIdFile, "utf8").catch(() => null);
    let clusterId = stored ?? config.clusterId;
    let joinPeers = new Map<string, string>();
    if (stored !== null && config.clusterId !== "" && stored !== config.clusterId) {
      throw new Error(`${config.dataDir} belongs to cluster ${stored}, not ${config.clusterId}`);
    }
    // A node that already holds a log is a member: it restarts, it does not join again.
    if (stored === null && config.join !== null) {
      const joined = await Agent.joinCluster(config, config.join, api, logger);
      clusterId = joined.clusterId;
      joinPeers = joined.peers;
    }
    if (stored === null) await writeFile(clusterIdFile, clusterId);
    const agent = new Agent(config, logger, clusterId, tls, api);
    await agent.open(joinPeers);
    return agent;
  }

  /**
   * Ask through `join` until the cluster takes this node, for up to joinRetryMs while the
   * failure is one that passes (no leader, no answer, a refused connection). A refusal of
   * the request itself (a denied token, a bad address, an untrusted certificate) ends it at once.
   */
  private static async joinCluster(
    config: AgentConfig,
    join: string,
    api: ApiFetch,
    logger: Logger,
  ): Promise<{ clusterId: string; peers: Map<string, string> }> {
    const deadline = Date.now() + joinRetryMs;
    for (let delayMs = 250; ; delayMs = Math.min(2 * delayMs, 4000)) {
      const outcome = await Agent.askToJoin(config, join, api);
      if (!("failure" in outcome)) return outcome;
      if (!outcome.transient || Date.now() + delayMs > deadline)
        throw new Error(`joining through ${join} failed: ${outcome.failure}`);
      logger.warn(
        { event: "join-retry", failure: outcome.failure },
        "joining through %s failed (%s); asking again in %d ms",
        join,
        outcome.failure,
        delayMs,
      );
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }

  /** Ask a running member once to add this node as a learner: the cluster id and its members. */
  private static async askToJoin(
    config: AgentConfig,
    join: string,
    api: ApiFetch,
  ): Promise<
    { clusterId: string; peers: Map<string, string> } | { failure: string; transient: boolean }
  > {
    let response: Response;
    try {
      response = await api.fetch(join, "/v1/cluster/members", {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(config.aclToken === null ? {} : { authorization: `Bearer ${config.aclToken}` }),
        },
        body: JSON.stringify(ownAddresses(config)),
        signal: AbortSignal.timeout(joinTimeoutMs),
      });
    } catch (error) {
      const failure = describeFetchFailure(error, joinTimeoutMs);
      const timedOut =
        error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError");
      return { failure, transient: timedOut || transientFetchFailures.has(failure) };
    }
    const body = (await response.json().catch(() => ({}))) as {
      clusterId?: string;
      members?: { id: string; raft: string }[];
      error?: { message: string };
    };
    if (!response.ok || typeof body.clusterId !== "string") {
      return {
        failure: body.error?.message ?? String(response.status),
        transient: response.status === 503 || response.status === 429,
      };
    }
    return {
      clusterId: body.clusterId,
      peers: new Map((body.members ?? []).map((member) => [member.id, member.raft])),
    };
  }

  /** `joinPeers`: the members a joining node must be able to answer before it has any log. */
  private async open(joinPeers: ReadonlyMap<string, string>): Promise<void> {
    const config = this.config;
    const initial = config.peers.size > 0 ? bootstrapState([...config.peers.keys()]) : joiningState;
    const storage = await LevelStorage.open(config.dataDir, initial);
    this.transport = await GrpcTransport.start({
      id: config.nodeId,
      clusterId: this.clusterId,
      listen: config.raft,
      peers: new Map(
        [...config.peers, ...joinPeers]
          .filter(([id]) => id !== config.nodeId)
          .map(([id, address]) => [id, config.raftDial.get(id) ?? address]),
      ),
      maxQueuedFrames: 8192,
      snapshotChunkBytes: 1024 * 1024,
      maxSnapshotBytes: 1024 * 1024 * 1024,
      ...(this.tls === null
        ? {}
        : {
            credentials: {
              server: this.tls.peerServerCredentials(),
              channel: this.tls.peerChannelCredentials(),
            },
          }),
      isMember: (node) => {
        // Frames can arrive before the Raft node has started.
        return this.node !== undefined && isMember(this.node.status().config, node);
      },
    });
    const electionTicks = Math.max(
      2,
      Math.round(config.electionTimeoutMs / config.heartbeatIntervalMs),
    );
    this.node = await RaftNode.start({
      raft: {
        id: config.nodeId,
        electionTicks,
        heartbeatTicks: 1,
        maxEntriesPerAppend: 1024,
        maxAppendBytes: maxAppendBytes,
        maxInflightAppends: 64,
        maxUncommittedEntries: 65_536,
        preVote: true,
        checkQuorum: true,
      },
      tickIntervalMs: config.heartbeatIntervalMs,
      snapshotEveryEntries: config.snapshotEveryEntries,
      storage,
      transport: this.transport,
      stateMachine: this.fsm,
      onFatal: (error) => {
        this.logger.fatal({ err: error }, "stopping: %s", error.message);
        process.exit(70);
      },
    });
    const dnsView = new RegistryDnsView(this.fsm, this.acl);
    this.dns = await DnsServer.start({
      listen: config.dns,
      domain: config.dnsDomain,
      ttlSeconds: Math.round(config.dnsTtlMs / 1000),
      negativeTtlSeconds: Math.round(config.dnsNegativeTtlMs / 1000),
      maxStaleMs: config.dnsMaxStaleMs,
      registry: dnsView,
      lastLeaderContactMs: () => this.node.lastLeaderContactMs(),
    });
    this.fsm.onMembers(() => this.syncPeers());
    this.fsm.onChange((service) => {
      if (service === null) this.syncPeers();
      this.watches.changed(service);
      this.dns.invalidate(service);
    });
    this.lessorTimer = setInterval(() => this.runLessor(), lessorIntervalMs);
    this.lessorTimer.unref();
    this.syncPeers();
    this.http = buildHttpApp(this, this.tls?.httpsServerOptions() ?? null);
    const [host, port] = splitAddress(config.http);
    await this.http.listen({ host, port });
    this.grpc = await GrpcApi.start(
      config.grpc,
      {
        http: async (call, caller) => {
          const answer = await this.http.inject({
            method: call.method,
            url: call.url,
            remoteAddress: caller.address,
            headers: caller.headers,
            ...(call.body === undefined ? {} : { payload: call.body as object }),
          });
          return { status: answer.statusCode, headers: answer.headers, body: answer.json() };
        },
        renew: (ref, body, caller) => this.renewHere(ref, body, tokenOf(caller.headers)),
        leaderGrpc: () => {
          const leader = this.node.status().leader;
          return leader === null ? null : (this.fsm.member(leader)?.grpc ?? null);
        },
        hasLeader: () => this.node.status().leader !== null,
      },
      this.tls?.apiServerCredentials() ?? grpc.ServerCredentials.createInsecure(),
    );
    // Registered only with TLS on, so the HTTP server is an HTTPS one.
    this.tls?.onChange((material) => {
      (this.http.server as unknown as HttpsServer).setSecureContext(
        httpsSecureContextOptions(material),
      );
      this.api.use(material);
    });
    this.housekeeping = setInterval(() => void this.keepHouse(), 200);
    this.housekeeping.unref();
    this.logger.info(
      {
        http: config.http,
        raft: config.raft,
        grpc: config.grpc,
        dns: config.dns,
        dataDir: config.dataDir,
        clusterId: this.clusterId,
        tls: this.tls === null ? null : { serialNumber: this.tls.current.identity.serialNumber },
      },
      "agent started",
    );
    if (config.plantedBug !== null)
      this.logger.warn(
        { bug: config.plantedBug },
        "a known bug is planted: for testing the fault checkers only",
      );
  }

  /**
   * SIGHUP: read the certificate files again; new connections (HTTP, gRPC, Raft) use them.
   * A bad file is logged and the certificates in use stay.
   */
  reloadTls(): void {
    if (this.tls === null) {
      this.logger.info("SIGHUP: TLS is off, nothing to reload");
      return;
    }
    try {
      const material = this.tls.reload();
      this.logger.info(
        { event: "tls-reloaded", serialNumber: material.identity.serialNumber },
        "TLS certificates reloaded",
      );
    } catch (error) {
      this.logger.error(
        { event: "tls-reload-failed", err: error },
        "TLS certificates not reloaded, the current ones stay: %s",
        (error as Error).message,
      );
    }
  }

  private setPeer(id: string, advertised: string): void {
    this.transport.setPeer(id, this.config.raftDial.get(id) ?? advertised);
  }

  /** Raft peers follow the replicated member list (plus the bootstrap list). */
  private syncPeers(): void {
    for (const member of this.fsm.members()) {
      if (member.id !== this.config.nodeId) this.setPeer(member.id, member.raft);
    }
  }

  /** Record this node's addresses in the registry; as leader, promote learners that caught up. */
  private async keepHouse(): Promise<void> {
    // One round at a time: a slow proposal must not stack rounds behind it.
    if (this.stopping || this.housekeepingRound) return;
    this.housekeepingRound = true;
    try {
      await this.keepHouseOnce();
    } finally {
      this.housekeepingRound = false;
    }
  }

  private async keepHouseOnce(): Promise<void> {
    const status = this.node.status();
    const own = ownAddresses(this.config);
    const recorded = this.fsm.member(this.config.nodeId);
    try {
      if (status.role === "leader") {
        if (this.fsm.forwardingKey === null)
          await this.propose({ op: "forwarding-key", key: randomBytes(32).toString("base64url") });
        if (this.config.aclEnabled && !this.fsm.acl.isBootstrapped) await this.bootstrapAcl();
        if (recorded === undefined || JSON.stringify(recorded) !== JSON.stringify(own)) {
          await this.propose({ op: "member", member: own });
        }
        await this.promoteCaughtUpLearner();
      } else if (
        status.leader !== null &&
        (recorded === undefined || JSON.stringify(recorded) !== JSON.stringify(own))
      ) {
        const leader = this.fsm.member(status.leader);
        if (leader !== undefined) {
          await this.api.fetch(leader.http, "/v1/cluster/members", {
            method: "POST",
            headers: {
              "content-type": "application/json",
              ...this.memberHeaders(),
            },
            body: JSON.stringify(own),
            signal: AbortSignal.timeout(2000),
          });
        }
      }
    } catch (error) {
      this.logger.debug({ err: error }, "housekeeping will retry");
    }
  }

  /**
   * The first leader with ACLs on makes the management token; a secret it made goes to a
   * file in its data directory, which the log names.
   */
  private async bootstrapAcl(): Promise<void> {
    const given = this.config.aclBootstrapToken;
    const secretFile = join(this.config.dataDir, bootstrapSecretFile);
    // Written before it is proposed: a proposal that times out may still commit, and the
    // secret must not be lost then. Every attempt proposes the same secret.
    let secret = given ?? (await readFile(secretFile, "utf8").catch(() => null));
    if (secret === null) {
      secret = randomBytes(24).toString("base64url");
      await writeFile(secretFile, secret, { mode: 0o600 });
    }
    const result = await this.propose({
      op: "acl-bootstrap",
      accessor: randomUUID(),
      secretHash: hashSecret(secret),
    });
    if (!result.ok || result.token === undefined) return;
    this.logger.warn(
      {
        event: "acl-bootstrap",
        accessor: result.token.accessor,
        ...(given === null ? { secretFile } : {}),
      },
      given === null
        ? "ACL management token made; its secret is in %s (keep it elsewhere, then delete the file)"
        : "ACL management token made from --acl-bootstrap-token",
      given === null ? secretFile : "",
    );
  }

  /** A request ACLs refused: logged and counted. */
  denied(request: FastifyRequest, permission: Permission | null, accessor: string | null): void {
    this.metrics.aclDenials.inc({ resource: permission?.resource ?? "token" });
    this.logger.warn(
      {
        event: "acl-denied",
        method: request.method,
        route: request.routeOptions.url,
        client: this.clientOf(request),
        accessor,
        permission: permission === null ? null : describePermission(permission),
      },
      permission === null ? "denied: unknown token" : "denied: lacks %s",
      permission === null ? "" : describePermission(permission),
    );
  }

  private async promoteCaughtUpLearner(): Promise<void> {
    const status = this.node.status();
    const learner = this.node.replicationStatus().find(
      (peer) =>
        status.config.learners.includes(peer.id) &&
        // Replicating: it has answered, so a learner that never ran is not counted caught up.
        peer.state === "replicate" &&
        peer.match + promotionLagEntries >= status.commit,
    );
    if (learner === undefined) return;
    this.logger.info({ learner: learner.id }, "promoting learner to voter");
    await this.node.changeMembership({ kind: "promote", node: learner.id }, proposeTimeoutMs);
  }

  /** The lessor follows leadership: it starts once the new leader has applied everything. */
  private runLessor(): void {
    if (this.stopping) return;
    const leader = this.node.status().leader;
    if (leader !== this.knownLeader) {
      this.knownLeader = leader;
      this.metrics.leaderChanges.inc();
    }
    const { role, term } = this.node.status();
    // Leadership lost and won again between two ticks is a new term: start over.
    if (this.lessor.isLeading && (role !== "leader" || term !== this.lessorTerm)) {
      this.lessor.stepDown();
    }
    if (!this.lessor.isLeading && this.node.isReadyLeader()) {
      this.lessor.becomeLeader();
      this.lessorTerm = term;
      this.logger.info("lessor started: TTL countdowns resumed");
    }
    this.lessor.tick();
  }

  /** Renew an instance's TTL on the leader; a status change or revival is committed first. */
  async heartbeat(
    request: FastifyRequest,
    reply: FastifyReply,
    ref: InstanceRef,
    status: InstanceStatus | undefined,
    output: string,
  ): Promise<unknown> {
    return this.forwardUnlessLeader(request, reply, async () => {
      // A new leader takes heartbeats once its lessor has resumed the countdowns.
      if (!this.lessor.isLeading) throw new RaftError("not-leader", "lessor not started yet");
      const outcome = this.lessor.heartbeat(ref, status, output);
      if (!outcome.found) {
        throw new MusterError(
          "MUSTER_ERR_NOT_FOUND",
          `no instance ${ref.id} of service ${ref.service}: register it again`,
        );
      }
      this.metrics.heartbeats.inc();
      // The instance may have been removed meanwhile: then the client must register again.
      if (outcome.command !== undefined) okOrThrow(await this.propose(outcome.command));
      const instance = this.fsm.instance(ref);
      return { id: ref.id, service: ref.service, status: instance?.effectiveStatus ?? null };
    });
  }

  /**
   * A heartbeat that only renews a TTL, taken by the leader in memory without a trip
   * through HTTP: gRPC KeepAlive streams carry many a second. Anything else (on a follower,
   * a status change or revival, an unknown instance, a bad body, a token that may not
   * write, a rate limit, an overloaded node) returns null, and the HTTP route answers it.
   */
  renewHere(ref: InstanceRef, body: unknown, token: string | null): InstanceStatus | null {
    if (!this.lessor.isLeading || this.node.status().role !== "leader") return null;
    if (this.config.rateLimit > 0 || this.underPressure()) return null;
    if (!validHeartbeatBody(body)) return null;
    const allowed = this.acl
      .resolve(token)
      ?.authorizer.allows({ resource: "service", name: ref.service, access: "write" });
    if (allowed !== true) return null;
    const status = this.lessor.renewOnly(ref, body.status);
    if (status !== null) this.metrics.heartbeats.inc();
    return status;
  }

  private underPressure(): boolean {
    return (this.http as { isUnderPressure?: () => boolean }).isUnderPressure?.() === true;
  }

  selfPreservation(): SelfPreservationState & { leader: boolean } {
    return { ...this.lessor.selfPreservation(), leader: this.lessor.isLeading };
  }

  async setSelfPreservation(
    request: FastifyRequest,
    reply: FastifyReply,
    mode: SelfPreservationMode,
  ): Promise<unknown> {
    return this.forwardUnlessLeader(request, reply, async () => {
      await this.propose({ op: "self-preservation", mode });
      return this.lessor.selfPreservation();
    });
  }

  /** Headers every response carries: how fresh this node's view is. */
  stalenessHeaders(): Record<string, string> {
    const contact = this.node.lastLeaderContactMs();
    return {
      "X-Muster-Known-Leader": String(this.node.status().leader !== null),
      "X-Muster-Last-Contact": contact === null ? "-1" : String(contact),
    };
  }

  appliedIndex(): number {
    return this.node.status().applied;
  }

  async propose(command: RegistryCommand): Promise<RegistryResult & { index: number }> {
    const { index, result } = await this.node.propose(encodeCommand(command), proposeTimeoutMs);
    if (result === undefined) throw new Error("a registry command produced no result");
    if (command.op === "register" && result.ok) this.lessor.registered(command.instance);
    if (command.op === "session-create" && result.ok) this.lessor.renewSession(command.session.id);
    return { ...result, index };
  }

  /**
   * With ACLs on, only the token that created a session (or one that may write `acl`) may
   * renew or end it: session ids are visible to anyone who can read a lock it holds.
   */
  checkSessionOwner(request: FastifyRequest, id: string): void {
    const owner = this.fsm.locks.session(id)?.owner ?? null;
    const { caller } = request;
    if (owner === null || owner === caller.accessor) return;
    const manage: Permission = { resource: "acl", name: "", access: "write" };
    if (caller.authorizer.allows(manage)) return;
    this.denied(request, manage, caller.accessor);
    throw new MusterError(
      "MUSTER_ERR_PERMISSION_DENIED",
      `permission denied: session ${id} belongs to another token (ending another token's session needs acl write)`,
      undefined,
      describePermission(manage),
    );
  }

  /** Renew a session's TTL on the leader; false when there is no such session. */
  async renewSession(request: FastifyRequest, reply: FastifyReply, id: string): Promise<unknown> {
    return this.forwardUnlessLeader(request, reply, async () => {
      if (!this.lessor.isLeading) throw new RaftError("not-leader", "lessor not started yet");
      const session = this.fsm.locks.session(id);
      this.checkSessionOwner(request, id);
      if (session === undefined || !this.lessor.renewSession(id)) {
        throw new MusterError("MUSTER_ERR_NOT_FOUND", `no session ${id}`, "id");
      }
      return session;
    });
  }

  /** Apply a write through the leader: here when leader, forwarded otherwise. */
  async write(
    request: FastifyRequest,
    reply: FastifyReply,
    command: RegistryCommand,
    shape: (result: Extract<RegistryResult, { ok: true }>) => unknown,
  ): Promise<unknown> {
    return this.forwardUnlessLeader(request, reply, async () => {
      return shape(okOrThrow(await this.propose(command)));
    });
  }

  /**
   * Run a write on the leader: here when this node leads, forwarded otherwise. While
   * leadership moves (an election, a transfer) the write waits and tries again until the
   * deadline, so a planned handover fails no request. A retried forward can apply a write
   * twice; registration is idempotent, a repeated deregistration answers 404.
   */
  async forwardUnlessLeader(
    request: FastifyRequest,
    reply: FastifyReply,
    handle: () => Promise<unknown>,
    /** How long the leader may take to answer a forwarded request (a blocking acquire waits). */
    answerWithinMs = leaderWaitMs,
  ): Promise<unknown> {
    const deadline = Date.now() + leaderWaitMs;
    const forwarded = request.headers[forwardedHeader] !== undefined;
    // Only a forwarded request needs to notice its client leaving.
    let gone = null as AbortSignal | null;
    const goneSignal = (): AbortSignal => {
      gone ??= clientGone(reply);
      return gone;
    };
    for (;;) {
      const status = this.node.status();
      try {
        if (status.role === "leader") return await handle();
        const leader = status.leader === null ? undefined : this.fsm.member(status.leader);
        const answer =
          leader === undefined || forwarded
            ? null
            : await this.forward(request, goneSignal(), leader.http, answerWithinMs);
        if (answer !== null) {
          if (answer.retryAfter !== null) reply.header("Retry-After", answer.retryAfter);
          // The write's index, which this node may not have applied yet.
          if (answer.index !== null) reply.header("X-Muster-Index", answer.index);
          return reply.code(answer.status).send(answer.body);
        }
      } catch (error) {
        const moving =
          error instanceof RaftError &&
          (error.code === "not-leader" || error.code === "transferring");
        if (!moving) throw error;
      }
      if (Date.now() >= deadline || this.stopping || gone?.aborted === true) {
        throw new MusterError("MUSTER_ERR_NO_LEADER", "no leader took the write in time");
      }
      await sleep(25);
    }
  }

  /** The leader's answer, or null when it could not take the request (gone, or itself without a leader). */
  private async forward(
    request: FastifyRequest,
    gone: AbortSignal,
    leaderHttp: string,
    answerWithinMs: number,
  ): Promise<{
    status: number;
    body: unknown;
    retryAfter: string | null;
    index: string | null;
  } | null> {
    try {
      const response = await this.api.fetch(leaderHttp, request.url, {
        method: request.method,
        ...(request.body === undefined
          ? { headers: this.forwardingHeaders(request) }
          : {
              headers: {
                "content-type": "application/json",
                ...this.forwardingHeaders(request),
              },
              body: JSON.stringify(request.body),
            }),
        // A client that goes away takes the forwarded request with it.
        signal: AbortSignal.any([AbortSignal.timeout(answerWithinMs), gone]),
      });
      const body = (await response.json()) as { error?: { code?: string } };
      // Only "no leader" is worth trying again here; an overloaded leader's answer goes back.
      if (response.status === 503 && body.error?.code !== "MUSTER_ERR_OVERLOADED") return null;
      return {
        status: response.status,
        body,
        retryAfter: response.headers.get("retry-after"),
        index: response.headers.get("x-muster-index"),
      };
    } catch {
      return null;
    }
  }

  /** Wait until reads here reflect every write committed before the request (unless stale). */
  async read(consistency: Consistency): Promise<void> {
    if (consistency === "stale" || this.config.plantedBug === "local-reads") return;
    try {
      if (consistency === "default") await this.node.leaseRead(proposeTimeoutMs);
      else await this.node.readIndex(proposeTimeoutMs);
    } catch (error) {
      throw error instanceof RaftError ? fromRaftError(error) : error;
    }
  }

  async addMember(member: MemberAddresses): Promise<unknown> {
    const known = () => isMember(this.node.status().config, member.id);
    if (!known()) {
      await this.node
        .changeMembership({ kind: "add-learner", node: member.id }, proposeTimeoutMs)
        .catch((error: unknown) => {
          // The change it waited behind may have been this one, asked for by an earlier try.
          if (!(error instanceof RaftError && error.code === "invalid-change" && known()))
            throw error;
        });
    }
    await this.propose({ op: "member", member });
    this.setPeer(member.id, member.raft);
    const members = new Map(this.fsm.members().map(({ id, raft }) => [id, raft]));
    // The joiner takes messages only from members it was told of, and this leader's own record
    // may not have committed yet (its followers went down right after the cluster formed).
    members.set(this.config.nodeId, this.config.raft);
    return {
      clusterId: this.clusterId,
      member,
      learner: !isVoter(this.node.status().config, member.id),
      members: [...members].map(([id, raft]) => ({ id, raft })),
    };
  }

  async removeMember(id: string): Promise<unknown> {
    const { index } = await this.node.changeMembership(
      { kind: "remove", node: id },
      proposeTimeoutMs,
    );
    return { removed: id, index };
  }

  async transferLeadership(to: string | undefined): Promise<unknown> {
    const target = to ?? this.bestTransferTarget();
    if (target === undefined || !this.node.transferLeadership(target)) {
      throw new MusterError(
        "MUSTER_ERR_CONFLICT",
        `cannot transfer leadership to ${target ?? "anyone"}`,
      );
    }
    return { transferringTo: target };
  }

  private bestTransferTarget(): string | undefined {
    const voters = this.node.status().config.voters;
    return this.node
      .replicationStatus()
      .filter((peer) => peer.id !== this.config.nodeId && voters.includes(peer.id))
      .sort((a, b) => b.match - a.match)[0]?.id;
  }

  leaderInfo(): LeaderInfo {
    const status = this.node.status();
    const leader = status.leader === null ? undefined : this.fsm.member(status.leader);
    return {
      leader:
        status.leader === null
          ? null
          : { id: status.leader, raft: leader?.raft ?? null, http: leader?.http ?? null },
      term: status.term,
    };
  }

  /**
   * The client a request comes from: its address, or for a request a member forwarded, the
   * address of the client that member took it from.
   */
  clientOf(request: FastifyRequest): string {
    const forwardedFor = request.headers[forwardedHeader];
    return typeof forwardedFor === "string" && this.forwardedByMember(request)
      ? forwardedFor
      : request.ip;
  }

  /** Whether a member forwarded `request`: it carries the cluster's forwarding key. */
  forwardedByMember(request: FastifyRequest): boolean {
    const key = this.fsm.forwardingKey;
    const shown = request.headers[forwardingKeyHeader];
    if (key === null || typeof shown !== "string") return false;
    const [expected, given] = [Buffer.from(key), Buffer.from(shown)];
    return expected.length === given.length && timingSafeEqual(expected, given);
  }

  /**
   * What a request forwarded to the leader carries: its client, its token (the leader checks
   * it again against its own, newest ACLs), and the proof that a member sent it.
   */
  private forwardingHeaders(request: FastifyRequest): Record<string, string> {
    const token = tokenOf(request.headers);
    return {
      [forwardedHeader]: this.clientOf(request),
      ...(token === null ? {} : { "x-muster-token": token }),
      ...this.memberHeaders(),
    };
  }

  /** What a member's own request carries: the proof that a member sent it. */
  private memberHeaders(): Record<string, string> {
    const key = this.fsm.forwardingKey;
    return key === null ? {} : { [forwardingKeyHeader]: key };
  }

  /** A request a member made for itself, not one it forwarded: no ACL applies to it. */
  memberOwnRequest(request: FastifyRequest): boolean {
    return request.headers[forwardedHeader] === undefined && this.forwardedByMember(request);
  }

  membersInfo(): MembersInfo {
    const status = this.node.status();
    const ids = [...status.config.voters, ...status.config.learners];
    return {
      term: status.term,
      commitIndex: status.commit,
      members: ids.map((id) => {
        const addresses = this.fsm.member(id);
        return {
          id,
          raft: addresses?.raft ?? this.config.peers.get(id) ?? null,
          http: addresses?.http ?? null,
          grpc: addresses?.grpc ?? null,
          dns: addresses?.dns ?? null,
          role:
            id === status.leader
              ? "leader"
              : status.config.voters.includes(id)
                ? "follower"
                : "learner",
          voter: status.config.voters.includes(id),
        };
      }),
    };
  }

  /** The cluster at a glance: leader, members, indexes and self-preservation. */
  clusterInfo(): LeaderInfo &
    MembersInfo & {
      appliedIndex: number;
      selfPreservation: SelfPreservationState;
    } {
    return {
      ...this.leaderInfo(),
      ...this.membersInfo(),
      appliedIndex: this.appliedIndex(),
      selfPreservation: this.lessor.selfPreservation(),
    };
  }

  stateHash(): { appliedIndex: number; hash: string } {
    return { appliedIndex: this.appliedIndex(), hash: this.fsm.stateHash().hash };
  }

  isReady(): { ok: boolean; leader: string | null } {
    const status = this.node.status();
    return { ok: status.leader !== null && status.applied >= status.commit, leader: status.leader };
  }

  status() {
    return this.node.status();
  }

  /** SIGTERM: stop taking requests, hand leadership over if leader, flush, close. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.housekeeping !== null) clearInterval(this.housekeeping);
    if (this.lessorTimer !== null) clearInterval(this.lessorTimer);
    this.lessor.stepDown();
    // Stop taking requests; those in flight finish while leadership moves.
    const closing = this.http.close();
    if (this.node.status().role === "leader") await this.handOverLeadership();
    const closed = await Promise.race([closing.then(() => true), sleep(1000).then(() => false)]);
    await this.dns.close();
    await this.grpc.close();
    if (!closed) this.logger.warn("requests still in flight at shutdown");
    await this.node.stop();
  }

  private async handOverLeadership(): Promise<void> {
    const target = this.bestTransferTarget();
    if (target === undefined || !this.node.transferLeadership(target)) return;
    const deadline = Date.now() + 2000;
    while (this.node.status().role === "leader" && Date.now() < deadline) await sleep(10);
    this.logger.info(
      { to: target, moved: this.node.status().role !== "leader" },
      "leadership transfer on shutdown",
    );
  }
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

function ownAddresses(config: AgentConfig): MemberAddresses {
  return {
    id: config.nodeId,
    raft: config.raft,
    http: config.http,
    grpc: config.grpc,
    dns: config.dns,
  };
}

export function splitAddress(address: string): [string, number] {
  const at = address.lastIndexOf(":");
  return [address.slice(0, at), Number(address.slice(at + 1))];
}

/** A state machine refusal as the API's error. */
export function okOrThrow(
  outcome: RegistryResult & { index: number },
): Extract<RegistryResult, { ok: true }> & { index: number } {
  if (outcome.ok) return outcome;
  const codes = {
    conflict: "MUSTER_ERR_CONFLICT",
    "not-found": "MUSTER_ERR_NOT_FOUND",
    "too-many": "MUSTER_ERR_TOO_MANY_REQUESTS",
  } as const;
  throw new MusterError(codes[outcome.code], outcome.message);
}
