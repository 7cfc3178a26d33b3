/** A signal bound to others and to a time limit, with a way to let go of both. */
export interface Bound {
  readonly signal: AbortSignal;
  /** Clear the timer and the listeners on the parents. */
  clear(): void;
}

/**
 * Aborts when any parent does, or after `ms` (never when infinite). Built by hand: on Node 20
 * a signal from AbortSignal.any over AbortSignal.timeout can be garbage-collected before it
 * fires, leaving a call without its time limit.
 */
export function bound(ms: number, ...parents: readonly (AbortSignal | undefined)[]): Bound {
  const controller = new AbortController();
  const listeners: [AbortSignal, () => void][] = [];
  const timer = Number.isFinite(ms)
    ? setTimeout(
        () =>
          controller.abort(new DOMException(`timed out after ${Math.ceil(ms)} ms`, "TimeoutError")),
        Math.max(0, Math.ceil(ms)),
      )
    : undefined;
  const clear = () => {
    clearTimeout(timer);
    for (const [parent, listener] of listeners) parent.removeEventListener("abort", listener);
    listeners.length = 0;
  };
  for (const parent of parents) {
    if (parent === undefined) continue;
    if (parent.aborted) {
      controller.abort(parent.reason);
      break;
    }
    const listener = () => controller.abort(parent.reason);
    parent.addEventListener("abort", listener, { once: true });
    listeners.push([parent, listener]);
  }
  if (controller.signal.aborted) clear();
  else controller.signal.addEventListener("abort", clear, { once: true });
  return { signal: controller.signal, clear };
}
