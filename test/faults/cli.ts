import { Command, InvalidArgumentError } from "commander";
import { type CampaignReport, campaignPassed, runCampaign } from "./campaign.js";
import { type FaultKind, faultKinds } from "./nemesis.js";

/** `npm run faults -- --minutes N [--seed S]`: a long fault campaign, one run per few minutes. */
function positive(text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0)
    throw new InvalidArgumentError("must be a positive number");
  return value;
}

function faultList(text: string): readonly FaultKind[] {
  const kinds = text.split(",").map((kind) => kind.trim());
  const unknown = kinds.find((kind) => !(faultKinds as readonly string[]).includes(kind));
  if (unknown !== undefined) throw new InvalidArgumentError(`unknown fault kind "${unknown}"`);
  return kinds as FaultKind[];
}

const options = new Command()
  .option("--minutes <n>", "total time of the campaign", positive, 10)
  .option("--run-minutes <n>", "time of each run (a fresh cluster each)", positive, 2)
  .option("--seed <n>", "seed of the first run (default: random)", positive)
  .option(
    "--faults <kinds>",
    `comma-separated fault kinds (default: all of ${faultKinds.join(", ")})`,
    faultList,
    faultKinds,
  )
  .parse()
  .opts<{ minutes: number; runMinutes: number; seed?: number; faults: readonly FaultKind[] }>();

const end = Date.now() + options.minutes * 60_000;
let seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
let failed = 0;
let runs = 0;
const totals: Record<string, number> = {};
/** One run's report, or why it stopped before its checks (a fault that never completed, say). */
async function runOnce(seed: number, durationMs: number): Promise<CampaignReport | Error> {
  try {
    return await runCampaign({
      seed,
      durationMs,
      faults: options.faults,
      lockWorkers: 3,
      liveInstances: 5,
      // Timed, so that a violation (which names its time) can be set beside the faults.
      log: (line) => console.log(`  ${new Date().toISOString()} ${line}`),
    });
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}

while (Date.now() < end) {
  const durationMs = Math.min(options.runMinutes * 60_000, Math.max(10_000, end - Date.now()));
  console.log(`run ${runs + 1}: seed ${seed}, ${Math.round(durationMs / 1000)} s`);
  const report = await runOnce(seed, durationMs);
  runs += 1;
  seed += 1;
  if (report instanceof Error) {
    failed += 1;
    console.log(`  FAILED: ${report.message}`, report.cause);
    continue;
  }
  for (const [kind, count] of Object.entries(report.faults))
    totals[kind] = (totals[kind] ?? 0) + count;
  const ok = campaignPassed(report);
  if (!ok) failed += 1;
  console.log(
    `  ${ok ? "ok" : "FAILED"}: ${report.operations} operations, ${JSON.stringify(report.counts)}, ` +
      `linearizability ${JSON.stringify(report.linearizability)}, stale ${report.staleViolation ?? "monotonic"}, ` +
      `locks ${JSON.stringify(report.locks)}, ttl ${JSON.stringify(report.ttl)}` +
      (report.logs === null ? "" : `; data and logs kept in ${report.logs}`),
  );
}
console.log(`${runs} runs, ${failed} failed; faults injected: ${JSON.stringify(totals)}`);
process.exit(failed === 0 ? 0 : 1);
