import { request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import { setImmediate as nextTurn } from "node:timers/promises";
import Fastify from "fastify";
import { afterEach, describe, expect, it, vi } from "vitest";
import { boundedWait } from "../../../server/http/streams.js";
import { Watches } from "../../../server/watches.js";

/** Which of `parked` have resolved so far. */
function woken(parked: Record<string, Promise<void>>): Promise<string[]> {
  const seen: string[] = [];
  for (const [name, promise] of Object.entries(parked)) void promise.then(() => seen.push(name));
  return Promise.resolve().then(() => seen);
}

describe("Watches", () => {
  it("wakes the changed service's watchers and the list's, on the next turn, and nobody else", async () => {
    const watches = new Watches();
    const never = new AbortController().signal;
    const seen: string[] = [];
    const park = (name: string, service: string | null) =>
      watches.next(service, never).then(() => seen.push(name));
    void park("web-1", "web");
    void park("web-2", "web");
    void park("db", "db");
    void park("list", null);
    expect(watches.size).toBe(4);

    watches.changed("web");
    for (let tick = 0; tick < 10; tick++) await Promise.resolve();
    // Not in the turn of the change: the I/O that turn started goes out first.
    expect(seen).toEqual([]);
    await nextTurn();
    expect(seen.sort()).toEqual(["list", "web-1", "web-2"]);
    expect(watches.size).toBe(1);

    watches.changed(null);
    await nextTurn();
    expect(seen).toContain("db");
    expect(watches.size).toBe(0);
  });

  it("wakes a lock's watchers on its change, and neither the service list's nor a service's", async () => {
    const watches = new Watches();
    const never = new AbortController().signal;
    const seen: string[] = [];
    const park = (name: string, key: string | null) =>
      watches.next(key, never).then(() => seen.push(name));
    void park("lock", "lock:jobs");
    void park("election", "election:jobs");
    void park("list", null);
    void park("web", "web");
    watches.changed("lock:jobs");
    await nextTurn();
    expect(seen).toEqual(["lock"]);
    watches.changed("election:jobs");
    await nextTurn();
    expect(seen).toEqual(["lock", "election"]);
    expect(watches.size).toBe(2);
  });

  it("wakes a watcher once for several changes in one turn, and at once when its signal aborts", async () => {
    const watches = new Watches();
    let wakes = 0;
    const park = () => watches.next("web", new AbortController().signal).then(() => wakes++);
    void park();
    watches.changed("web");
    watches.changed("web");
    watches.changed("db");
    await nextTurn();
    expect(wakes).toBe(1);

    const gone = new AbortController();
    const parked = watches.next("web", gone.signal);
    expect(await woken({ parked })).toEqual([]);
    gone.abort();
    await parked;
    expect(watches.size).toBe(0);
  });
});

describe("boundedWait", () => {
  const originalSetTimeout = globalThis.setTimeout;
  const originalClearTimeout = globalThis.clearTimeout;
  const apps: ReturnType<typeof Fastify>[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const app of apps.splice(0)) await app.close();
  });

  /** A route that waits up to ?ms= for a change of "web" and says how the wait ended. */
  async function waitingApp(watches: Watches) {
    const app = Fastify();
    apps.push(app);
    const ended: string[] = [];
    app.get<{ Querystring: { ms: string } }>("/wait", async (request, reply) => {
      const wait = boundedWait(reply, Number(request.query.ms));
      try {
        await watches.next("web", wait.signal);
        const how = wait.signal.aborted ? "aborted" : "changed";
        ended.push(how);
        return { how };
      } finally {
        wait.end();
      }
    });
    await app.listen({ host: "127.0.0.1", port: 0 });
    return { app, ended, port: (app.server.address() as AddressInfo).port };
  }

  /** Timers set for `ms` and whether each was cleared: counting all of the process's timers is racy. */
  function watchTimers(ms: number) {
    const set: unknown[] = [];
    const cleared = new Set<unknown>();
    const setSpy = vi.spyOn(globalThis, "setTimeout");
    const clearSpy = vi.spyOn(globalThis, "clearTimeout");
    setSpy.mockImplementation(((fn: () => void, delay?: number, ...args: unknown[]) => {
      const handle: unknown = Reflect.apply(originalSetTimeout, globalThis, [fn, delay, ...args]);
      if (delay === ms) set.push(handle);
      return handle;
    }) as typeof setTimeout);
    clearSpy.mockImplementation(((handle?: Parameters<typeof clearTimeout>[0]) => {
      cleared.add(handle);
      originalClearTimeout(handle);
    }) as typeof clearTimeout);
    return { set, uncleared: () => set.filter((handle) => !cleared.has(handle)) };
  }

  it("ends at its bound, and leaves no timer behind when answered before it", async () => {
    const watches = new Watches();
    const { app } = await waitingApp(watches);
    expect((await app.inject("/wait?ms=50")).json()).toEqual({ how: "aborted" });

    const timers = watchTimers(600_000);
    const answers = Array.from({ length: 20 }, () => app.inject("/wait?ms=600000"));
    for (let turn = 0; turn < 100 && watches.size < 20; turn++) await nextTurn();
    expect(watches.size).toBe(20);
    expect(timers.set).toHaveLength(20);
    expect(timers.uncleared()).toHaveLength(20);
    watches.changed("web");
    for (const answer of await Promise.all(answers))
      expect(answer.json()).toEqual({ how: "changed" });
    expect(timers.uncleared()).toEqual([]);
  });

  it("aborts when the client goes away", async () => {
    const watches = new Watches();
    const { ended, port } = await waitingApp(watches);
    const sent = httpRequest({ host: "127.0.0.1", port, path: "/wait?ms=600000" });
    sent.on("error", () => {});
    sent.end();
    for (let turn = 0; turn < 200 && watches.size < 1; turn++) await nextTurn();
    expect(watches.size).toBe(1);
    sent.destroy();
    for (let turn = 0; turn < 200 && ended.length < 1; turn++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(ended).toEqual(["aborted"]);
  });
});
