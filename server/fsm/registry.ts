import { createHash } from "node:crypto";
import type { Entry } from "../../raft/core/types.js";
import type { StateMachine } from "../../raft/node.js";
import type { AclPolicy } from "../acl/rules.js";
import { type AclOutcome, AclTable, type AclToken, type StoredAcl } from "./acl.js";
import {
  type Lock,
  type LockKind,
  type LockResult,
  LockTable,
  type Session,
  type SessionSpec,
  type StoredLocks,
} from "./locks.js";

export type InstanceStatus = "passing" | "warning" | "critical" | "maintenance";

/** What a registration says about an instance. */
export interface InstanceSpec {
  readonly id: string;
  readonly service: string;
  readonly address: string;
  readonly port: number;
  readonly tags: readonly string[];
  readonly meta: Readonly<Record<string, string>>;
  readonly weight: number;
  readonly version: string;
  /** The status the instance reports of itself. */
  readonly status: InstanceStatus;
  readonly ttlMs: number;
  /** Removed with this session when it ends with behavior "delete". */
  readonly session: string | null;
}

export interface Instance extends InstanceSpec {
  /** What lookups see: critical while the TTL has run out, the reported status otherwise. */
  readonly effectiveStatus: InstanceStatus;
  readonly output: string;
  /** Leader clock when the TTL ran out, or null while it runs. */
  readonly expiredAt: number | null;
  /** TTL left at the last checkpoint: where a new leader restarts the countdown. */
  readonly ttlRemainingMs: number;
  /** Leader clock, milliseconds since the epoch, carried in the commands. */
  readonly registeredAt: number;
  readonly lastHeartbeatAt: number;
  readonly createIndex: number;
  readonly modifyIndex: number;
}

export type SelfPreservationMode = "auto" | "on" | "off";

/** Names an instance; `modifyIndex` pins the version the leader decided about. */
export interface InstanceRef {
  readonly service: string;
  readonly id: string;
}

/** Where a member of the cluster listens; replicated so every node can route to every other. */
export interface MemberAddresses {
  readonly id: string;
  readonly raft: string;
  readonly http: string;
  readonly grpc: string;
  readonly dns: string;
}

export type RegistryCommand =
  | { readonly op: "member"; readonly member: MemberAddresses }
  | { readonly op: "register"; readonly instance: InstanceSpec; readonly now: number }
  | { readonly op: "deregister"; readonly service: string; readonly id: string }
  /** A heartbeat that changed the reported status, or revived an expired instance. */
  | (InstanceRef & {
      readonly op: "set-status";
      readonly status: InstanceStatus;
      readonly output: string;
      readonly now: number;
    })
  /** TTLs that ran out on the leader: these turn critical (batched). */
  | {
      readonly op: "expire";
      readonly instances: readonly (InstanceRef & { readonly modifyIndex: number })[];
      readonly now: number;
    }
  /** Instances critical for longer than deregisterAfter: removed unless revived meanwhile. */
  | { readonly op: "evict"; readonly instances: readonly InstanceRef[] }
  /** The TTL left for every running lease, so that a new leader resumes the countdowns. */
  | {
      readonly op: "checkpoint";
      readonly ttls: readonly (InstanceRef & {
        readonly remainingMs: number;
        readonly lastHeartbeatAt: number;
      })[];
      readonly sessions: readonly { readonly id: string; readonly remainingMs: number }[];
      /** The leader's wall clock when it took these figures. */
      readonly now: number;
    }
  | { readonly op: "self-preservation"; readonly mode: SelfPreservationMode }
  /** The first leader makes the key once; later proposals (a race) change nothing. */
  | { readonly op: "forwarding-key"; readonly key: string }
  /** Refused when the session's client already holds `maxPerClient` sessions. */
  | {
      readonly op: "session-create";
      readonly session: SessionSpec;
      readonly maxPerClient: number;
    }
  | {
      readonly op: "session-end";
      readonly id: string;
      readonly reason: "deleted" | "expired";
      readonly now: number;
    }
  /** The first one makes the management token; later ones change nothing. */
  | { readonly op: "acl-bootstrap"; readonly accessor: string; readonly secretHash: string }
  | { readonly op: "acl-policy-set"; readonly policy: AclPolicy }
  | { readonly op: "acl-policy-delete"; readonly name: string }
  | {
      readonly op: "acl-token-set";
      readonly mode: "create" | "update";
      readonly token: Pick<AclToken, "accessor" | "secretHash" | "policies" | "description">;
    }
  | { readonly op: "acl-token-delete"; readonly accessor: string }
  | {
      readonly op: "lock-acquire";
      readonly kind: LockKind;
      readonly name: string;
      readonly session: string;
      readonly value: string;
      /** Queue behind the holder until then (leader clock) instead of failing; 0: no queue. */
      readonly waitUntil: number;
      readonly now: number;
    }
  | {
      readonly op: "lock-release" | "lock-cancel";
      readonly kind: LockKind;
      readonly name: string;
      readonly session: string;
      readonly now: number;
    }
  /** A lock's delay ran out with waiters queued: the first one gets it. */
  | {
      readonly op: "lock-promote";
      readonly kind: LockKind;
      readonly name: string;
      readonly now: number;
    };

export type RegistryResult =
  | {
      readonly ok: true;
      readonly instance?: Instance;
      readonly changed?: number;
      readonly session?: Session;
      readonly lock?: { readonly acquired: boolean; readonly lock: Lock };
      readonly token?: AclToken;
      readonly policy?: AclPolicy;
    }
  | {
      readonly ok: false;
      readonly code: "not-found" | "conflict" | "too-many";
      readonly message: string;
    };

/** Lease keys: what the lessor counts down, instances and sessions alike. */
export function instanceLeaseKey(ref: InstanceRef): string {
  return `i\u0000${ref.service}\u0000${ref.id}`;
}

export function sessionLeaseKey(id: string): string {
  return `s\u0000${id}`;
}

/** Maps, never plain objects, so that no name a client sends can touch a prototype. */
interface RegistryState {
  readonly members: Map<string, MemberAddresses>;
  /** service -> instance id -> instance */
  readonly services: Map<string, Map<string, Instance>>;
  /** service -> index of its last change; kept after the last instance goes, for watchers. */
  readonly serviceIndex: Map<string, number>;
  /** service -> every tag its instances ever carried (DNS tells NODATA from NXDOMAIN by it). */
  readonly serviceTags: Map<string, Set<string>>;
  /** Index of the last change to any service: the list's index. */
  servicesIndex: number;
  selfPreservation: SelfPreservationMode;
  /** Members prove with it that they forwarded a request (never served by the API). */
  forwardingKey: string | null;
  appliedIndex: number;
}

function emptyState(): RegistryState {
  return {
    members: new Map(),
    services: new Map(),
    serviceIndex: new Map(),
    serviceTags: new Map(),
    servicesIndex: 0,
    selfPreservation: "auto",
    forwardingKey: null,
    appliedIndex: 0,
  };
}

/** The state as plain data: the snapshot format, and in name order what the state hash covers. */
interface StoredRegistry {
  readonly members: MemberAddresses[];
  readonly services: {
    readonly name: string;
    readonly index: number;
    readonly tags: string[];
    readonly instances: Instance[];
  }[];
  readonly servicesIndex: number;
  readonly selfPreservation: SelfPreservationMode;
  /** Absent from snapshots made before it existed. */
  readonly forwardingKey?: string | null;
  readonly locks: StoredLocks;
  /** Absent from snapshots made before it existed. */
  readonly acl?: StoredAcl;
  readonly appliedIndex: number;
}

/** JSON text per snapshot piece, in characters: small enough to make between other work. */
const pieceChars = 64 * 1024;
/** Instances stringified at a time. */
const instancesPerPart = 128;

/**
 * The state as the JSON text of a StoredRegistry, in pieces. What the text holds is taken at
 * the call; the text itself is made as the pieces are taken, while later entries apply
 * (they replace instances, never edit them). `sorted` orders services and instances by
 * name, for the state hash; a snapshot keeps the maps' own order, which restore reproduces.
 */
function storedText(
  state: RegistryState,
  locks: StoredLocks,
  acl: StoredAcl,
  sorted: boolean,
): Iterable<string> {
  const byKey = <T>(entries: [string, T][]) =>
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const members = byKey([...state.members]).map(([, member]) => member);
  const head = `{"members":${JSON.stringify(members)},"services":[`;
  const named = [...state.serviceIndex];
  const services = (sorted ? byKey(named) : named).map(([name, index]) => ({
    service: { name, index, tags: [...(state.serviceTags.get(name) ?? [])].sort() },
    instances: sorted
      ? byKey([...(state.services.get(name) ?? [])]).map(([, instance]) => instance)
      : [...(state.services.get(name)?.values() ?? [])],
  }));
  const tail = `],"servicesIndex":${state.servicesIndex},"selfPreservation":${JSON.stringify(state.selfPreservation)},"forwardingKey":${JSON.stringify(state.forwardingKey)},"locks":${JSON.stringify(locks)},"acl":${JSON.stringify(acl)},"appliedIndex":${state.appliedIndex}}`;
  return inPieces(storedParts(head, services, tail));
}

function* storedParts(
  head: string,
  services: readonly { service: object; instances: readonly Instance[] }[],
  tail: string,
): Generator<string> {
  yield head;
  for (const [n, { service, instances }] of services.entries()) {
    yield `${n > 0 ? "," : ""}${JSON.stringify(service).slice(0, -1)},"instances":[`;
    for (let at = 0; at < instances.length; at += instancesPerPart) {
      const part = JSON.stringify(instances.slice(at, at + instancesPerPart));
      yield `${at > 0 ? "," : ""}${part.slice(1, -1)}`;
    }
    yield "]}";
  }
  yield tail;
}

function* inPieces(parts: Iterable<string>): Generator<string> {
  let pending: string[] = [];
  let length = 0;
  for (const part of parts) {
    pending.push(part);
    length += part.length;
    if (length < pieceChars) continue;
    yield pending.join("");
    pending = [];
    length = 0;
  }
  if (pending.length > 0) yield pending.join("");
}

function fromStored(stored: StoredRegistry): RegistryState {
  const state = emptyState();
  for (const member of stored.members) state.members.set(member.id, member);
  for (const service of stored.services) {
    if (service.instances.length > 0) {
      state.services.set(
        service.name,
        new Map(service.instances.map((instance) => [instance.id, instance])),
      );
    }
    state.serviceIndex.set(service.name, service.index);
    if (service.tags.length > 0) state.serviceTags.set(service.name, new Set(service.tags));
  }
  state.servicesIndex = stored.servicesIndex;
  state.selfPreservation = stored.selfPreservation;
  state.forwardingKey = stored.forwardingKey ?? null;
  state.appliedIndex = stored.appliedIndex;
  return state;
}

export function encodeCommand(command: RegistryCommand): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(command));
}

/**
 * The replicated registry. Deterministic: it reads no clock and no randomness; time comes
 * in the commands the leader proposes. Only committed entries reach it.
 */
export class RegistryStateMachine implements StateMachine<RegistryResult> {
  private state = emptyState();
  private readonly listeners = new Set<(service: string | null, index: number) => void>();
  private readonly restoreListeners = new Set<() => void>();
  private readonly leaseListeners = new Set<
    (key: string, remainingMs: number, at: number | null) => void
  >();
  private readonly instanceListeners = new Set<
    (ref: InstanceRef, instance: Instance | undefined) => void
  >();
  private readonly memberListeners = new Set<() => void>();
  private instanceCount = 0;
  /** Sessions and locks; a lock's watchers are woken under the key "lock:<name>". */
  readonly locks = new LockTable((key) => this.notify(key, this.state.appliedIndex));
  readonly acl = new AclTable();

  apply(entry: Entry & { type: "normal" }): RegistryResult {
    const command = JSON.parse(new TextDecoder().decode(entry.data)) as RegistryCommand;
    this.state.appliedIndex = entry.index;
    return this.execute(command, entry.index);
  }

  private execute(command: RegistryCommand, index: number): RegistryResult {
    switch (command.op) {
      case "member":
        this.state.members.set(command.member.id, command.member);
        for (const listener of this.memberListeners) listener();
        return { ok: true };
      case "register":
        return this.register(command.instance, command.now, index);
      case "deregister": {
        if (!this.remove(command, index)) return notFound(command);
        return { ok: true };
      }
      case "set-status": {
        const instance = this.find(command);
        if (instance === undefined) return notFound(command);
        const updated = this.update(
          instance,
          {
            status: command.status,
            output: command.output,
            expiredAt: null,
            ttlRemainingMs: instance.ttlMs,
            lastHeartbeatAt: command.now,
          },
          index,
        );
        this.leaseChanged(instanceLeaseKey(updated), updated.ttlRemainingMs, command.now);
        return { ok: true, instance: updated };
      }
      case "expire": {
        let changed = 0;
        for (const ref of command.instances) {
          const instance = this.find(ref);
          if (instance === undefined || instance.expiredAt !== null) continue;
          if (instance.modifyIndex !== ref.modifyIndex) continue;
          this.update(
            instance,
            { expiredAt: command.now, output: "TTL expired", ttlRemainingMs: 0 },
            index,
          );
          changed++;
        }
        return { ok: true, changed };
      }
      case "evict": {
        let changed = 0;
        for (const ref of command.instances) {
          // A heartbeat may have revived it since the leader decided.
          if (this.find(ref)?.expiredAt == null) continue;
          this.remove(ref, index);
          changed++;
        }
        return { ok: true, changed };
      }
      case "checkpoint": {
        // Only the lease bookkeeping changes: no watcher is woken and no service index moves.
        this.checkpointsApplied++;
        for (const ttl of command.ttls) {
          const instance = this.find(ttl);
          if (instance === undefined || instance.expiredAt !== null) continue;
          const updated = instanceOf(fieldsOf(instance), {
            output: instance.output,
            expiredAt: null,
            ttlRemainingMs: ttl.remainingMs,
            registeredAt: instance.registeredAt,
            lastHeartbeatAt: ttl.lastHeartbeatAt,
            createIndex: instance.createIndex,
            modifyIndex: instance.modifyIndex,
          });
          this.put(updated);
          this.leaseChanged(instanceLeaseKey(updated), updated.ttlRemainingMs, command.now);
        }
        for (const ttl of command.sessions) {
          if (this.locks.renewCheckpoint(ttl.id, ttl.remainingMs) !== undefined)
            this.leaseChanged(sessionLeaseKey(ttl.id), ttl.remainingMs, command.now);
        }
        return { ok: true };
      }
      case "self-preservation":
        this.state.selfPreservation = command.mode;
        return { ok: true };
      case "forwarding-key":
        this.state.forwardingKey ??= command.key;
        return { ok: true };
      case "session-create": {
        const held = this.locks.sessionsOf(command.session.client);
        if (held >= command.maxPerClient) {
          return {
            ok: false,
            code: "too-many",
            message: `client ${command.session.client} already holds ${held} sessions, the most allowed (--max-sessions-per-client)`,
          };
        }
        const session = this.locks.createSession(command.session, index);
        this.leaseChanged(sessionLeaseKey(session.id), session.ttlMs, null);
        return { ok: true, session };
      }
      case "session-end": {
        const session = this.locks.endSession(command.id, command.now, index);
        if (session === undefined)
          return { ok: false, code: "not-found", message: `no session ${command.id}` };
        if (session.behavior === "delete") {
          for (const instance of this.allInstances())
            if (instance.session === session.id) this.remove(instance, index);
        }
        return { ok: true, session };
      }
      case "acl-bootstrap":
        return this.aclChanged(this.acl.bootstrap(command.accessor, command.secretHash, index));
      case "acl-policy-set":
        return this.aclChanged(this.acl.setPolicy(command.policy, index));
      case "acl-policy-delete":
        return this.aclChanged(this.acl.deletePolicy(command.name, index));
      case "acl-token-set":
        return this.aclChanged(this.acl.setToken(command.token, command.mode, index));
      case "acl-token-delete":
        return this.aclChanged(this.acl.deleteToken(command.accessor, index));
      case "lock-acquire":
        return lockOutcome(
          this.locks.acquire(
            command.kind,
            command.name,
            command.session,
            command.value,
            command.waitUntil,
            command.now,
            index,
          ),
        );
      case "lock-release":
        return lockOutcome(
          this.locks.release(command.kind, command.name, command.session, command.now, index),
        );
      case "lock-cancel":
        return lockOutcome(this.locks.cancel(command.kind, command.name, command.session, index));
      case "lock-promote":
        this.locks.promote(command.kind, command.name, command.now, index);
        return { ok: true };
    }
  }

  /** What a token may see can change with any ACL change: lists and DNS answers start over. */
  private aclChanged(outcome: AclOutcome): RegistryResult {
    if (outcome.ok) this.notify(null, this.state.appliedIndex);
    return outcome;
  }

  private register(spec: InstanceSpec, now: number, index: number): RegistryResult {
    if (spec.session !== null && this.locks.session(spec.session) === undefined) {
      return { ok: false, code: "not-found", message: `no session ${spec.session}` };
    }
    const previous = this.find(spec);
    const stored = instanceOf(spec, {
      output: "",
      expiredAt: null,
      ttlRemainingMs: spec.ttlMs,
      registeredAt: previous?.registeredAt ?? now,
      lastHeartbeatAt: now,
      createIndex: previous?.createIndex ?? index,
      modifyIndex: index,
    });
    this.put(stored);
    this.noteTags(spec);
    this.touch(spec.service, index);
    // The leader starts this countdown when the entry commits, not when it was proposed.
    this.leaseChanged(instanceLeaseKey(stored), stored.ttlRemainingMs, null);
    return { ok: true, instance: stored };
  }

  private update(
    instance: Instance,
    change: Partial<
      Pick<Instance, "status" | "output" | "expiredAt" | "ttlRemainingMs" | "lastHeartbeatAt">
    >,
    index: number,
  ): Instance {
    const expiredAt = change.expiredAt === undefined ? instance.expiredAt : change.expiredAt;
    const updated = instanceOf(
      { ...fieldsOf(instance), status: change.status ?? instance.status },
      {
        output: change.output ?? instance.output,
        expiredAt,
        ttlRemainingMs: expiredAt === null ? (change.ttlRemainingMs ?? instance.ttlRemainingMs) : 0,
        registeredAt: instance.registeredAt,
        lastHeartbeatAt: change.lastHeartbeatAt ?? instance.lastHeartbeatAt,
        createIndex: instance.createIndex,
        modifyIndex: index,
      },
    );
    this.put(updated);
    this.touch(instance.service, index);
    return updated;
  }

  private noteTags(spec: InstanceSpec): void {
    if (spec.tags.length === 0) return;
    let tags = this.state.serviceTags.get(spec.service);
    if (tags === undefined) {
      tags = new Set();
      this.state.serviceTags.set(spec.service, tags);
    }
    for (const tag of spec.tags) tags.add(tag);
  }

  private find(ref: InstanceRef): Instance | undefined {
    return this.state.services.get(ref.service)?.get(ref.id);
  }

  private put(instance: Instance): void {
    const instances = this.state.services.get(instance.service) ?? new Map<string, Instance>();
    const size = instances.size;
    instances.set(instance.id, instance);
    this.instanceCount += instances.size - size;
    this.state.services.set(instance.service, instances);
    for (const listener of this.instanceListeners) listener(instance, instance);
  }

  private remove(ref: InstanceRef, index: number): boolean {
    const instances = this.state.services.get(ref.service);
    if (instances?.delete(ref.id) !== true) return false;
    this.instanceCount--;
    if (instances.size === 0) this.state.services.delete(ref.service);
    this.touch(ref.service, index);
    for (const listener of this.instanceListeners) listener(ref, undefined);
    return true;
  }

  /** Every change to a service also changes the list of services (its counts at least). */
  private touch(service: string, index: number): void {
    this.state.serviceIndex.set(service, index);
    this.state.servicesIndex = index;
    this.notify(service, index);
  }

  snapshot(): Iterable<Uint8Array> {
    const text = storedText(this.state, this.locks.toStored(), this.acl.toStored(), false);
    return (function* () {
      for (const piece of text) yield Buffer.from(piece);
    })();
  }

  restore(data: Uint8Array): void {
    const stored =
      data.length === 0 ? null : (JSON.parse(new TextDecoder().decode(data)) as StoredRegistry);
    this.state = stored === null ? emptyState() : fromStored(stored);
    this.instanceCount = 0;
    for (const instances of this.state.services.values()) this.instanceCount += instances.size;
    this.locks.restore(stored?.locks);
    this.acl.restore(stored?.acl);
    for (const listener of this.restoreListeners) listener();
    this.notify(null, this.state.appliedIndex);
  }

  /** Called after a snapshot replaced the whole state: countdowns noted before are void. */
  onRestore(listener: () => void): () => void {
    this.restoreListeners.add(listener);
    return () => this.restoreListeners.delete(listener);
  }

  /** A hash of the whole state, equal on replicas that applied the same log. */
  stateHash(): { appliedIndex: number; hash: string } {
    const hash = createHash("sha256");
    for (const piece of storedText(this.state, this.locks.toStored(), this.acl.toStored(), true))
      hash.update(piece);
    return { appliedIndex: this.state.appliedIndex, hash: hash.digest("hex") };
  }

  get appliedIndex(): number {
    return this.state.appliedIndex;
  }

  members(): MemberAddresses[] {
    return [...this.state.members.values()];
  }

  member(id: string): MemberAddresses | undefined {
    return this.state.members.get(id);
  }

  /** The service's instances by id, and the index of its last change (0: never seen). */
  instances(service: string): { index: number; instances: Instance[] } {
    const instances = this.state.services.get(service) ?? new Map<string, Instance>();
    return {
      index: this.state.serviceIndex.get(service) ?? 0,
      instances: [...instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
    };
  }

  /** Whether an instance of the service ever carried the tag. */
  tagKnown(service: string, tag: string): boolean {
    return this.state.serviceTags.get(service)?.has(tag) ?? false;
  }

  /** Checkpoints applied here (not replicated state): they change heartbeat times only. */
  checkpointsApplied = 0;

  /** Index of the service's last change (0: never seen); cheap, for watchers. */
  serviceIndex(service: string): number {
    return this.state.serviceIndex.get(service) ?? 0;
  }

  instance(ref: InstanceRef): Instance | undefined {
    return this.find(ref);
  }

  /** Every instance, for the lessor. */
  allInstances(): Instance[] {
    return [...this.state.services.values()].flatMap((instances) => [...instances.values()]);
  }

  get instanceTotal(): number {
    return this.instanceCount;
  }

  get servicesIndex(): number {
    return this.state.servicesIndex;
  }

  get forwardingKey(): string | null {
    return this.state.forwardingKey;
  }

  get selfPreservationMode(): SelfPreservationMode {
    return this.state.selfPreservation;
  }

  services(): { name: string; instances: number; passing: number; tags: string[] }[] {
    return [...this.state.services]
      .map(([name, instances]) => {
        const all = [...instances.values()];
        return {
          name,
          instances: all.length,
          passing: all.filter((i) => isHealthy(i.effectiveStatus)).length,
          tags: [...new Set(all.flatMap((i) => i.tags))].sort(),
        };
      })
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Called after each change with the service, lock or election changed (null: anything may
   * have changed, as after a snapshot restore or an ACL change).
   */
  onChange(listener: (service: string | null, index: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Called after a member's addresses are recorded; a restore calls onChange's with null. */
  onMembers(listener: () => void): () => void {
    this.memberListeners.add(listener);
    return () => this.memberListeners.delete(listener);
  }

  /**
   * Called when an entry restarts an instance's countdown (a registration, a status change,
   * a checkpoint): followers note when, to resume it from there if they come to lead.
   * `at` is the leader's wall clock when `remainingMs` was true (null: unknown).
   */
  onLease(listener: (key: string, remainingMs: number, at: number | null) => void): () => void {
    this.leaseListeners.add(listener);
    return () => this.leaseListeners.delete(listener);
  }

  /**
   * Called after every instance an entry stores (`instance`) or removes (undefined), so that
   * the lessor follows the registry without scanning it.
   */
  onInstance(listener: (ref: InstanceRef, instance: Instance | undefined) => void): () => void {
    this.instanceListeners.add(listener);
    return () => this.instanceListeners.delete(listener);
  }

  private leaseChanged(key: string, remainingMs: number, at: number | null): void {
    for (const listener of this.leaseListeners) listener(key, remainingMs, at);
  }

  private notify(service: string | null, index: number): void {
    for (const listener of this.listeners) listener(service, index);
  }
}

/** Healthy lookups and DNS serve passing and warning instances. */
export function isHealthy(status: InstanceStatus): boolean {
  return status === "passing" || status === "warning";
}

function notFound(ref: InstanceRef): RegistryResult {
  return {
    ok: false,
    code: "not-found",
    message: `no instance ${ref.id} of service ${ref.service}`,
  };
}

/** The registration's own fields of an instance. */
function fieldsOf(instance: InstanceSpec): InstanceSpec {
  return {
    id: instance.id,
    service: instance.service,
    address: instance.address,
    port: instance.port,
    tags: instance.tags,
    meta: instance.meta,
    weight: instance.weight,
    version: instance.version,
    status: instance.status,
    ttlMs: instance.ttlMs,
    session: instance.session,
  };
}

/**
 * Builds an instance field by field: spreading a parsed command into a literal with more
 * properties takes V8's slow path, microseconds per entry on the apply path.
 */
function instanceOf(
  spec: InstanceSpec,
  state: Omit<Instance, keyof InstanceSpec | "effectiveStatus">,
): Instance {
  return {
    id: spec.id,
    service: spec.service,
    address: spec.address,
    port: spec.port,
    tags: spec.tags,
    meta: spec.meta,
    weight: spec.weight,
    version: spec.version,
    status: spec.status,
    ttlMs: spec.ttlMs,
    session: spec.session,
    effectiveStatus: state.expiredAt === null ? spec.status : "critical",
    output: state.output,
    expiredAt: state.expiredAt,
    ttlRemainingMs: state.ttlRemainingMs,
    registeredAt: state.registeredAt,
    lastHeartbeatAt: state.lastHeartbeatAt,
    createIndex: state.createIndex,
    modifyIndex: state.modifyIndex,
  };
}

function lockOutcome(result: LockResult): RegistryResult {
  if (!result.ok) return result;
  return { ok: true, lock: { acquired: result.acquired, lock: result.lock } };
}
