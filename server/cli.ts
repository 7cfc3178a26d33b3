import { Command, InvalidArgumentError, Option } from "commander";
import { type AclRule, parseRule } from "./acl/rules.js";
import * as acl from "./acl-commands.js";
import type { Agent } from "./agent.js";
import { agentOptions, parseDuration, resolveConfig } from "./config.js";
import {
  type LockCommandKind,
  parseHttpAddresses,
  parseLockName,
  runLockCommand,
} from "./lock-command.js";
import * as people from "./people-commands.js";
import { readTlsMaterial, type TlsMaterial } from "./tls-files.js";

const shutdownLimitMs = 5000;

async function runAgent(command: Command): Promise<void> {
  const config = resolveConfig(command);
  // Loaded here, not at the top: the client subcommands start without the server's modules.
  const [{ Agent }, { pino }] = await Promise.all([import("./agent.js"), import("pino")]);
  let agent: Agent | null = null;
  const logger = pino({
    level: config.logLevel,
    base: { node: config.nodeId },
    mixin: () => {
      const status = agent?.status();
      return status === undefined ? {} : { term: status.term, role: status.role };
    },
  });
  // Caught from the start: SIGHUP's default action would end an agent still starting up.
  process.on("SIGHUP", () => {
    if (agent === null) logger.warn("SIGHUP while starting: certificates are read at start anyway");
    else agent.reloadTls();
  });
  agent = await Agent.start(config, logger);
  const started = agent;
  let shuttingDown = false;
  const shutdown = (signal: string) => {
    // A second signal (npm and a supervisor may both send one) must not kill a clean shutdown.
    if (shuttingDown) return;
    shuttingDown = true;
    logger.info({ signal }, "shutting down");
    setTimeout(() => {
      logger.error("shutdown took too long; exiting");
      process.exit(1);
    }, shutdownLimitMs).unref();
    started.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
}

const program = new Command("muster")
  .description("muster: service registry and discovery")
  .showHelpAfterError();
const agent = program.command("agent").description("run a muster agent (one node of a cluster)");
for (const option of agentOptions()) agent.addOption(option);
agent.action(async (_options, command: Command) => runAgent(command));

program
  .command("resolve")
  .description("ask a muster node's DNS what it answers for NAME")
  .argument("<name>", "e.g. web.service.muster, _web._tcp.service.muster, v1.web.service.muster")
  .addOption(
    new Option("--type <type>", "record type")
      .choices(["A", "AAAA", "SRV", "ANY", "SOA", "TXT"])
      .default("SRV"),
  )
  .addOption(
    new Option("--server <address>", "the node's DNS address")
      .env("MUSTER_DNS")
      .default("127.0.0.1:7753"),
  )
  .option("--tcp", "ask over TCP (default: UDP, then TCP when truncated)")
  .option("--json", "print the decoded response as JSON")
  .action(
    async (
      name: string,
      options: { type: string; server: string; tcp?: boolean; json?: boolean },
    ) => {
      if (!/^[^\s:]+:\d{1,5}$/.test(options.server))
        throw new InvalidArgumentError(
          `--server "${options.server}" is not an address like 127.0.0.1:7753`,
        );
      const [{ Packet }, { formatResponse, queryDns }] = await Promise.all([
        import("dns2"),
        import("../dns/client.js"),
      ]);
      const type = Packet.TYPE[options.type as keyof typeof Packet.TYPE];
      const response = await queryDns(options.server, name, type, {
        transport: options.tcp === true ? "tcp" : "auto",
        edns: true,
        timeoutMs: 3000,
      });
      console.log(
        options.json === true ? JSON.stringify(response, null, 2) : formatResponse(response),
      );
    },
  );

function durationOption(flags: string, description: string, fallback?: string): Option {
  const option = new Option(flags, description).argParser((text) => {
    const ms = parseDuration(text);
    if (ms === 0 && !flags.startsWith("--wait"))
      throw new InvalidArgumentError("it must be more than 0");
    return ms;
  });
  return fallback === undefined ? option : option.default(parseDuration(fallback), fallback);
}

/** The ACL token every client subcommand sends. */
function tokenOption(): Option {
  return new Option("--token <secret>", "ACL token (when the cluster has ACLs on)").env(
    "MUSTER_TOKEN",
  );
}

/** --tls-ca, --tls-cert and --tls-key of the subcommands that talk to the HTTP API. */
function addClientTlsOptions(command: Command): Command {
  return command
    .addOption(
      new Option("--tls-ca <file>", "speak HTTPS, checking the node against this CA (PEM)").env(
        "MUSTER_TLS_CA",
      ),
    )
    .addOption(
      new Option(
        "--tls-cert <file>",
        "client certificate (PEM), for a cluster with --tls-client-ca",
      ).env("MUSTER_TLS_CERT"),
    )
    .addOption(new Option("--tls-key <file>", "its private key (PEM)").env("MUSTER_TLS_KEY"));
}

interface ClientTlsOptions {
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

function clientTls(options: ClientTlsOptions): TlsMaterial | null {
  if (options.tlsCa === undefined) {
    if (options.tlsCert !== undefined || options.tlsKey !== undefined)
      throw new InvalidArgumentError("--tls-cert and --tls-key need --tls-ca");
    return null;
  }
  return readTlsMaterial({
    caFile: options.tlsCa,
    ...(options.tlsCert === undefined ? {} : { certFile: options.tlsCert }),
    ...(options.tlsKey === undefined ? {} : { keyFile: options.tlsKey }),
  });
}

interface LockCliOptions extends ClientTlsOptions {
  http: string[];
  token?: string;
  ttl: number;
  lockDelay?: number;
  wait: number;
  value?: string;
  requestTimeout: number;
}

const lockHelp = `
COMMAND runs with MUSTER_LOCK_TOKEN (the fencing token), MUSTER_LOCK_NAME and
MUSTER_SESSION in its environment; SIGINT, SIGTERM and SIGHUP are passed on to it.
If the lock is lost (the session ends, or another session holds the lock), COMMAND
gets SIGTERM, and SIGKILL 10 s later. When COMMAND exits, the lock is released and
the session deleted.

Exit status: COMMAND's (128+N when a signal N ended it); 1 when the lock was not
acquired within --wait or the cluster could not be reached, or when the lock was
lost and COMMAND exited 0; 2 for bad usage.

Example:
  muster lock nightly-report --http 127.0.0.1:7700 -- ./report.sh --full`;

const electHelp = `
COMMAND runs with MUSTER_ELECTION_TOKEN (the fencing token of this leadership),
MUSTER_ELECTION_NAME and MUSTER_SESSION in its environment; SIGINT, SIGTERM and
SIGHUP are passed on to it. If the leadership is lost (the session ends, or another
session leads), COMMAND gets SIGTERM, and SIGKILL 10 s later. When COMMAND exits,
the candidate resigns and the session is deleted.

Exit status: COMMAND's (128+N when a signal N ended it); 1 when not elected within
--wait or the cluster could not be reached, or when the leadership was lost and
COMMAND exited 0; 2 for bad usage.

Example:
  muster elect scheduler --value "$(hostname)" -- ./scheduler --serve`;

function lockSubcommand(kind: LockCommandKind): Command {
  const isLock = kind === "lock";
  const command = new Command(isLock ? "lock" : "elect")
    .showHelpAfterError(
      `usage: muster ${isLock ? "lock" : "elect"} [options] <name> -- <command> [args...] (--help for more)`,
    )
    // Bad usage exits 2: 1 means the lock was not acquired.
    .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2))
    .description(
      isLock
        ? "run COMMAND while holding the lock NAME (like consul lock)"
        : "run COMMAND while leader of the election NAME",
    )
    .usage(`[options] <name> -- <command> [args...]`)
    .argument("<name>", isLock ? "the lock" : "the election", parseLockName)
    .argument("<command...>", "the command to run and its arguments, after --")
    .addOption(
      new Option("--http <addresses>", "HTTP address of a muster node (comma-separated: fallbacks)")
        .env("MUSTER_HTTP")
        .argParser(parseHttpAddresses)
        .default(["127.0.0.1:7700"], "127.0.0.1:7700"),
    )
    .addOption(tokenOption())
    .addOption(durationOption("--ttl <duration>", "session TTL, renewed every third of it", "15s"))
    .addOption(
      durationOption(
        "--lock-delay <duration>",
        "after the session dies holding the lock, nobody gets it for this long (default: the server's)",
      ),
    )
    .addOption(
      durationOption("--wait <duration>", "how long to wait for the lock (0s: try once)", "5m"),
    )
    .addOption(
      durationOption("--request-timeout <duration>", "timeout of each HTTP request", "5s"),
    );
  addClientTlsOptions(command);
  if (isLock) command.option("--value <value>", "the holder's value, shown to others");
  else command.requiredOption("--value <value>", "this candidate's identity, e.g. its address");
  return command
    .addHelpText("after", isLock ? lockHelp : electHelp)
    .action(async (name: string, args: string[], options: LockCliOptions) => {
      const status = await runLockCommand({
        kind,
        name,
        addresses: options.http,
        tls: clientTls(options),
        ttlMs: options.ttl,
        ...(options.lockDelay === undefined ? {} : { lockDelayMs: options.lockDelay }),
        waitMs: options.wait,
        ...(options.value === undefined ? {} : { value: options.value }),
        requestTimeoutMs: options.requestTimeout,
        token: options.token || null,
        command: args,
      });
      process.exit(status);
    });
}

program.addCommand(lockSubcommand("lock"));
program.addCommand(lockSubcommand("election"));

/** --http, TLS and --json, shared by the subcommands for people. */
function clientCommand(name: string, description: string): Command {
  return addClientTlsOptions(new Command(name))
    .description(description)
    .addOption(
      new Option("--http <addresses>", "HTTP address of a muster node (comma-separated: fallbacks)")
        .env("MUSTER_HTTP")
        .argParser(parseHttpAddresses)
        .default(["127.0.0.1:7700"], "127.0.0.1:7700"),
    )
    .addOption(tokenOption())
    .option("--json", "print the API's JSON instead of a table");
}

function print(run: () => Promise<string>): Promise<void> {
  return run().then(
    (text) => console.log(text),
    (error: unknown) => {
      console.error(`muster: ${(error as Error).message}`);
      process.exit(1);
    },
  );
}

type ClientOptions = ClientTlsOptions & { http: string[]; json?: boolean; token?: string };
const output = (options: ClientOptions): people.OutputOptions => ({
  http: options.http,
  json: options.json === true,
  tls: clientTls(options),
  token: options.token || null,
});

program.addCommand(
  clientCommand("members", "the cluster's members, their roles and addresses").action(
    (options: ClientOptions) => print(() => people.members(output(options))),
  ),
);
program.addCommand(
  clientCommand("services", "every service, or one service's instances")
    .argument("[service]", "a service name: list its instances")
    .action((service: string | undefined, options: ClientOptions) =>
      print(() => people.services(output(options), service)),
    ),
);
program.addCommand(
  clientCommand("register", "register (or replace) an instance")
    .argument("<service>", "service name")
    .argument("<id>", "instance id")
    .requiredOption("--address <address>", "where callers reach it")
    .requiredOption("--port <port>", "its port", (text) => Number(text))
    .option(
      "--tag <tag>",
      "a tag (repeat for more)",
      (tag: string, tags: string[]) => [...tags, tag],
      [],
    )
    .option(
      "--meta <key=value>",
      "a metadata entry (repeat for more)",
      (pair: string, meta: Record<string, string>) => {
        const at = pair.indexOf("=");
        if (at <= 0) throw new InvalidArgumentError(`"${pair}" is not key=value`);
        return { ...meta, [pair.slice(0, at)]: pair.slice(at + 1) };
      },
      {},
    )
    .option("--ttl <duration>", "TTL: heartbeat within it or the instance turns critical")
    .option("--weight <weight>", "1..1000", (text) => Number(text))
    .action(
      (
        service: string,
        id: string,
        options: ClientOptions & {
          address: string;
          port: number;
          tag: string[];
          meta: Record<string, string>;
          ttl?: string;
          weight?: number;
        },
      ) =>
        print(() =>
          people.register(output(options), {
            service,
            id,
            address: options.address,
            port: options.port,
            tags: options.tag,
            meta: options.meta,
            ...(options.ttl === undefined ? {} : { ttl: options.ttl }),
            ...(options.weight === undefined ? {} : { weight: options.weight }),
          }),
        ),
    ),
);
program.addCommand(
  clientCommand("deregister", "remove an instance")
    .argument("<service>", "service name")
    .argument("<id>", "instance id")
    .action((service: string, id: string, options: ClientOptions) =>
      print(() => people.deregister(output(options), service, id)),
    ),
);

const aclCommand = program
  .command("acl")
  .description("ACL tokens and policies (the cluster must run with --acl-enabled)");
const aclPolicy = aclCommand.command("policy").description("policies: rules on name prefixes");
const ruleOption = (text: string, rules: AclRule[]) => {
  try {
    return [...rules, parseRule(text)];
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
};
aclPolicy.addCommand(
  clientCommand("set", "create or replace a policy")
    .argument("<name>", "policy name")
    .requiredOption(
      "--rule <rule>",
      "service:PREFIX=read|write|deny, lock:PREFIX=..., election:PREFIX=..., session=..., cluster=..., acl=... (repeat for more)",
      ruleOption,
      [],
    )
    .option("--description <text>", "what the policy is for")
    .action((name: string, options: ClientOptions & { rule: AclRule[]; description?: string }) =>
      print(() => acl.setPolicy(output(options), name, options.rule, options.description)),
    ),
);
aclPolicy.addCommand(
  clientCommand("list", "every policy").action((options: ClientOptions) =>
    print(() => acl.listPolicies(output(options))),
  ),
);
aclPolicy.addCommand(
  clientCommand("read", "one policy")
    .argument("<name>", "policy name")
    .action((name: string, options: ClientOptions) =>
      print(() => acl.readPolicy(output(options), name)),
    ),
);
aclPolicy.addCommand(
  clientCommand("delete", "delete a policy (tokens that name it lose it)")
    .argument("<name>", "policy name")
    .action((name: string, options: ClientOptions) =>
      print(() => acl.deletePolicy(output(options), name)),
    ),
);
const aclToken = aclCommand.command("token").description("tokens: secrets that carry policies");
const policiesOption = (name: string, names: string[]) => [...names, name];
aclToken.addCommand(
  clientCommand("create", "make a token; its secret is printed this once")
    .option("--policy <name>", "a policy it carries (repeat for more)", policiesOption, [])
    .option("--description <text>", "who or what holds it")
    .action((options: ClientOptions & { policy: string[]; description?: string }) =>
      print(() => acl.createToken(output(options), options.policy, options.description)),
    ),
);
aclToken.addCommand(
  clientCommand("update", 'set a token\'s policies ("anonymous": what no token may do, and DNS)')
    .argument("<accessor>", "the token's accessor")
    .option("--policy <name>", "a policy it carries (repeat for more)", policiesOption, [])
    .option("--description <text>", "who or what holds it")
    .action(
      (accessor: string, options: ClientOptions & { policy: string[]; description?: string }) =>
        print(() =>
          acl.updateToken(output(options), accessor, options.policy, options.description),
        ),
    ),
);
aclToken.addCommand(
  clientCommand("list", "every token (accessors, never secrets)").action((options: ClientOptions) =>
    print(() => acl.listTokens(output(options))),
  ),
);
aclToken.addCommand(
  clientCommand("read", 'one token; "self" is the one given with --token')
    .argument("<accessor>", "the token's accessor, or self")
    .action((accessor: string, options: ClientOptions) =>
      print(() => acl.readToken(output(options), accessor)),
    ),
);
aclToken.addCommand(
  clientCommand("delete", "revoke a token on every node")
    .argument("<accessor>", "the token's accessor")
    .action((accessor: string, options: ClientOptions) =>
      print(() => acl.deleteToken(output(options), accessor)),
    ),
);

program.parseAsync(process.argv).catch((error: unknown) => {
  console.error(`muster: ${(error as Error).message}`);
  process.exit(2);
});
