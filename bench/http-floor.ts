import { type ChildProcess, fork } from "node:child_process";
import { createServer, type ServerResponse } from "node:http";
import { fileURLToPath } from "node:url";
import { type Watcher, type Watching, watchBlocking } from "./watchers.js";

/**
 * The floor under the blocking-query watch latency: the same watchers and load tool against
 * bare node:http servers, one process per agent, that park each query and answer all of
 * them from memory, with an agent's answer body, when told the index moved. No routing,
 * validation, Raft or registry: what is left is node:http and the machine.
 */

const self = fileURLToPath(import.meta.url);

/** In the child: serve until the parent goes. */
function serve(body: string): void {
  let index = 1;
  let parked: ServerResponse[] = [];
  const length = String(Buffer.byteLength(body));
  const answer = (response: ServerResponse) => {
    response.writeHead(200, {
      "content-type": "application/json; charset=utf-8",
      "content-length": length,
      "x-muster-index": String(index),
    });
    response.end(body);
  };
  const server = createServer((request, response) => {
    if (request.method === "POST") {
      index++;
      const woken = parked;
      parked = [];
      response.end(String(index));
      for (const one of woken) answer(one);
      return;
    }
    if (request.url === "/parked") {
      response.end(String(parked.length));
      return;
    }
    const asked = Number(/[?&]index=(\d+)/.exec(request.url ?? "")?.[1] ?? 0);
    if (asked < index) answer(response);
    else parked.push(response);
  });
  server.listen(0, "127.0.0.1", () => {
    const address = server.address();
    if (address !== null && typeof address === "object") process.send?.(address.port);
  });
  process.on("disconnect", () => process.exit(0));
}

if (process.argv[2] === "--serve") serve(process.argv[3] ?? "{}");

async function get(address: string, path: string, method = "GET"): Promise<string> {
  const response = await fetch(`http://${address}${path}`, { method });
  return response.text();
}

/**
 * Per (watcher, change) latencies in ms, from the moment every server has answered the
 * change to the watcher's first bytes: `servers` processes, `watcherCount` watchers spread
 * over them, `changes` measured changes after `warmup` unmeasured ones.
 */
export async function httpFloorLatencies(options: {
  servers: number;
  watcherCount: number;
  changes: number;
  warmup: number;
  body: string;
}): Promise<number[]> {
  const children: ChildProcess[] = [];
  const watching: Watching[] = [];
  try {
    const addresses: string[] = [];
    for (let n = 0; n < options.servers; n++) {
      const child = fork(self, ["--serve", options.body], { execArgv: ["--import", "tsx"] });
      children.push(child);
      const port = await new Promise<number>((resolve, reject) => {
        child.once("message", (message) => resolve(Number(message)));
        child.once("exit", () => reject(new Error("an http floor server exited before listening")));
      });
      addresses.push(`127.0.0.1:${port}`);
    }
    const watchers: Watcher[] = Array.from({ length: options.watcherCount }, () => ({
      seen: 1,
      seenAt: 0,
    }));
    const failures: unknown[] = [];
    watchers.forEach((watcher, n) => {
      const one = watchBlocking(watcher, addresses[n % addresses.length] as string, "/watched");
      one.done.catch((error: unknown) => failures.push(error));
      watching.push(one);
    });
    const until = async (what: string, done: () => Promise<boolean> | boolean) => {
      const deadline = performance.now() + 30_000;
      while (!(await done())) {
        if (failures.length > 0) throw new Error(`a watcher failed: ${String(failures[0])}`);
        if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    };
    const latencies: number[] = [];
    for (let change = 0; change < options.warmup + options.changes; change++) {
      await until("every watcher to be parked", async () => {
        const counts = await Promise.all(addresses.map((address) => get(address, "/parked")));
        return counts.reduce((sum, count) => sum + Number(count), 0) >= options.watcherCount;
      });
      const indexes = await Promise.all(addresses.map((address) => get(address, "/", "POST")));
      const answered = performance.now();
      const index = Number(indexes[0]);
      await until(`every watcher to see index ${index}`, () =>
        watchers.every((watcher) => watcher.seen >= index),
      );
      if (change < options.warmup) continue;
      for (const watcher of watchers) latencies.push(watcher.seenAt - answered);
    }
    return latencies;
  } finally {
    for (const one of watching) one.close();
    for (const child of children) child.kill();
  }
}
