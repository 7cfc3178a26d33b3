import { spawnSync } from "node:child_process";

export interface WrkRun {
  readonly url: string;
  readonly connections: number;
  readonly durationSeconds: number;
  /** A Lua script (path); without one wrk sends GETs to `url`. */
  readonly script?: string;
  /** Variables the script reads with os.getenv. */
  readonly env?: Readonly<Record<string, string>>;
}

export interface WrkFigures {
  readonly perSecond: number;
  /** Requests completed in the run. */
  readonly requests: number;
  readonly p50: string;
  readonly p99: string;
}

/** One wrk run (at most 2 threads, latency percentiles); throws unless every answer was 2xx. */
export function wrk(run: WrkRun): WrkFigures {
  const args = [
    `-t${Math.min(2, run.connections)}`,
    `-c${run.connections}`,
    `-d${run.durationSeconds}s`,
    "--latency",
    ...(run.script === undefined ? [] : ["-s", run.script]),
    run.url,
  ];
  const result = spawnSync("wrk", args, {
    encoding: "utf8",
    env: { ...process.env, ...run.env },
    timeout: (run.durationSeconds + 30) * 1000,
  });
  if (result.error !== undefined)
    throw new Error("this benchmark needs wrk: apt-get install -y wrk");
  if (result.status !== 0) throw new Error(`wrk ${args.join(" ")} failed:\n${result.stderr}`);
  const failed = /Non-2xx or 3xx responses: (\d+)/.exec(result.stdout)?.[1];
  if (failed !== undefined) throw new Error(`${failed} requests failed:\n${result.stdout}`);
  const requests = Number(/(\d+) requests in/.exec(result.stdout)?.[1] ?? 0);
  if (requests === 0) throw new Error(`wrk completed no request:\n${result.stdout}`);
  return {
    perSecond: Number(/Requests\/sec:\s+([\d.]+)/.exec(result.stdout)?.[1]),
    requests,
    p50: /\s50%\s+(\S+)/.exec(result.stdout)?.[1] ?? "?",
    p99: /\s99%\s+(\S+)/.exec(result.stdout)?.[1] ?? "?",
  };
}

export function perSecond(value: number): string {
  return Math.round(value).toLocaleString("en-US");
}
