import { Command } from "commander";
import { pino } from "pino";
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

program.parseAsync(process.argv).catch((error: unknown) => {
  console.error(`muster: ${(error as Error).message}`);
  process.exit(2);
});
