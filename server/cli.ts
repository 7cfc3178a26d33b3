import { Command, InvalidArgumentError, Option } from "commander";
import { Packet } from "dns2";
import { pino } from "pino";
import { formatResponse, queryDns } from "../dns/client.js";
import { Agent } from "./agent.js";
import { agentOptions, resolveConfig } from "./config.js";

const shutdownLimitMs = 5000;

async function runAgent(command: Command): Promise<void> {
  const config = resolveConfig(command);
  let agent: Agent | null = null;
  const logger = pino({
    level: config.logLevel,
    base: { node: config.nodeId },
    mixin: () => {
      const status = agent?.status();
      return status === undefined ? {} : { term: status.term, role: status.role };
    },
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

program.parseAsync(process.argv).catch((error: unknown) => {
  console.error(`muster: ${(error as Error).message}`);
  process.exit(2);
});
