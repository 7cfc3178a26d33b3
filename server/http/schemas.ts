import { type Static, Type } from "@fastify/type-provider-typebox";
import { Ajv } from "ajv";

/** DNS label: services and tags appear in DNS names. */
export const labelPattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/** Not "." nor "..": a URL would read them as path segments. */
const idPattern = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,128}$";
export const sessionIdPattern = "^[0-9a-f-]{36}$";
const metaKeyPattern = "^[A-Za-z0-9._/-]{1,128}$";
const durationPattern = "^\\d{1,9}(ms|s|m|h)$";

export const Duration = Type.String({ pattern: durationPattern, maxLength: 12 });
export const Status = Type.Union([
  Type.Literal("passing"),
  Type.Literal("warning"),
  Type.Literal("critical"),
  Type.Literal("maintenance"),
]);

export const ServiceParams = Type.Object({ service: Type.String({ pattern: labelPattern }) });
export const InstanceParams = Type.Object({
  service: Type.String({ pattern: labelPattern }),
  id: Type.String({ pattern: idPattern }),
});

export const RegisterBody = Type.Object(
  {
    address: Type.String({ minLength: 1, maxLength: 253, pattern: "^[^\\s]+$" }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    tags: Type.Optional(Type.Array(Type.String({ pattern: labelPattern }), { maxItems: 64 })),
    meta: Type.Optional(
      Type.Record(Type.String({ pattern: metaKeyPattern }), Type.String({ maxLength: 512 }), {
        maxProperties: 64,
        additionalProperties: false,
      }),
    ),
    weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    version: Type.Optional(Type.String({ maxLength: 128 })),
    ttl: Type.Optional(Duration),
    status: Type.Optional(Status),
    session: Type.Optional(Type.String({ pattern: sessionIdPattern })),
  },
  { additionalProperties: false },
);

export const HeartbeatBody = Type.Object(
  {
    status: Type.Optional(Status),
    output: Type.Optional(Type.String({ maxLength: 4096 })),
  },
  { additionalProperties: false },
);

/** The same check as the heartbeat route's, for heartbeats taken without HTTP (gRPC KeepAlive). */
export const validHeartbeatBody = new Ajv({ coerceTypes: false }).compile<
  Static<typeof HeartbeatBody>
>(HeartbeatBody);

export const ConsistencyField = Type.Optional(
  Type.Union([Type.Literal("stale"), Type.Literal("default"), Type.Literal("linearizable")]),
);

/** Query of every read: consistency mode and the blocking form. */
export const ReadQuery = Type.Object(
  {
    consistency: ConsistencyField,
    index: Type.Optional(Type.Integer({ minimum: 0 })),
    wait: Type.Optional(Duration),
  },
  { additionalProperties: false },
);

export const ServiceQuery = Type.Object(
  {
    consistency: ConsistencyField,
    index: Type.Optional(Type.Integer({ minimum: 0 })),
    wait: Type.Optional(Duration),
    healthy: Type.Optional(Type.Boolean()),
    tag: Type.Optional(Type.Array(Type.String({ pattern: labelPattern }), { maxItems: 16 })),
  },
  { additionalProperties: false },
);

export const WatchQuery = Type.Object(
  {
    consistency: ConsistencyField,
    index: Type.Optional(Type.Integer({ minimum: 0 })),
    healthy: Type.Optional(Type.Boolean()),
    tag: Type.Optional(Type.Array(Type.String({ pattern: labelPattern }), { maxItems: 16 })),
  },
  { additionalProperties: false },
);

export const MemberBody = Type.Object(
  {
    id: Type.String({ pattern: "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,64}$" }),
    raft: Type.String({ minLength: 3, maxLength: 260 }),
    http: Type.String({ minLength: 3, maxLength: 260 }),
    grpc: Type.String({ minLength: 3, maxLength: 260 }),
    dns: Type.String({ minLength: 3, maxLength: 260 }),
  },
  { additionalProperties: false },
);

export const SelfPreservationBody = Type.Object(
  { mode: Type.Union([Type.Literal("auto"), Type.Literal("on"), Type.Literal("off")]) },
  { additionalProperties: false },
);

/** 10000 -> "10s", 1500 -> "1500ms". */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
