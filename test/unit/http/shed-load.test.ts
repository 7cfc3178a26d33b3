import Fastify from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { MusterError } from "../../../server/errors.js";
import { shedLoad } from "../../../server/http/limits.js";

const apps: ReturnType<typeof Fastify>[] = [];
afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
});

/** An app with the agent's load shedding and error shape, and one route. */
async function appShedding(maxEventLoopDelayMs: number | null) {
  const app = Fastify();
  apps.push(app);
  shedLoad(app, { rateLimit: 0, maxWatchesPerClient: 1, maxWatches: 1, maxEventLoopDelayMs });
  app.setErrorHandler((error, _request, reply) => {
    if (!(error instanceof MusterError)) throw error;
    return reply.code(error.status).header("Retry-After", "1").send(error.toJSON());
  });
  app.get("/work", async () => ({ ok: true }));
  await app.ready();
  return app;
}

/** Keeps the event loop blocked in 200 ms stretches for `ms`, letting timers run between. */
async function lagFor(ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const stretch = Date.now() + 200;
    while (Date.now() < stretch) {
      // Busy: the loop cannot turn.
    }
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

describe("load shedding", () => {
  it("answers 503 in the API's error shape while the event loop lags, and serves again after", async () => {
    const app = await appShedding(50);
    expect((await app.inject("/work")).statusCode).toBe(200);
    await lagFor(1500);
    const shed = await app.inject("/work");
    expect(shed.statusCode).toBe(503);
    expect(shed.headers["retry-after"]).toBe("1");
    expect(shed.json()).toEqual({
      error: {
        code: "MUSTER_ERR_OVERLOADED",
        message: expect.stringMatching(
          /event loop lags \d+ ms, over 50 ms \(--max-event-loop-delay\)/,
        ),
      },
    });
    let served = false;
    for (let attempt = 0; attempt < 40 && !served; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      served = (await app.inject("/work")).statusCode === 200;
    }
    expect(served).toBe(true);
  });

  it("never sheds when no limit is set", async () => {
    const app = await appShedding(null);
    await lagFor(1000);
    expect((await app.inject("/work")).statusCode).toBe(200);
  });
});
