import type { FastifyReply, FastifyRequest } from "fastify";
import { MusterError } from "../errors.js";

/** What a watch stream may hold for a client that does not read before it is dropped. */
const maxUnreadBytes = 1024 * 1024;

/**
 * Aborts `controller` when the client goes away before its answer is sent; returns the
 * listener. The request's own "close" fires once its body is read (Node 20), so it is the
 * response that tells.
 */
function abortWhenGone(reply: FastifyReply, controller: AbortController): () => void {
  const response = reply.raw;
  const onClose = () => {
    if (!response.writableFinished) controller.abort();
  };
  if (response.destroyed && !response.writableFinished) controller.abort();
  response.once("close", onClose);
  return onClose;
}

/** Aborts when the client goes away before its answer is sent. */
export function clientGone(reply: FastifyReply): AbortSignal {
  const gone = new AbortController();
  abortWhenGone(reply, gone);
  return gone.signal;
}

/** A bounded wait for a parked request: `signal` aborts when the client goes or time is up. */
export interface Wait {
  readonly signal: AbortSignal;
  /** Clears the timer: a wait that ends early leaves nothing behind until its bound. */
  end(): void;
}

export function boundedWait(reply: FastifyReply, ms: number): Wait {
  const ended = new AbortController();
  const timer = setTimeout(() => ended.abort(), ms);
  const onClose = abortWhenGone(reply, ended);
  return {
    signal: ended.signal,
    end() {
      clearTimeout(timer);
      reply.raw.off("close", onClose);
    },
  };
}

/** SSE comment lines keep proxies from closing an idle stream. */
const keepAliveMs = 15_000;

/** A Server-Sent Events stream to one client, with keep-alives and a bound on unread data. */
export interface EventStream {
  /** Aborts when the client goes away. */
  readonly gone: AbortSignal;
  /** Send one event; false once the client has fallen too far behind (then stop). */
  send(id: number, event: string, data: string): boolean;
  /** An `error` event (no id: resuming after it is not possible) before the stream ends. */
  fail(error: MusterError): void;
  close(): void;
}

export function openEventStream(reply: FastifyReply, headers: Record<string, string>): EventStream {
  const gone = clientGone(reply);
  reply.hijack();
  const response = reply.raw;
  response.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    connection: "keep-alive",
    ...headers,
  });
  const keepAlive = setInterval(() => response.write(":\n\n"), keepAliveMs);
  return {
    gone,
    send(id, event, data) {
      response.write(`id: ${id}\nevent: ${event}\ndata: ${data}\n\n`);
      // A watcher that stops reading is dropped rather than buffered for without end.
      return response.writableLength <= maxUnreadBytes;
    },
    fail(error) {
      response.write(`event: error\ndata: ${JSON.stringify(error.toJSON())}\n\n`);
    },
    close() {
      clearInterval(keepAlive);
      response.end();
    },
  };
}

/** Whether the stream's request still passes the ACLs; if not, says why on the stream. */
export function stillAllowed(request: FastifyRequest, stream: EventStream): boolean {
  try {
    request.reauthorize();
    return true;
  } catch (error) {
    if (!(error instanceof MusterError)) throw error;
    stream.fail(error);
    return false;
  }
}
