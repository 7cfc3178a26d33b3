import { setTimeout as sleep } from "node:timers/promises";
import { BrokenCircuitError, ExponentialBackoff, type IBackoff } from "cockatiel";
import { type RequestInit, type Response, fetch as undiciFetch } from "undici";
import { type InstancePicker, NoInstanceError } from "./picker.js";

export interface ServiceFetchInit extends RequestInit {
  /** Sticky key for the consistent-hash policy. */
  readonly key?: string;
  /** Further attempts on other instances (default 2). */
  readonly retries?: number;
  /** Choose with this balancer instead of the client's own for the service. */
  readonly balancer?: InstancePicker;
}

const idempotentMethods = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);
/** Answers of an overloaded or restarting instance: another one may do better. */
const retryableStatuses = new Set([502, 503, 504]);
const retryBackoff = new ExponentialBackoff({ initialDelay: 20, maxDelay: 1000 });

/** Set when an answer must count as a failed call without losing the answer. */
class FailedAnswer extends Error {
  constructor(readonly response: Response) {
    super(`answered ${response.status}`);
  }
}

/** Connection refused or failed before anything was sent: safe to retry any method. */
function notSent(error: unknown): boolean {
  const cause = (error as { cause?: { code?: string } }).cause;
  const code = cause?.code ?? (error as { code?: string }).code;
  return code === "ECONNREFUSED" || code === "UND_ERR_CONNECT_TIMEOUT" || code === "ENOTFOUND";
}

function replayable(body: RequestInit["body"]): boolean {
  return (
    body === undefined ||
    body === null ||
    typeof body === "string" ||
    body instanceof Uint8Array ||
    body instanceof URLSearchParams ||
    body instanceof ArrayBuffer
  );
}

/**
 * `fetch` with a service name for a host: each attempt goes to an instance the picker
 * chooses. Connection failures move on to another instance (any method when nothing was
 * sent, idempotent ones otherwise), as do 502/503/504 answers of idempotent requests, with
 * exponential backoff and jitter between attempts.
 */
export async function fetchFromService(
  picker: InstancePicker,
  url: URL,
  init: ServiceFetchInit = {},
): Promise<Response> {
  const method = (init.method ?? "GET").toUpperCase();
  const idempotent = idempotentMethods.has(method) && replayable(init.body);
  const attempts = 1 + (replayable(init.body) ? (init.retries ?? 2) : 0);
  const { key, retries: _retries, balancer: _balancer, ...requestInit } = init;
  const tried = new Set<string>();
  let backoff: IBackoff<unknown> | undefined;
  let lastError: unknown = new NoInstanceError(`no instance of service ${picker.view.service}`);
  for (let attempt = 0; attempt < attempts; attempt++) {
    init.signal?.throwIfAborted();
    const instance = picker.pick({ ...(key === undefined ? {} : { key }), exclude: tried });
    if (instance === undefined) break;
    tried.add(instance.id);
    const target = new URL(url);
    target.hostname = instance.address.includes(":") ? `[${instance.address}]` : instance.address;
    target.port = String(instance.port);
    const last = attempt === attempts - 1;
    try {
      return await picker.run(instance, async () => {
        const response = await undiciFetch(target, requestInit);
        if (response.status >= 500) {
          throw new FailedAnswer(response);
        }
        return response;
      });
    } catch (error) {
      if (error instanceof FailedAnswer) {
        if (last || !idempotent || !retryableStatuses.has(error.response.status))
          return error.response;
        await error.response.body?.cancel();
      } else if (error instanceof BrokenCircuitError) {
        // Its breaker opened meanwhile: choose another one at once.
        continue;
      } else if (init.signal?.aborted === true || !(idempotent || notSent(error)) || last) {
        throw error;
      }
      lastError = error;
    }
    backoff = backoff === undefined ? retryBackoff.next() : backoff.next(undefined);
    await sleep(backoff.duration, undefined, init.signal ? { signal: init.signal } : undefined);
  }
  throw lastError;
}
