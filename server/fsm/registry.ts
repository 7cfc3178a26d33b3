import { createHash } from "node:crypto";
import type { Entry } from "../../raft/core/types.js";
import type { StateMachine } from "../../raft/node.js";

export type InstanceStatus = "passing" | "warning" | "critical" | "maintenance";

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
  readonly ttlMs: number;
  /** Leader clock, milliseconds since the epoch, carried in the command. */
  readonly registeredAt: number;
  readonly lastHeartbeatAt: number;
  readonly createIndex: number;
  readonly modifyIndex: number;
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
  | {
      readonly op: "register";
      readonly instance: Omit<
        Instance,
        "registeredAt" | "lastHeartbeatAt" | "createIndex" | "modifyIndex"
      >;
      readonly now: number;
    }
  | { readonly op: "deregister"; readonly service: string; readonly id: string };

export type RegistryResult =
  | { readonly ok: true; readonly instance?: Instance }
  | { readonly ok: false; readonly code: "not-found"; readonly message: string };

/** Maps, never plain objects, so that no name a client sends can touch a prototype. */
interface RegistryState {
  readonly members: Map<string, MemberAddresses>;
  /** service -> instance id -> instance */
  readonly services: Map<string, Map<string, Instance>>;
  /** service -> index of its last change */
  readonly serviceIndex: Map<string, number>;
  appliedIndex: number;
}

function emptyState(): RegistryState {
  return { members: new Map(), services: new Map(), serviceIndex: new Map(), appliedIndex: 0 };
}

/** The state as plain data, in a stable order: the snapshot format and what the state hash covers. */
interface StoredRegistry {
  readonly members: MemberAddresses[];
  readonly services: {
    readonly name: string;
    readonly index: number;
    readonly instances: Instance[];
  }[];
  readonly appliedIndex: number;
}

function toStored(state: RegistryState): StoredRegistry {
  const byKey = <T>(entries: Iterable<[string, T]>) =>
    [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    members: byKey(state.members).map(([, member]) => member),
    services: byKey(state.services).map(([name, instances]) => ({
      name,
      index: state.serviceIndex.get(name) ?? 0,
      instances: byKey(instances).map(([, instance]) => instance),
    })),
    appliedIndex: state.appliedIndex,
  };
}

function fromStored(stored: StoredRegistry): RegistryState {
  const state = emptyState();
  for (const member of stored.members) state.members.set(member.id, member);
  for (const service of stored.services) {
    state.services.set(
      service.name,
      new Map(service.instances.map((instance) => [instance.id, instance])),
    );
    state.serviceIndex.set(service.name, service.index);
  }
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

  apply(entry: Entry & { type: "normal" }): RegistryResult {
    const command = JSON.parse(new TextDecoder().decode(entry.data)) as RegistryCommand;
    this.state.appliedIndex = entry.index;
    return this.execute(command, entry.index);
  }

  private execute(command: RegistryCommand, index: number): RegistryResult {
    switch (command.op) {
      case "member":
        this.state.members.set(command.member.id, command.member);
        this.notify(null, index);
        return { ok: true };
      case "register": {
        const { instance, now } = command;
        const instances = this.state.services.get(instance.service) ?? new Map<string, Instance>();
        const previous = instances.get(instance.id);
        const stored: Instance = {
          ...instance,
          registeredAt: previous?.registeredAt ?? now,
          lastHeartbeatAt: now,
          createIndex: previous?.createIndex ?? index,
          modifyIndex: index,
        };
        instances.set(instance.id, stored);
        this.state.services.set(instance.service, instances);
        this.state.serviceIndex.set(instance.service, index);
        this.notify(instance.service, index);
        return { ok: true, instance: stored };
      }
      case "deregister": {
        const instances = this.state.services.get(command.service);
        if (instances?.delete(command.id) !== true) {
          return {
            ok: false,
            code: "not-found",
            message: `no instance ${command.id} of service ${command.service}`,
          };
        }
        if (instances.size === 0) {
          this.state.services.delete(command.service);
          this.state.serviceIndex.delete(command.service);
        } else {
          this.state.serviceIndex.set(command.service, index);
        }
        this.notify(command.service, index);
        return { ok: true };
      }
    }
  }

  snapshot(): Uint8Array {
    return new TextEncoder().encode(JSON.stringify(toStored(this.state)));
  }

  restore(data: Uint8Array): void {
    this.state =
      data.length === 0
        ? emptyState()
        : fromStored(JSON.parse(new TextDecoder().decode(data)) as StoredRegistry);
    this.notify(null, this.state.appliedIndex);
  }

  /** A hash of the whole state, equal on replicas that applied the same log. */
  stateHash(): { appliedIndex: number; hash: string } {
    const hash = createHash("sha256")
      .update(JSON.stringify(toStored(this.state)))
      .digest("hex");
    return { appliedIndex: this.state.appliedIndex, hash };
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

  instances(service: string): { index: number; instances: Instance[] } | null {
    const instances = this.state.services.get(service);
    if (instances === undefined) return null;
    return {
      index: this.state.serviceIndex.get(service) ?? 0,
      instances: [...instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
    };
  }

  services(): { name: string; instances: number; passing: number; tags: string[] }[] {
    return [...this.state.services]
      .map(([name, instances]) => {
        const all = [...instances.values()];
        return {
          name,
          instances: all.length,
          passing: all.filter((i) => i.status === "passing" || i.status === "warning").length,
          tags: [...new Set(all.flatMap((i) => i.tags))].sort(),
        };
      })
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Called after each change with the service changed (null: the member list). */
  onChange(listener: (service: string | null, index: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private notify(service: string | null, index: number): void {
    for (const listener of this.listeners) listener(service, index);
  }
}
