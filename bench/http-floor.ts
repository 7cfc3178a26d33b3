import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { type WatcherGroup, watchAll, watchBlocking, watchStream } from "./watchers.js";

/**
 * The floors under the watch latency: the same watchers and load tool against bare
 * node:http servers, one process per agent, that park each query (or hold each stream) and
 * answer all of them from memory, with an agent's answer body, when told the index moved.
 * No routing, validation, Raft or registry: what is left is node:http, the load tool and the
 * machine.
 */

const serverScript = fileURLToPath(new URL("./http-floor-server.ts", import.meta.url));
const listenTimeoutMs = 30_000;

function startServer(body: string, children: ChildProcess[]): Promise<string> {
  const child = fork(serverScript, [body], { execArgv: ["--import", "tsx"] });
  children.push(child);
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error("an http floor server did not listen in time")),
      listenTimeoutMs,
    );
    child.once("message", (port) => {
      clearTimeout(timer);
      resolve(`127.0.0.1:${Number(port)}`);
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", () => {
      clearTimeout(timer);
      reject(new Error("an http floor server exited before listening"));
    });
  });
}

/** POST to each server at once; resolves with when the first answer came (performance.now()). */
async function raiseIndex(addresses: readonly string[]): Promise<{ index: number; at: number }> {
  const answers = await Promise.all(
    addresses.map(async (address) => {
      const response = await fetch(`http://${address}/`, { method: "POST" });
      const at = performance.now();
      return { index: Number(await response.text()), at };
    }),
  );
  return {
    index: Math.max(...answers.map((answer) => answer.index)),
    at: Math.min(...answers.map((answer) => answer.at)),
  };
}

/**
 * Per (watcher, change) latencies in ms, from the first server's answer to the change (as
 * the agents' figure counts from the leader's answer to the PUT) to the watcher's first
 * bytes: `servers` processes, `watcherCount` watchers spread over them, `changes` measured
 * changes after `warmup` unmeasured ones.
 */
export async function httpFloorLatencies(options: {
  kind: "blocking" | "stream";
  servers: number;
  watcherCount: number;
  changes: number;
  warmup: number;
  body: string;
}): Promise<number[]> {
  const children: ChildProcess[] = [];
  let group: WatcherGroup | null = null;
  try {
    const addresses: string[] = [];
    for (let n = 0; n < options.servers; n++)
      addresses.push(await startServer(options.body, children));
    group = watchAll(options.watcherCount, 1, (watcher, n) => {
      const address = addresses[n % addresses.length] as string;
      return options.kind === "blocking"
        ? watchBlocking(watcher, address, "/watched")
        : watchStream(watcher, address, "/stream");
    });
    const { watchers, until } = group;
    const latencies: number[] = [];
    for (let change = 0; change < options.warmup + options.changes; change++) {
      await until("every watcher to be parked", async () => {
        const counts = await Promise.all(
          addresses.map(async (address) => (await fetch(`http://${address}/parked`)).text()),
        );
        return counts.reduce((sum, count) => sum + Number(count), 0) >= options.watcherCount;
      });
      const raised = await raiseIndex(addresses);
      await until(`every watcher to see index ${raised.index}`, () =>
        watchers.every((watcher) => watcher.seen >= raised.index),
      );
      if (change < options.warmup) continue;
      for (const watcher of watchers) latencies.push(watcher.seenAt - raised.at);
    }
    return latencies;
  } finally {
    group?.close();
    for (const child of children) child.kill();
  }
}
