import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AgentCluster, eventually, type HttpAnswer, serverSentEvents, sleep } from "./agents.js";

const ids = ["n1", "n2", "n3"];
let cluster: AgentCluster;
beforeEach(async () => {
  cluster = await AgentCluster.create({
    args: ["--ttl-checkpoint-interval=1s", "--lock-delay=1s"],
  });
  await cluster.bootstrap(ids);
  await cluster.leader();
});
afterEach(async () => {
  await cluster.destroy();
});

function running(): string[] {
  return cluster.running().map((agent) => agent.id);
}

/** A request through `via`, and on failure (a killed node, no leader yet) through the others. */
async function call(
  via: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<HttpAnswer> {
  const deadline = Date.now() + 30_000;
  for (let attempt = 0; ; attempt++) {
    const nodes = running();
    const node = nodes.includes(via) ? via : (nodes[attempt % nodes.length] ?? via);
    const target = attempt === 0 ? node : (nodes[attempt % nodes.length] ?? node);
    const answer = await cluster.request(target, method, path, body).catch(() => null);
    if (answer !== null && answer.status !== 503) return answer;
    if (Date.now() > deadline) throw new Error(`${method} ${path} failed through every node`);
    await sleep(100);
  }
}

async function createSession(via: string, body: Record<string, unknown> = {}): Promise<string> {
  const answer = await call(via, "POST", "/v1/sessions", body);
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  return answer.body.id as string;
}

/** Renews `session` every `everyMs` through the running nodes until stopped. */
function keepAlive(session: string, everyMs: number) {
  let stopped = false;
  const loop = (async () => {
    let turn = 0;
    while (!stopped) {
      const via = running()[turn++ % running().length] ?? "n1";
      await cluster.request(via, "PUT", `/v1/sessions/${session}/renew`).catch(() => null);
      await sleep(everyMs);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
  };
}

/** Acquire, waiting in the queue; retried through other nodes if the one asked goes away. */
async function acquire(via: string, name: string, session: string, value = ""): Promise<number> {
  for (;;) {
    const answer = await call(via, "POST", `/v1/locks/${name}/acquire`, {
      session,
      value,
      wait: "20s",
    });
    if (answer.status === 200) return answer.body.token as number;
    expect(answer.status, JSON.stringify(answer.body)).toBe(409);
  }
}

describe("locks with fencing tokens on a three-node cluster", () => {
  it("keeps 30 contending clients on all nodes mutually exclusive, tokens strictly increasing", async () => {
    const clients = 30;
    const rounds = 10;
    const accepted: { token: number; start: number; end: number }[] = [];
    let rejected = 0;
    let inside = 0;
    let overlaps = 0;
    /** The guarded resource: it asks whether a token is still current before each write. */
    const enter = async (via: string, token: number): Promise<boolean> => {
      const check = await call(via, "POST", "/v1/locks/job/check", { token });
      if (check.status !== 200) {
        rejected++;
        return false;
      }
      const last = accepted.at(-1);
      if (last !== undefined && token <= last.token) return false;
      inside++;
      if (inside > 1) overlaps++;
      const start = performance.now();
      await sleep(1);
      inside--;
      accepted.push({ token, start, end: performance.now() });
      return true;
    };
    const worker = async (client: number) => {
      const via = ids[client % ids.length] ?? "n1";
      const session = await createSession(via);
      const stop = keepAlive(session, 2000);
      try {
        for (let round = 0; round < rounds; round++) {
          const token = await acquire(via, "job", session, `client-${client}`);
          await enter(via, token);
          const released = await call(via, "POST", "/v1/locks/job/release", { session });
          expect(released.status, JSON.stringify(released.body)).toBe(200);
        }
      } finally {
        await stop();
      }
    };
    await Promise.all(Array.from({ length: clients }, (_, client) => worker(client)));
    expect(overlaps).toBe(0);
    expect(rejected).toBe(0);
    expect(accepted).toHaveLength(clients * rounds);
    for (let i = 1; i < accepted.length; i++) {
      const [previous, current] = [accepted[i - 1], accepted[i]];
      expect(current?.token).toBeGreaterThan(previous?.token ?? 0);
      expect(current?.start).toBeGreaterThanOrEqual(previous?.end ?? 0);
    }
  }, 120_000);

  it("a holder that stops renewing loses the lock after its TTL, and nobody gets it before lockDelay", async () => {
    const holder = await createSession("n1", { ttl: "2s", lockDelay: "1s" });
    const created = Date.now();
    expect((await call("n2", "POST", "/v1/locks/job/acquire", { session: holder })).status).toBe(
      200,
    );
    const waiter = await createSession("n3");
    const stop = keepAlive(waiter, 1000);
    await acquire("n3", "job", waiter);
    const granted = Date.now();
    await stop();
    // TTL 2 s from creation, then the 1 s lockDelay; at most TTL + checkpoint interval +
    // election timeout (here no failover: TTL) plus lockDelay, plus the lessor's tick.
    expect(granted - created).toBeGreaterThanOrEqual(3000 - 150);
    expect(granted - created).toBeLessThanOrEqual(3000 + 1000);
    expect((await call("n1", "GET", `/v1/sessions/${holder}`)).status).toBe(404);
  });

  it("a kill -9 of the leader leaves the lock with its holder, and waiters get it in order after", async () => {
    const holder = await createSession("n1", { ttl: "2s" });
    const stopHolder = keepAlive(holder, 500);
    const first = await call("n1", "POST", "/v1/locks/job/acquire", { session: holder });
    expect(first.status).toBe(200);
    const order: string[] = [];
    const waiters = ["b", "c"].map(async (name, position) => {
      await sleep(position * 500);
      const session = await createSession("n2");
      const stop = keepAlive(session, 500);
      const token = await acquire(ids[position + 1] ?? "n2", "job", session, name);
      order.push(name);
      await call("n2", "POST", "/v1/locks/job/release", { session });
      await stop();
      return token;
    });
    await eventually("both waiters to be queued", async () => {
      const lock = await call("n1", "GET", "/v1/locks/job?consistency=linearizable");
      return lock.body.waiters === 2 ? true : undefined;
    });
    const leader = await cluster.leader();
    await cluster.kill(leader, "SIGKILL");
    await cluster.leader();
    // Longer than the holder's TTL: it renews through the survivors and keeps the lock.
    await sleep(3000);
    const survivor = running()[0] ?? "n1";
    const lock = await call(survivor, "GET", "/v1/locks/job?consistency=linearizable");
    expect(lock.body.holder).toMatchObject({ session: holder, token: first.body.token });
    expect(order).toEqual([]);
    await call(survivor, "POST", "/v1/locks/job/release", { session: holder });
    await stopHolder();
    const tokens = await Promise.all(waiters);
    expect(order).toEqual(["b", "c"]);
    expect(tokens[0]).toBeGreaterThan(first.body.token as number);
    expect(tokens[1]).toBeGreaterThan(tokens[0] ?? 0);
  }, 60_000);

  it("elects one of 5 candidates at a time; resignation and a dead session pass leadership on", async () => {
    const events: { leader: string | null; token: number | null }[] = [];
    const controller = new AbortController();
    const stream = await fetch(`http://${cluster.get("n2").http}/v1/watch/elections/primary`, {
      signal: controller.signal,
    });
    const observing = (async () => {
      for await (const { data } of serverSentEvents(stream.body)) {
        const view = data as { leader: { value: string; token: number } | null };
        events.push({ leader: view.leader?.value ?? null, token: view.leader?.token ?? null });
      }
    })().catch(() => undefined);
    const terms: { value: string; from: number; to: number }[] = [];
    const candidate = async (n: number) => {
      const via = ids[n % ids.length] ?? "n1";
      const session = await createSession(via, { ttl: "2s", lockDelay: "0s" });
      const stop = keepAlive(session, 500);
      for (;;) {
        const answer = await call(via, "POST", "/v1/elections/primary/campaign", {
          session,
          value: `c${n}`,
          wait: "20s",
        });
        if (answer.status === 200) break;
      }
      const from = performance.now();
      await sleep(200);
      const to = performance.now();
      terms.push({ value: `c${n}`, from, to });
      if (n % 2 === 0) {
        await call(via, "POST", "/v1/elections/primary/resign", { session });
        await stop();
      } else {
        // Its session dies: leadership passes on once the TTL runs out.
        await stop();
      }
    };
    await Promise.all(Array.from({ length: 5 }, (_, n) => candidate(n)));
    await eventually("the observer to see the last change", async () =>
      events.filter((event) => event.leader !== null).length >= 5 ? true : undefined,
    );
    controller.abort();
    await observing;
    terms.sort((a, b) => a.from - b.from);
    for (let i = 1; i < terms.length; i++) {
      expect(terms[i]?.from).toBeGreaterThanOrEqual(terms[i - 1]?.to ?? 0);
    }
    const leaders = events.filter((event) => event.leader !== null);
    expect(leaders.map((event) => event.leader)).toEqual(terms.map((term) => term.value));
    const tokens = leaders.map((event) => event.token ?? 0);
    expect(tokens).toEqual([...tokens].sort((a, b) => a - b));
    expect(events.some((event) => event.leader === null)).toBe(true);
  }, 60_000);

  it("a client that gives up waiting leaves the queue and is never handed the lock", async () => {
    const holder = await createSession("n1");
    expect((await call("n1", "POST", "/v1/locks/job/acquire", { session: holder })).status).toBe(
      200,
    );
    for (const via of ["n1", "n2"]) {
      const quitter = await createSession(via);
      const controller = new AbortController();
      const waiting = fetch(`http://${cluster.get(via).http}/v1/locks/job/acquire`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ session: quitter, wait: "20s" }),
        signal: controller.signal,
      }).catch(() => null);
      await eventually("the waiter to be queued", async () => {
        const lock = await call("n3", "GET", "/v1/locks/job?consistency=linearizable");
        return lock.body.waiters === 1 ? true : undefined;
      });
      controller.abort();
      await waiting;
      await eventually("the waiter to leave the queue", async () => {
        const lock = await call("n3", "GET", "/v1/locks/job?consistency=linearizable");
        return lock.body.waiters === 0 ? true : undefined;
      });
    }
    await call("n2", "POST", "/v1/locks/job/release", { session: holder });
    const lock = await call("n3", "GET", "/v1/locks/job?consistency=linearizable");
    expect(lock.body.holder).toBeNull();
  });

  it("a session with behavior delete takes its instances with it; release keeps them", async () => {
    const deleting = await createSession("n1", { behavior: "delete" });
    const releasing = await createSession("n2");
    for (const [id, session] of [
      ["d1", deleting],
      ["r1", releasing],
    ] as const) {
      const answer = await call("n3", "PUT", `/v1/services/web/instances/${id}`, {
        address: "10.0.0.1",
        port: 80,
        session,
      });
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      expect(answer.body.session).toBe(session);
    }
    const unknown = await call("n1", "PUT", "/v1/services/web/instances/x1", {
      address: "10.0.0.1",
      port: 80,
      session: "00000000-0000-0000-0000-000000000000",
    });
    expect(unknown.status).toBe(404);
    expect((await call("n2", "DELETE", `/v1/sessions/${deleting}`)).status).toBe(200);
    expect((await call("n1", "DELETE", `/v1/sessions/${releasing}`)).status).toBe(200);
    const web = await call("n3", "GET", "/v1/services/web?consistency=linearizable");
    expect((web.body.instances as { id: string }[]).map((i) => i.id)).toEqual(["r1"]);
  });

  it("answers bad input with the right status and field, and changes nothing", async () => {
    const session = await createSession("n1");
    const other = await createSession("n2");
    expect((await call("n3", "POST", "/v1/locks/job/acquire", { session })).status).toBe(200);
    const before = await call("n1", "GET", "/v1/locks/job?consistency=linearizable");
    const unknown = "00000000-0000-0000-0000-000000000000";
    const cases: [string, string, unknown, number, string | undefined][] = [
      ["POST", "/v1/locks/job/acquire", { session: unknown }, 404, undefined],
      ["POST", "/v1/locks/job/release", { session: other }, 409, undefined],
      ["POST", "/v1/locks/job/release", { session: unknown }, 404, undefined],
      ["POST", "/v1/locks/job/acquire", { session: "not-a-session" }, 400, "session"],
      ["POST", "/v1/locks/job/acquire", { session, wait: "10 s" }, 400, "wait"],
      ["POST", "/v1/locks/job/acquire", { session, wait: "6m" }, 400, "wait"],
      ["POST", "/v1/locks/job/acquire", { session, extra: 1 }, 400, "extra"],
      ["POST", "/v1/locks/bad%20name/acquire", { session }, 400, "name"],
      ["POST", "/v1/locks/job/check", { token: "7" }, 400, "token"],
      ["POST", "/v1/sessions", { ttl: "1s" }, 400, "ttl"],
      ["POST", "/v1/sessions", { ttl: "2h" }, 400, "ttl"],
      ["POST", "/v1/sessions", { ttl: "abc" }, 400, "ttl"],
      ["POST", "/v1/sessions", { lockDelay: "2m" }, 400, "lockDelay"],
      ["POST", "/v1/sessions", { behavior: "keep" }, 400, "behavior"],
      ["PUT", `/v1/sessions/${unknown}/renew`, undefined, 404, "id"],
      ["DELETE", `/v1/sessions/${unknown}`, undefined, 404, undefined],
      ["GET", `/v1/sessions/${unknown}`, undefined, 404, "id"],
      ["POST", "/v1/elections/primary/campaign", { session }, 400, "value"],
      ["POST", "/v1/elections/primary/resign", { session: other }, 409, undefined],
    ];
    for (const [position, [method, path, body, status, field]] of cases.entries()) {
      const answer = await call(ids[position % 3] ?? "n1", method, path, body);
      const error = answer.body.error as { code: string; field?: string } | undefined;
      expect([method, path, answer.status], JSON.stringify(answer.body)).toEqual([
        method,
        path,
        status,
      ]);
      expect(error?.field, `${method} ${path}`).toBe(field);
    }
    const after = await call("n1", "GET", "/v1/locks/job?consistency=linearizable");
    expect(after.body.holder).toEqual(before.body.holder);
    expect(after.body.waiters).toBe(0);
    expect((await call("n2", "GET", `/v1/sessions/${other}`)).status).toBe(200);
  });
});
