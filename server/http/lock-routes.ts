import { randomUUID } from "node:crypto";
import { Type, type TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type Agent, okOrThrow } from "../agent.js";
import { parseDuration } from "../config.js";
import { MusterError } from "../errors.js";
import { type Lock, type LockKind, lockKey, type Session } from "../fsm/locks.js";
import { Duration, formatDuration, ReadQuery, sessionIdPattern } from "./schemas.js";
import { boundedWait, openEventStream, stillAllowed } from "./streams.js";

const defaultSessionTtlMs = 15_000;
const maxSessionTtlMs = 3_600_000;
const maxLockDelayMs = 60_000;
const maxWaitMs = 5 * 60_000;
/** Time for a forwarded blocking acquire to come back beyond its own wait. */
const answerMarginMs = 5000;

const SessionId = Type.String({ pattern: sessionIdPattern });
/** Slash-separated, without "." or ".." segments: a URL would resolve them. */
const LockName = Type.String({ pattern: "^(?!(.*/)?\\.{1,2}(/|$))[A-Za-z0-9._/-]{1,128}$" });
const SessionParams = Type.Object({ id: SessionId });
const NameParams = Type.Object({ name: LockName });
const Value = Type.String({ maxLength: 1024 });

const SessionBody = Type.Object(
  {
    ttl: Type.Optional(Duration),
    name: Type.Optional(Type.String({ maxLength: 128 })),
    behavior: Type.Optional(Type.Union([Type.Literal("release"), Type.Literal("delete")])),
    lockDelay: Type.Optional(Duration),
  },
  { additionalProperties: false },
);
const AcquireBody = Type.Object(
  { session: SessionId, value: Type.Optional(Value), wait: Type.Optional(Duration) },
  { additionalProperties: false },
);
const ReleaseBody = Type.Object({ session: SessionId }, { additionalProperties: false });
const CheckBody = Type.Object(
  { token: Type.Integer({ minimum: 1 }) },
  { additionalProperties: false },
);
const CampaignBody = Type.Object(
  { session: SessionId, value: Value, wait: Type.Optional(Duration) },
  { additionalProperties: false },
);

export function sessionView(session: Session) {
  return {
    id: session.id,
    name: session.name,
    ttl: formatDuration(session.ttlMs),
    behavior: session.behavior,
    lockDelay: formatDuration(session.lockDelayMs),
    createIndex: session.createIndex,
  };
}

function holderView(lock: Lock | undefined) {
  const holder = lock?.holder;
  if (holder === undefined || holder === null) return null;
  return {
    session: holder.session,
    token: holder.token,
    value: holder.value,
    since: new Date(holder.since).toISOString(),
  };
}

function lockView(agent: Agent, kind: LockKind, name: string) {
  const lock = agent.fsm.locks.lock(kind, name);
  return { lock, index: lock?.index ?? 0 };
}

function bounded(text: string | undefined, field: string, max: number): number {
  if (text === undefined) return 0;
  const ms = parseDuration(text);
  if (ms > max) {
    throw new MusterError(
      "MUSTER_ERR_BAD_REQUEST",
      `${field} must be at most ${formatDuration(max)}`,
      field,
    );
  }
  return ms;
}

interface AcquireOutcome {
  readonly acquired: boolean;
  readonly holder: ReturnType<typeof holderView>;
}

/**
 * Acquire on the leader; with a wait, queue behind the holder and watch until granted
 * (decided by the state machine, in arrival order) or the wait ends. The state machine
 * itself never grants a waiter past its wait, so a client that vanished is skipped.
 */
async function acquire(
  agent: Agent,
  request: FastifyRequest,
  reply: FastifyReply,
  kind: LockKind,
  name: string,
  session: string,
  value: string,
  waitMs: number,
): Promise<AcquireOutcome | null> {
  const outcome = await agent.forwardUnlessLeader(
    request,
    reply,
    async (): Promise<AcquireOutcome> => {
      const now = Date.now();
      const command = { kind, name, session, value, now };
      const result = okOrThrow(
        await agent.propose({
          op: "lock-acquire",
          ...command,
          waitUntil: waitMs > 0 ? now + waitMs : 0,
        }),
      );
      const granted = result.lock?.lock;
      if (result.lock?.acquired === true || waitMs === 0) {
        return { acquired: result.lock?.acquired === true, holder: holderView(granted) };
      }
      const mine = () => {
        const lock = agent.fsm.locks.lock(kind, name);
        return lock?.holder?.session === session ? lock : undefined;
      };
      const wait = boundedWait(reply, waitMs);
      try {
        while (mine() === undefined && !wait.signal.aborted) {
          await agent.watches.next(lockKey(kind, name), wait.signal);
        }
      } finally {
        wait.end();
      }
      const held = mine();
      if (held !== undefined) return { acquired: true, holder: holderView(held) };
      // Leave the queue now rather than at the wait's end; a grant that came first stands.
      const cancelled = await agent.propose({ op: "lock-cancel", ...command }).catch(() => null);
      const after =
        cancelled?.ok === true ? cancelled.lock?.lock : agent.fsm.locks.lock(kind, name);
      return {
        acquired: after?.holder?.session === session,
        holder: holderView(after),
      };
    },
    waitMs + answerMarginMs,
  );
  // Forwarded: the leader's answer has been passed on as it was.
  return reply.sent ? null : (outcome as AcquireOutcome);
}

/** 200 with the token when granted, 409 with whoever holds it otherwise; locks and elections
 * name the two fields differently. Null: the leader's forwarded answer was already sent. */
function answerAcquire(
  reply: FastifyReply,
  result: AcquireOutcome | null,
  won: "acquired" | "elected",
  holder: "holder" | "leader",
) {
  if (result === null) return reply;
  if (result.acquired && result.holder !== null) return { [won]: true, token: result.holder.token };
  return reply.code(409).send({ [won]: false, [holder]: result.holder });
}

/** Sessions, locks with fencing tokens, and elections built on locks. */
export function lockRoutes(agent: Agent) {
  return async (scope: FastifyInstance) => {
    const app = scope.withTypeProvider<TypeBoxTypeProvider>();

    app.post(
      "/v1/sessions",
      {
        schema: { body: SessionBody },
        // Every field has a default: a bare POST creates a session.
        preValidation: async (request) => {
          request.body ??= {};
        },
      },
      async (request, reply) => {
        const body = request.body;
        const ttlMs = body.ttl === undefined ? defaultSessionTtlMs : parseDuration(body.ttl);
        if (ttlMs < agent.minTtlMs || ttlMs > maxSessionTtlMs) {
          throw new MusterError(
            "MUSTER_ERR_BAD_REQUEST",
            `ttl must be between ${formatDuration(agent.minTtlMs)} and 1h`,
            "ttl",
          );
        }
        const lockDelayMs =
          body.lockDelay === undefined
            ? agent.config.lockDelayMs
            : bounded(body.lockDelay, "lockDelay", maxLockDelayMs);
        return agent.forwardUnlessLeader(request, reply, async () => {
          const result = okOrThrow(
            await agent.propose({
              op: "session-create",
              session: {
                id: randomUUID(),
                name: body.name ?? "",
                ttlMs,
                behavior: body.behavior ?? "release",
                lockDelayMs,
                client: agent.clientOf(request),
                owner: agent.acl.enabled ? request.caller.accessor : null,
              },
              maxPerClient: agent.config.maxSessionsPerClient,
            }),
          );
          if (result.session === undefined) throw new Error("session-create produced no session");
          return sessionView(result.session);
        });
      },
    );

    app.put(
      "/v1/sessions/:id/renew",
      { schema: { params: SessionParams } },
      async (request, reply) => {
        const renewed = await agent.renewSession(request, reply, request.params.id);
        return reply.sent ? renewed : sessionView(renewed as Session);
      },
    );

    app.delete("/v1/sessions/:id", { schema: { params: SessionParams } }, async (request, reply) =>
      agent.forwardUnlessLeader(request, reply, async () => {
        const { id } = request.params;
        agent.checkSessionOwner(request, id);
        okOrThrow(
          await agent.propose({ op: "session-end", id, reason: "deleted", now: Date.now() }),
        );
        return { id, deleted: true };
      }),
    );

    app.get(
      "/v1/sessions/:id",
      { schema: { params: SessionParams, querystring: ReadQuery } },
      async (request) => {
        await agent.read(request.query.consistency ?? "default");
        const session = agent.fsm.locks.session(request.params.id);
        if (session === undefined)
          throw new MusterError("MUSTER_ERR_NOT_FOUND", `no session ${request.params.id}`, "id");
        return sessionView(session);
      },
    );

    app.post(
      "/v1/locks/:name/acquire",
      { schema: { params: NameParams, body: AcquireBody } },
      async (request, reply) => {
        const { name } = request.params;
        const { session, value = "" } = request.body;
        const waitMs = bounded(request.body.wait, "wait", maxWaitMs);
        const result = await acquire(agent, request, reply, "lock", name, session, value, waitMs);
        return answerAcquire(reply, result, "acquired", "holder");
      },
    );

    app.post(
      "/v1/locks/:name/release",
      { schema: { params: NameParams, body: ReleaseBody } },
      async (request, reply) =>
        agent.write(
          request,
          reply,
          {
            op: "lock-release",
            kind: "lock",
            name: request.params.name,
            session: request.body.session,
            now: Date.now(),
          },
          () => ({ released: true }),
        ),
    );

    app.get(
      "/v1/locks/:name",
      { schema: { params: NameParams, querystring: ReadQuery } },
      async (request, reply) => {
        const view = await blockingLockRead(agent, request, reply, "lock", request.params.name);
        reply.header("X-Muster-Index", String(view.index));
        return {
          holder: holderView(view.lock),
          waiters: view.lock?.waiters.length ?? 0,
          index: view.index,
        };
      },
    );

    app.post(
      "/v1/locks/:name/check",
      { schema: { params: NameParams, body: CheckBody } },
      async (request, reply) => {
        await agent.read("linearizable");
        const holder = holderView(agent.fsm.locks.lock("lock", request.params.name));
        if (holder?.token === request.body.token) return { current: true, token: holder.token };
        return reply.code(409).send({ current: false, token: holder?.token ?? null });
      },
    );

    app.post(
      "/v1/elections/:name/campaign",
      { schema: { params: NameParams, body: CampaignBody } },
      async (request, reply) => {
        const { name } = request.params;
        const waitMs = bounded(request.body.wait, "wait", maxWaitMs);
        const result = await acquire(
          agent,
          request,
          reply,
          "election",
          name,
          request.body.session,
          request.body.value,
          waitMs,
        );
        return answerAcquire(reply, result, "elected", "leader");
      },
    );

    app.post(
      "/v1/elections/:name/resign",
      { schema: { params: NameParams, body: ReleaseBody } },
      async (request, reply) =>
        agent.write(
          request,
          reply,
          {
            op: "lock-release",
            kind: "election",
            name: request.params.name,
            session: request.body.session,
            now: Date.now(),
          },
          () => ({ resigned: true }),
        ),
    );

    app.get(
      "/v1/elections/:name",
      { schema: { params: NameParams, querystring: ReadQuery } },
      async (request, reply) => {
        const view = await blockingLockRead(agent, request, reply, "election", request.params.name);
        reply.header("X-Muster-Index", String(view.index));
        return { leader: holderView(view.lock), index: view.index };
      },
    );

    app.get(
      "/v1/watch/elections/:name",
      { schema: { params: NameParams } },
      async (request, reply) => {
        const { name } = request.params;
        await agent.read("default");
        const stream = openEventStream(reply, agent.stalenessHeaders());
        // Observers hear of each change of leader, "no leader" included, not of queue changes:
        // each is noted as its entry applies, even when several apply in one batch.
        const key = lockKey("election", name);
        const pending: { id: number; data: string }[] = [];
        let last: number | null | undefined;
        const note = () => {
          const view = lockView(agent, "election", name);
          const leader = holderView(view.lock);
          const token = leader?.token ?? null;
          if (token === last) return;
          last = token;
          const data = JSON.stringify({ leader, index: view.index });
          pending.push({ id: view.index, data });
        };
        note();
        const unsubscribe = agent.fsm.onChange((changed) => {
          if (changed === key || changed === null) note();
        });
        try {
          watching: while (!stream.gone.aborted) {
            if (!stillAllowed(request, stream)) break;
            for (let event = pending.shift(); event !== undefined; event = pending.shift()) {
              if (!stream.send(event.id, "leader", event.data)) break watching;
            }
            await agent.watches.next(key, stream.gone);
          }
        } finally {
          unsubscribe();
          stream.close();
        }
      },
    );
  };
}

async function blockingLockRead(
  agent: Agent,
  request: FastifyRequest,
  reply: FastifyReply,
  kind: LockKind,
  name: string,
) {
  const query = request.query as {
    consistency?: "stale" | "default" | "linearizable";
    index?: number;
    wait?: string;
  };
  await agent.read(query.consistency ?? "default");
  let view = lockView(agent, kind, name);
  if (query.index === undefined || view.index > query.index) return view;
  const waitMs = Math.min(
    query.wait === undefined ? maxWaitMs : parseDuration(query.wait),
    maxWaitMs,
  );
  const wait = boundedWait(reply, waitMs);
  try {
    while (view.index <= query.index && !wait.signal.aborted) {
      await agent.watches.next(lockKey(kind, name), wait.signal);
      request.reauthorize();
      view = lockView(agent, kind, name);
    }
    return view;
  } finally {
    wait.end();
  }
}
