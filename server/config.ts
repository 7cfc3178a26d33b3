import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { type Command, InvalidArgumentError, Option } from "commander";

export interface AgentConfig {
  readonly nodeId: string;
  readonly dataDir: string;
  readonly http: string;
  readonly grpc: string;
  readonly raft: string;
  readonly dns: string;
  /** Bootstrap voters: node id -> Raft address. Empty when joining. */
  readonly peers: ReadonlyMap<string, string>;
  /** Peers reached at another address than the one they advertise (a proxy, NAT, a tunnel). */
  readonly raftDial: ReadonlyMap<string, string>;
  /** HTTP address of a running member to join through. */
  readonly join: string | null;
  readonly clusterId: string;
  readonly heartbeatIntervalMs: number;
  readonly electionTimeoutMs: number;
  readonly ttlCheckpointIntervalMs: number;
  readonly deregisterAfterMs: number;
  readonly lockDelayMs: number;
  /** Share of instances at risk (0..1) above which the leader stops evicting. */
  readonly selfPreservationThreshold: number;
  readonly selfPreservationMinInstances: number;
  readonly snapshotEveryEntries: number;
  /** DNS domain, without the trailing dot. */
  readonly dnsDomain: string;
  readonly dnsTtlMs: number;
  readonly dnsNegativeTtlMs: number;
  /** SERVFAIL once no leader was heard for this long; null: answer from local state always. */
  readonly dnsMaxStaleMs: number | null;
  readonly logLevel: string;
  /** Requests per second one client may make of a node; 0: no limit. */
  readonly rateLimit: number;
  readonly maxWatchesPerClient: number;
  readonly maxWatches: number;
  readonly maxSessionsPerClient: number;
  readonly maxEventLoopDelayMs: number | null;
  /** Every request needs a token whose policies allow it; DNS follows the anonymous token. */
  readonly aclEnabled: boolean;
  /** The management token's secret; null: the first leader makes one and keeps it in a file. */
  readonly aclBootstrapToken: string | null;
  /** The token this agent presents to the cluster it joins. */
  readonly aclToken: string | null;
  /** TLS for the HTTP and gRPC APIs and mutual TLS between Raft peers; null: plain. */
  readonly tls: TlsSettings | null;
  /**
   * A known bug to plant, only to show that the fault campaigns catch it (MUSTER_PLANTED_BUG;
   * never a flag): "local-reads" answers every read from local state.
   */
  readonly plantedBug: PlantedBug | null;
}

/** PEM files of this node's TLS identity and of the CAs that peers and clients are checked against. */
export interface TlsSettings {
  readonly certFile: string;
  readonly keyFile: string;
  /** The cluster's CA: Raft peers are checked against it and nothing else. */
  readonly caFile: string;
  /**
   * Non-null: HTTP and gRPC API clients must show a certificate from this CA or the cluster's
   * (members call each other's APIs with their node certificates). Never trusted for Raft.
   */
  readonly clientCaFile: string | null;
}

/** "500ms", "10s", "2m", "1h" -> milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (match === null)
    throw new InvalidArgumentError(`"${text}" is not a duration like 500ms, 10s, 2m or 1h`);
  const scale = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] as "ms" | "s" | "m" | "h"];
  return Math.round(Number(match[1]) * scale);
}

function parseAddress(text: string): string {
  if (!/^[^\s:]+:\d{1,5}$/.test(text) || Number(text.split(":").pop()) > 65535) {
    throw new InvalidArgumentError(`"${text}" is not an address like 127.0.0.1:7700`);
  }
  return text;
}

const nodeIdPattern = /^[A-Za-z0-9._-]{1,64}$/;

function parseNodeId(text: string): string {
  if (!nodeIdPattern.test(text))
    throw new InvalidArgumentError(`"${text}" is not a node id (letters, digits, . _ -)`);
  return text;
}

/** "n1=127.0.0.1:7702,n2=..." -> map of node id to Raft address. */
export function parsePeers(text: string): Map<string, string> {
  const peers = new Map<string, string>();
  for (const part of text.split(",").filter((p) => p.trim() !== "")) {
    const [id, address, ...rest] = part.trim().split("=");
    if (id === undefined || address === undefined || rest.length > 0) {
      throw new InvalidArgumentError(`"${part}" is not a peer like n1=127.0.0.1:7702`);
    }
    if (peers.has(id)) throw new InvalidArgumentError(`peer ${id} is listed twice`);
    peers.set(parseNodeId(id), parseAddress(address));
  }
  return peers;
}

function parseDomain(text: string): string {
  const domain = text.toLowerCase().replace(/\.$/, "");
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/.test(domain))
    throw new InvalidArgumentError(`"${text}" is not a DNS domain like muster or example.internal`);
  return domain;
}

function fraction(text: string): number {
  const value = Number(text);
  if (text.trim() === "" || !(value > 0 && value <= 1))
    throw new InvalidArgumentError(`"${text}" is not a share between 0 (excluded) and 1`);
  return value;
}

function nonNegativeInteger(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0)
    throw new InvalidArgumentError(`"${text}" is not a whole number`);
  return value;
}

/** Secrets are random strings: a short one could be guessed. */
export function parseSecret(text: string): string {
  if (!/^[\x21-\x7e]{16,256}$/.test(text))
    throw new InvalidArgumentError("a token must be 16 to 256 printable characters, no spaces");
  return text;
}

function positiveInteger(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1)
    throw new InvalidArgumentError(`"${text}" is not a positive integer`);
  return value;
}

/** A cluster id every bootstrap member derives alike from the same peer list. */
export function clusterIdOf(peers: ReadonlyMap<string, string>): string {
  const text = [...peers]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([id, address]) => `${id}=${address}`)
    .join(",");
  return createHash("sha256").update(text).digest("hex").slice(0, 16);
}

function option(
  flags: string,
  description: string,
  env: string,
  parse?: (text: string) => unknown,
  fallback?: string,
) {
  const created = new Option(flags, description).env(env);
  if (parse !== undefined) created.argParser(parse);
  if (fallback !== undefined)
    created.default(parse === undefined ? fallback : parse(fallback), fallback);
  return created;
}

/** The `agent` command's flags; every flag also reads MUSTER_<FLAG> and the --config file. */
export function agentOptions(): Option[] {
  return [
    option(
      "--config <file>",
      "JSON file with any of these settings (camelCase keys)",
      "MUSTER_CONFIG",
    ),
    option("--node-id <id>", "this node's id", "MUSTER_NODE_ID", parseNodeId),
    option(
      "--data-dir <dir>",
      "where the Raft log and snapshots live (default ./data/<node-id>)",
      "MUSTER_DATA_DIR",
    ),
    option("--http <address>", "HTTP API address", "MUSTER_HTTP", parseAddress, "127.0.0.1:7700"),
    option("--grpc <address>", "gRPC API address", "MUSTER_GRPC", parseAddress, "127.0.0.1:7701"),
    option(
      "--raft <address>",
      "address peers reach this node's Raft on",
      "MUSTER_RAFT",
      parseAddress,
      "127.0.0.1:7702",
    ),
    option(
      "--dns <address>",
      "DNS address (UDP and TCP)",
      "MUSTER_DNS",
      parseAddress,
      "127.0.0.1:7753",
    ),
    option(
      "--peers <list>",
      "bootstrap voters: n1=HOST:PORT,n2=HOST:PORT,... (Raft addresses)",
      "MUSTER_PEERS",
      parsePeers,
    ),
    option(
      "--join <address>",
      "HTTP address of a running member to join as a learner",
      "MUSTER_JOIN",
      parseAddress,
    ),
    option("--cluster-id <id>", "cluster id (default: derived from --peers)", "MUSTER_CLUSTER_ID"),
    option(
      "--raft-dial <list>",
      "reach these peers at these addresses instead of the ones they advertise (a proxy, NAT): n2=HOST:PORT,...",
      "MUSTER_RAFT_DIAL",
      parsePeers,
    ),
    option(
      "--heartbeat-interval <duration>",
      "leader heartbeat interval",
      "MUSTER_HEARTBEAT_INTERVAL",
      parseDuration,
      "50ms",
    ),
    option(
      "--election-timeout <duration>",
      "minimum election timeout (randomized up to twice it)",
      "MUSTER_ELECTION_TIMEOUT",
      parseDuration,
      "500ms",
    ),
    option(
      "--ttl-checkpoint-interval <duration>",
      "how often the leader checkpoints TTLs",
      "MUSTER_TTL_CHECKPOINT_INTERVAL",
      parseDuration,
      "5s",
    ),
    option(
      "--deregister-after <duration>",
      "how long a critical instance stays before removal",
      "MUSTER_DEREGISTER_AFTER",
      parseDuration,
      "60s",
    ),
    option(
      "--lock-delay <duration>",
      "default lock delay after a holder's session ends",
      "MUSTER_LOCK_DELAY",
      parseDuration,
      "1s",
    ),
    option(
      "--self-preservation-threshold <share>",
      "evictions stop while more than this share of instances is at risk",
      "MUSTER_SELF_PRESERVATION_THRESHOLD",
      fraction,
      "0.5",
    ),
    option(
      "--self-preservation-min-instances <count>",
      "self-preservation never engages below this many instances",
      "MUSTER_SELF_PRESERVATION_MIN_INSTANCES",
      positiveInteger,
      "10",
    ),
    option(
      "--snapshot-every <entries>",
      "take a snapshot after this many applied entries (up to half again, at random)",
      "MUSTER_SNAPSHOT_EVERY",
      positiveInteger,
      "10000",
    ),
    option(
      "--dns-domain <domain>",
      "DNS domain served",
      "MUSTER_DNS_DOMAIN",
      parseDomain,
      "muster",
    ),
    option("--dns-ttl <duration>", "TTL of DNS records", "MUSTER_DNS_TTL", parseDuration, "5s"),
    option(
      "--dns-negative-ttl <duration>",
      "SOA minimum: how long resolvers cache a negative DNS answer",
      "MUSTER_DNS_NEGATIVE_TTL",
      parseDuration,
      "5s",
    ),
    option(
      "--dns-max-stale <duration>",
      "answer SERVFAIL once no leader was heard for this long (default: never)",
      "MUSTER_DNS_MAX_STALE",
      parseDuration,
    ),
    option(
      "--rate-limit <requests>",
      "requests per second one client may make of this node (0: no limit)",
      "MUSTER_RATE_LIMIT",
      nonNegativeInteger,
      "0",
    ),
    option(
      "--max-watches-per-client <count>",
      "blocking queries and watch streams one client may hold open on this node",
      "MUSTER_MAX_WATCHES_PER_CLIENT",
      positiveInteger,
      "1000",
    ),
    option(
      "--max-watches <count>",
      "blocking queries and watch streams this node holds open in all",
      "MUSTER_MAX_WATCHES",
      positiveInteger,
      "20000",
    ),
    option(
      "--max-sessions-per-client <count>",
      "sessions one client may hold in the cluster",
      "MUSTER_MAX_SESSIONS_PER_CLIENT",
      positiveInteger,
      "1000",
    ),
    option(
      "--max-event-loop-delay <duration>",
      "answer 503 while the event loop lags more than this on average (default: never)",
      "MUSTER_MAX_EVENT_LOOP_DELAY",
      parseDuration,
    ),
    option(
      "--tls-cert <file>",
      "this node's certificate (PEM): turns on TLS for HTTP, gRPC and Raft (with --tls-key and --tls-ca)",
      "MUSTER_TLS_CERT",
    ),
    option("--tls-key <file>", "the private key of --tls-cert (PEM)", "MUSTER_TLS_KEY"),
    option(
      "--tls-ca <file>",
      "the cluster's CA certificates (PEM): Raft peers are checked against these only",
      "MUSTER_TLS_CA",
    ),
    option(
      "--tls-client-ca <file>",
      "HTTP and gRPC API clients must show a certificate from this CA (PEM) or from --tls-ca",
      "MUSTER_TLS_CLIENT_CA",
    ),
    option(
      "--acl-enabled",
      "require a token whose policies allow each request; DNS follows the anonymous token",
      "MUSTER_ACL_ENABLED",
    ),
    option(
      "--acl-bootstrap-token <secret>",
      "secret of the management token the first leader makes (default: a random one, logged once)",
      "MUSTER_ACL_BOOTSTRAP_TOKEN",
      parseSecret,
    ),
    option(
      "--acl-token <secret>",
      "token this agent presents when it joins a cluster with ACLs on",
      "MUSTER_ACL_TOKEN",
      parseSecret,
    ),
    option("--log-level <level>", "pino log level", "MUSTER_LOG_LEVEL", undefined, "info"),
  ];
}

type RawOptions = Record<string, unknown>;

const plantedBugs = ["local-reads"] as const;
export type PlantedBug = (typeof plantedBugs)[number];

function plantedBug(value: string | undefined): PlantedBug | null {
  if (value === undefined || value === "") return null;
  if (!(plantedBugs as readonly string[]).includes(value))
    throw new InvalidArgumentError(`MUSTER_PLANTED_BUG must be one of ${plantedBugs.join(", ")}`);
  return value as PlantedBug;
}

/** A peer list from the command line or environment (parsed) or from the config file (text). */
function peerMap(value: unknown): Map<string, string> {
  return typeof value === "string"
    ? parsePeers(value)
    : ((value as Map<string, string>) ?? new Map());
}

/** Settings from the command line and environment, over the --config file, over defaults. */
export function resolveConfig(command: Command): AgentConfig {
  const cli = command.opts<RawOptions>();
  const fromFile = typeof cli.config === "string" ? readConfigFile(cli.config) : {};
  const pick = (key: string): unknown => {
    const source = command.getOptionValueSource(key);
    return source === "cli" || source === "env" || fromFile[key] === undefined
      ? cli[key]
      : fromFile[key];
  };
  const nodeId = pick("nodeId");
  if (typeof nodeId !== "string")
    throw new InvalidArgumentError("--node-id (or MUSTER_NODE_ID) is required");
  const peers = peerMap(pick("peers"));
  const join = pick("join") as string | undefined;
  if (peers.size === 0 && join === undefined)
    throw new InvalidArgumentError("give --peers to bootstrap or --join to join a cluster");
  if (peers.size > 0 && join !== undefined)
    throw new InvalidArgumentError("--peers and --join exclude each other");
  if (peers.size > 0 && !peers.has(nodeId))
    throw new InvalidArgumentError(`--peers must list this node (${nodeId})`);
  const duration = (key: string) => {
    const value = pick(key);
    return typeof value === "string" ? parseDuration(value) : (value as number);
  };
  const heartbeatIntervalMs = duration("heartbeatInterval");
  const electionTimeoutMs = duration("electionTimeout");
  if (electionTimeoutMs < 2 * heartbeatIntervalMs) {
    throw new InvalidArgumentError(
      "--election-timeout must be at least twice --heartbeat-interval",
    );
  }
  const raft = pick("raft") as string;
  const tls = tlsSettings(pick);
  return {
    nodeId,
    dataDir: (pick("dataDir") as string | undefined) ?? `./data/${nodeId}`,
    http: pick("http") as string,
    grpc: pick("grpc") as string,
    raft: peers.get(nodeId) ?? raft,
    dns: pick("dns") as string,
    peers,
    raftDial: peerMap(pick("raftDial")),
    join: join ?? null,
    clusterId:
      (pick("clusterId") as string | undefined) ?? (peers.size > 0 ? clusterIdOf(peers) : ""),
    heartbeatIntervalMs,
    electionTimeoutMs,
    ttlCheckpointIntervalMs: duration("ttlCheckpointInterval"),
    deregisterAfterMs: duration("deregisterAfter"),
    lockDelayMs: duration("lockDelay"),
    selfPreservationThreshold: Number(pick("selfPreservationThreshold")),
    selfPreservationMinInstances: Number(pick("selfPreservationMinInstances")),
    snapshotEveryEntries: Number(pick("snapshotEvery")),
    dnsDomain: pick("dnsDomain") as string,
    dnsTtlMs: duration("dnsTtl"),
    dnsNegativeTtlMs: duration("dnsNegativeTtl"),
    dnsMaxStaleMs: pick("dnsMaxStale") === undefined ? null : duration("dnsMaxStale"),
    logLevel: pick("logLevel") as string,
    rateLimit: Number(pick("rateLimit")),
    maxWatchesPerClient: Number(pick("maxWatchesPerClient")),
    maxWatches: Number(pick("maxWatches")),
    maxSessionsPerClient: Number(pick("maxSessionsPerClient")),
    maxEventLoopDelayMs:
      pick("maxEventLoopDelay") === undefined ? null : duration("maxEventLoopDelay"),
    aclEnabled: booleanSetting(command, pick, "aclEnabled"),
    aclBootstrapToken: secretOf(pick("aclBootstrapToken")),
    aclToken: secretOf(pick("aclToken")),
    tls,
    plantedBug: plantedBug(process.env.MUSTER_PLANTED_BUG),
  };
}

/** The config file's values are not parsed by the flag's parser. */
function secretOf(value: unknown): string | null {
  return typeof value === "string" ? parseSecret(value) : null;
}

/** The TLS flags, all or none: the files themselves are read when the agent starts. */
function tlsSettings(pick: (key: string) => unknown): TlsSettings | null {
  const [certFile, keyFile, caFile, clientCaFile] = [
    "tlsCert",
    "tlsKey",
    "tlsCa",
    "tlsClientCa",
  ].map((key) => {
    const value = pick(key);
    if (value !== undefined && (typeof value !== "string" || value === ""))
      throw new InvalidArgumentError(`${key} in --config must be a file name`);
    return value as string | undefined;
  });
  if (certFile === undefined && keyFile === undefined && caFile === undefined) {
    if (clientCaFile !== undefined)
      throw new InvalidArgumentError(
        "--tls-client-ca needs TLS on (--tls-cert, --tls-key and --tls-ca)",
      );
    return null;
  }
  if (certFile === undefined)
    throw new InvalidArgumentError("--tls-cert (or MUSTER_TLS_CERT) is required with TLS");
  if (keyFile === undefined)
    throw new InvalidArgumentError("--tls-key (or MUSTER_TLS_KEY) must go with --tls-cert");
  if (caFile === undefined)
    throw new InvalidArgumentError(
      "--tls-ca (or MUSTER_TLS_CA) is required with TLS: peers verify each other against it",
    );
  return { certFile, keyFile, caFile, clientCaFile: clientCaFile ?? null };
}

/**
 * A switch: true from the flag, "true"/"1" or "false"/"0" from the environment (commander
 * would take any value, even "false", as on), true or false from the --config file.
 */
function booleanSetting(command: Command, pick: (key: string) => unknown, key: string): boolean {
  const option = command.options.find((candidate) => candidate.attributeName() === key);
  const envName = option?.envVar;
  if (command.getOptionValueSource(key) === "env" && envName !== undefined) {
    const text = (process.env[envName] ?? "").trim().toLowerCase();
    if (text === "true" || text === "1") return true;
    if (text === "false" || text === "0" || text === "") return false;
    throw new InvalidArgumentError(`${envName} must be true or false, not "${text}"`);
  }
  const value = pick(key) ?? false;
  if (typeof value !== "boolean")
    throw new InvalidArgumentError(`${key} in --config must be true or false`);
  return value;
}

function readConfigFile(path: string): RawOptions {
  try {
    const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      throw new Error("not a JSON object");
    return parsed as RawOptions;
  } catch (error) {
    throw new InvalidArgumentError(`--config ${path}: ${(error as Error).message}`);
  }
}
