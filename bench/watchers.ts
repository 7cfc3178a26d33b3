import { connect, type Socket } from "node:net";
import { eventually } from "../test/integration/agents.js";

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

/** Watchers opened together, each from `seen`: waits fail as soon as one of them has. */
export interface WatcherGroup {
  readonly watchers: readonly Watcher[];
  /** Polls `done` until it holds (30 s at most). */
  until(what: string, done: () => boolean | Promise<boolean>): Promise<true>;
  close(): void;
}

export function watchAll(
  count: number,
  seen: number,
  open: (watcher: Watcher, n: number) => Watching,
): WatcherGroup {
  const watchers: Watcher[] = Array.from({ length: count }, () => ({ seen, seenAt: 0 }));
  const failures: unknown[] = [];
  const watching = watchers.map((watcher, n) => {
    const one = open(watcher, n);
    one.done.catch((error: unknown) => failures.push(error));
    return one;
  });
  return {
    watchers,
    until: (what, done) =>
      eventually(
        what,
        async () => {
          if (failures.length > 0) throw new Error(`a watcher failed: ${String(failures[0])}`);
          return (await done()) ? true : undefined;
        },
        30_000,
      ),
    close() {
      for (const one of watching) one.close();
    },
  };
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

/**
 * One Server-Sent Events stream on its own connection, in bare HTTP/1.1 like
 * watchBlocking. The agent writes each event in one chunk, so its `id:` line arrives whole
 * or split only by TCP, which the kept tail covers.
 */
export function watchStream(watcher: Watcher, address: string, path: string): Watching {
  const socket: Socket = connect(target(address));
  socket.setNoDelay(true);
  let closing = false;
  let started = false;
  let tail = "";
  const done = new Promise<void>((resolve, reject) => {
    socket.on("connect", () =>
      socket.write(`GET ${path}?index=${watcher.seen} HTTP/1.1\r\nHost: ${address}\r\n\r\n`),
    );
    socket.on("data", (chunk: Buffer) => {
      const at = performance.now();
      let text = tail + chunk.toString("latin1");
      if (!started) {
        const end = text.indexOf("\r\n\r\n");
        if (end < 0) {
          tail = text;
          return;
        }
        const status = text.slice(9, 12);
        if (status !== "200") {
          reject(new Error(`watch answered ${status}`));
          socket.destroy();
          return;
        }
        started = true;
        text = text.slice(end + 4);
      }
      for (const [, id] of text.matchAll(/\nid: (\d+)\n/g)) {
        const index = Number(id);
        if (index > watcher.seen) {
          watcher.seen = index;
          watcher.seenAt = at;
        }
      }
      tail = text.slice(Math.max(0, text.lastIndexOf("\n\n") + 1));
    });
    socket.on("error", (error) => (closing ? resolve() : reject(error)));
    socket.on("close", () =>
      closing ? resolve() : reject(new Error("the agent closed a watch stream")),
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
