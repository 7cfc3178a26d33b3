import { parseArgs } from "node:util";
import type { PlantedBug } from "../../raft/core/types.js";
import { formatCounts, nodeCountForSeed, runCampaign, runSeed } from "./campaign.js";

const usage = `usage: npm run sim -- [--seed N | --seeds COUNT [--first-seed N]] [--nodes 3,5] [--events N] [--bug NAME]
  --seed N        replay one seed and print its trace on failure
  --seeds COUNT   run a campaign of COUNT seeds
  --bug NAME      plant a known bug: commit-previous-term, vote-without-log-check,
                  vote-before-persist, apply-before-commit, read-before-term-commit`;

const bugs: readonly PlantedBug[] = [
  "commit-previous-term",
  "vote-without-log-check",
  "vote-before-persist",
  "apply-before-commit",
  "read-before-term-commit",
];

function fail(message: string): never {
  console.error(`${message}\n${usage}`);
  process.exit(2);
}

function positiveInteger(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0)
    fail(`--${name} must be a non-negative integer, got "${text}"`);
  return value;
}

const { values } = parseArgs({
  options: {
    seed: { type: "string" },
    seeds: { type: "string" },
    "first-seed": { type: "string" },
    nodes: { type: "string" },
    events: { type: "string" },
    bug: { type: "string" },
    help: { type: "boolean" },
  },
});
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const nodeCounts = (values.nodes ?? "3,5").split(",").map((n) => positiveInteger("nodes", n, 3));
if (nodeCounts.some((n) => n < 1 || n > 9)) fail("--nodes takes cluster sizes from 1 to 9");
const events = positiveInteger("events", values.events, 5000);
const bug = values.bug as PlantedBug | undefined;
if (bug !== undefined && !bugs.includes(bug)) fail(`--bug must be one of ${bugs.join(", ")}`);

if (values.seed !== undefined) {
  const seed = positiveInteger("seed", values.seed, 0);
  const result = runSeed(seed, nodeCountForSeed(seed, nodeCounts), events, bug, 400);
  console.log(
    `seed ${seed}: ${result.nodeCount} nodes, ${result.events} events, ${result.ok ? "ok" : "FAILED"}`,
  );
  console.log(`profile ${JSON.stringify(result.profile)}`);
  console.log(`injected ${formatCounts(result.counts)}`);
  if (!result.ok) {
    console.log(result.trace.join("\n"));
    console.log(`FAILED seed ${seed}: ${result.failure}`);
    process.exit(1);
  }
} else {
  const seeds = positiveInteger("seeds", values.seeds, 100);
  const firstSeed = positiveInteger("first-seed", values["first-seed"], 1);
  const started = performance.now();
  const result = runCampaign({
    firstSeed,
    seeds,
    events,
    nodeCounts,
    stopAtFailure: false,
    ...(bug === undefined ? {} : { plantedBug: bug }),
  });
  const seconds = (performance.now() - started) / 1000;
  for (const failure of result.failures) {
    console.log(`FAILED seed ${failure.seed} (${failure.nodeCount} nodes): ${failure.failure}`);
  }
  console.log(
    `${result.seedsRun} seeds, ${result.eventsRun} events, ${result.failures.length} failed, ${seconds.toFixed(1)} s`,
  );
  console.log(`injected ${formatCounts(result.counts)}`);
  if (result.failures.length > 0) {
    console.log(
      `replay one with: npm run sim -- --seed ${result.failures[0]?.seed} --nodes ${nodeCounts.join(",")}`,
    );
    process.exit(1);
  }
}
