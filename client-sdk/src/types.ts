/** Shapes of the muster HTTP API that the SDK reads and writes. */

export type InstanceStatus = "passing" | "warning" | "critical" | "maintenance";

/** An instance as the registry shows it. */
export interface Instance {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  readonly tags: readonly string[];
  readonly meta: Readonly<Record<string, string>>;
  readonly weight: number;
  readonly version: string;
  readonly status: InstanceStatus;
  readonly output?: string;
  readonly session?: string;
  readonly ttl: string;
  readonly registeredAt: string;
  readonly lastHeartbeatAt: string;
  readonly createIndex: number;
  readonly modifyIndex: number;
}

/** Read consistency of the registry (see the server's README). */
export type Consistency = "stale" | "default" | "linearizable";

/** A duration as a number of milliseconds or a string such as "10s", "500ms", "2m". */
export type Duration = number | string;

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds of a duration; throws a TypeError naming `field` when it is not one. */
export function toMs(duration: Duration, field: string): number {
  if (typeof duration === "number") {
    if (!Number.isFinite(duration) || duration < 0)
      throw new TypeError(`${field} must be a non-negative number of milliseconds`);
    return duration;
  }
  const match = /^(\d{1,9})(ms|s|m|h)$/.exec(duration);
  if (match === null) throw new TypeError(`${field} must be a duration such as "10s" or "500ms"`);
  return Number(match[1]) * (units[match[2] as string] as number);
}

/** Milliseconds as the registry's duration strings: 10000 -> "10s". */
export function formatMs(ms: number): string {
  const whole = Math.max(0, Math.round(ms));
  if (whole % 3_600_000 === 0 && whole > 0) return `${whole / 3_600_000}h`;
  if (whole % 60_000 === 0 && whole > 0) return `${whole / 60_000}m`;
  if (whole % 1000 === 0 && whole > 0) return `${whole / 1000}s`;
  return `${whole}ms`;
}
