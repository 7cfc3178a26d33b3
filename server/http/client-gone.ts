import type { FastifyReply } from "fastify";

/** What a watch stream may hold for a client that does not read before it is dropped. */
export const maxUnreadBytes = 1024 * 1024;

/**
 * Aborts when the client goes away before its answer is sent. The request's own "close"
 * fires once its body is read (Node 20), so it is the response that tells.
 */
export function clientGone(reply: FastifyReply): AbortSignal {
  const gone = new AbortController();
  const response = reply.raw;
  if (response.destroyed && !response.writableFinished) gone.abort();
  response.once("close", () => {
    if (!response.writableFinished) gone.abort();
  });
  return gone.signal;
}
