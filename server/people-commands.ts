import { ApiFetch } from "./api-fetch.js";
import { MusterHttpClient } from "./lock-command.js";
import type { TlsMaterial } from "./tls-files.js";

/** What `muster members`, `services` and `register` print: a table, or JSON with --json. */

export interface OutputOptions {
  readonly http: string[];
  readonly json: boolean;
  /** HTTPS with this CA (and client certificate); null: plain HTTP. */
  readonly tls: TlsMaterial | null;
  /** The ACL token's secret; null: none. */
  readonly token: string | null;
}

/** Columns padded to their widest cell; a header line first. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, column) => cell.padEnd(widths[column] ?? 0))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** One request of a command: the answer's body, or an error saying what the API refused. */
export async function call(
  options: OutputOptions,
  method: "GET" | "PUT" | "POST" | "DELETE",
  path: string,
  body?: unknown,
): Promise<Record<string, unknown>> {
  const client = new MusterHttpClient(options.http, 5000, new ApiFetch(options.tls), options.token);
  const answer = await client.call(method, path, body === undefined ? {} : { body });
  if (answer.status !== 200) throw new Error(errorText(answer.body, answer.status));
  return answer.body;
}

function errorText(body: Record<string, unknown>, status: number): string {
  const error = body.error as { message?: string; field?: string } | undefined;
  return `${error?.message ?? `HTTP ${status}`}${error?.field === undefined ? "" : ` (field ${error.field})`}`;
}

export async function members(options: OutputOptions): Promise<string> {
  const body = await call(options, "GET", "/v1/cluster/members");
  if (options.json) return JSON.stringify(body, null, 2);
  const rows = ((body.members ?? []) as Record<string, unknown>[]).map((member) =>
    ["id", "role", "voter", "http", "grpc", "raft", "dns"].map((key) => String(member[key] ?? "-")),
  );
  return `${table(["ID", "ROLE", "VOTER", "HTTP", "GRPC", "RAFT", "DNS"], rows)}\nterm ${body.term}, commit index ${body.commitIndex}`;
}

export async function services(
  options: OutputOptions,
  service: string | undefined,
): Promise<string> {
  if (service === undefined) {
    const body = await call(options, "GET", "/v1/services");
    if (options.json) return JSON.stringify(body, null, 2);
    const rows = ((body.services ?? []) as Record<string, unknown>[]).map((entry) => [
      String(entry.name),
      String(entry.instances),
      String(entry.passing),
      ((entry.tags ?? []) as string[]).join(",") || "-",
    ]);
    return table(["SERVICE", "INSTANCES", "PASSING", "TAGS"], rows);
  }
  const body = await call(options, "GET", `/v1/services/${encodeURIComponent(service)}`);
  if (options.json) return JSON.stringify(body, null, 2);
  const rows = ((body.instances ?? []) as Record<string, unknown>[]).map((instance) => [
    String(instance.id),
    `${instance.address}:${instance.port}`,
    String(instance.status),
    String(instance.weight),
    ((instance.tags ?? []) as string[]).join(",") || "-",
    String(instance.lastHeartbeatAt),
  ]);
  return table(["ID", "ADDRESS", "STATUS", "WEIGHT", "TAGS", "LAST HEARTBEAT"], rows);
}

export interface Registration {
  readonly service: string;
  readonly id: string;
  readonly address: string;
  readonly port: number;
  readonly tags: string[];
  readonly meta: Record<string, string>;
  readonly ttl?: string;
  readonly weight?: number;
}

export async function register(
  options: OutputOptions,
  registration: Registration,
): Promise<string> {
  const { service, id, ...fields } = registration;
  const body = await call(
    options,
    "PUT",
    `/v1/services/${encodeURIComponent(service)}/instances/${encodeURIComponent(id)}`,
    fields,
  );
  if (options.json) return JSON.stringify(body, null, 2);
  return `registered ${id} of ${service} at ${registration.address}:${registration.port} (ttl ${body.ttl}; heartbeat it, or it turns critical)`;
}

export async function deregister(
  options: OutputOptions,
  service: string,
  id: string,
): Promise<string> {
  const body = await call(
    options,
    "DELETE",
    `/v1/services/${encodeURIComponent(service)}/instances/${encodeURIComponent(id)}`,
  );
  return options.json ? JSON.stringify(body, null, 2) : `deregistered ${id} of ${service}`;
}
