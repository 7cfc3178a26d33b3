import { type Agent as HttpAgent, request as httpRequest } from "node:http";
import { connect, type Socket } from "node:net";

/** What one watcher has seen: the highest index, and when (performance.now()). */
export interface Watcher {
  seen: number;
  seenAt: number;
}

/** A watcher's connection: `done` rejects on a failure, close() ends it without one. */
export interface Watching {
  readonly done: Promise<void>;
  close(): void;
}

function target(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at), port: Number(address.slice(at + 1)) };
}

const headerEnd = Buffer.from("\r\n\r\n");

/**
 * Blocking queries one after the other on one keep-alive connection, in bare HTTP/1.1: the
 * load tool's own cost per answer stays small next to the agents', which is what is
 * measured (node:http's client cost the bench process more per answer than an agent spent
 * waking the watcher). The time is taken when the answer's first bytes arrive.
 */
export function watchBlocking(watcher: Watcher, address: string, path: string): Watching {
  const socket: Socket = connect(target(address));
  socket.setNoDelay(true);
  let closing = false;
  let buffered: Buffer = Buffer.alloc(0);
  let firstByteAt = 0;
  const ask = () =>
    socket.write(`GET ${path}?index=${watcher.seen}&wait=60s HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
  const done = new Promise<void>((resolve, reject) => {
    socket.on("connect", ask);
    socket.on("data", (chunk: Buffer) => {
      if (buffered.length === 0) firstByteAt = performance.now();
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf(headerEnd);
      if (end < 0) return;
      const head = buffered.toString("latin1", 0, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? Number.NaN);
      if (!Number.isFinite(length)) {
        reject(new Error(`a blocking query's answer has no content-length: ${head}`));
        socket.destroy();
        return;
      }
      if (buffered.length < end + 4 + length) return;
      const status = head.slice(9, 12);
      if (status !== "200") {
        reject(new Error(`blocking query answered ${status}`));
        socket.destroy();
        return;
      }
      const index = Number(/\r\nx-muster-index: *(\d+)/i.exec(head)?.[1] ?? Number.NaN);
      if (index > watcher.seen) {
        watcher.seen = index;
        watcher.seenAt = firstByteAt;
      }
      buffered = buffered.subarray(end + 4 + length);
      ask();
    });
    socket.on("error", (error) => (closing ? resolve() : reject(error)));
    socket.on("close", () =>
      closing ? resolve() : reject(new Error("the agent closed a blocking query's connection")),
    );
  });
  return {
    done,
    close() {
      closing = true;
      socket.destroy();
    },
  };
}

/** One Server-Sent Events stream; each event's id is the service's index. */
export function watchStream(
  watcher: Watcher,
  agent: HttpAgent,
  address: string,
  path: string,
): Watching {
  let closing = false;
  const done = new Promise<void>((resolve, reject) => {
    const sent = httpRequest(
      { ...target(address), agent, path: `${path}?index=${watcher.seen}` },
      (response) => {
        if (response.statusCode !== 200) reject(new Error(`watch answered ${response.statusCode}`));
        let buffered = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          const at = performance.now();
          buffered += chunk;
          for (let end = buffered.indexOf("\n\n"); end >= 0; end = buffered.indexOf("\n\n")) {
            const index = Number(/^id: (\d+)$/m.exec(buffered.slice(0, end))?.[1] ?? -1);
            buffered = buffered.slice(end + 2);
            if (index > watcher.seen) {
              watcher.seen = index;
              watcher.seenAt = at;
            }
          }
        });
        response.once("error", (error) => (closing ? resolve() : reject(error)));
        response.once("end", resolve);
      },
    );
    sent.once("error", (error) => (closing ? resolve() : reject(error)));
    sent.end();
  });
  return {
    done,
    close() {
      closing = true;
      agent.destroy();
    },
  };
}
