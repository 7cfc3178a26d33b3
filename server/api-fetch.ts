import { Agent, fetch, type RequestInit, type Response } from "undici";
import type { TlsMaterial } from "./tls-files.js";

/**
 * Requests to muster's HTTP API, from a member (forwarding, joining) or the CLI: plain HTTP,
 * or HTTPS that checks the node against the CA and presents our certificate when we have one
 * (so a cluster with --tls-client-ca serves us). Node 20's own fetch cannot take a CA,
 * hence undici's, with a dispatcher of our own.
 */
export class ApiFetch {
  private dispatcher: Agent | undefined;
  private readonly scheme: "http" | "https";

  constructor(tls: TlsMaterial | null) {
    this.scheme = tls === null ? "http" : "https";
    this.dispatcher = tls === null ? undefined : dispatcherFor(tls);
  }

  /** New certificates (SIGHUP): new connections use them; requests in flight finish. */
  use(tls: TlsMaterial): void {
    const old = this.dispatcher;
    this.dispatcher = dispatcherFor(tls);
    void old?.close();
  }

  /**
   * `address`: host:port of a node's HTTP API, or https://host:port (HTTPS, with the system's
   * CAs when there is no TLS material); `path` starts with a slash.
   */
  fetch(address: string, path: string, init: RequestInit): Promise<Response> {
    const host = address.replace(/^https:\/\//, "");
    const scheme = host === address ? this.scheme : "https";
    return fetch(`${scheme}://${host}${path}`, { ...init, dispatcher: this.dispatcher });
  }
}

/** Why a request got no answer, in a few words: fetch itself only says "fetch failed". */
export function describeFetchFailure(error: unknown, timeoutMs: number): string {
  if (error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError"))
    return `no answer within ${timeoutMs} ms`;
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (typeof cause?.code === "string") return cause.code;
  if (typeof cause?.message === "string") return cause.message;
  return error instanceof Error ? error.message : String(error);
}

function dispatcherFor(tls: TlsMaterial): Agent {
  return new Agent({
    connect: {
      ca: tls.ca,
      ...(tls.identity === null ? {} : { cert: tls.identity.cert, key: tls.identity.key }),
    },
  });
}
