import { bootstrapState } from "../../../raft/core/raft.js";
import type { Entry, NodeId } from "../../../raft/core/types.js";
import { RaftNode, type StateMachine } from "../../../raft/node.js";
import { MemoryStorage } from "../../../raft/storage/memory-storage.js";
import { MemoryNetwork } from "../../../raft/transport/memory-transport.js";

/** Appends every command to a list; apply returns the list's length. */
export class ListMachine implements StateMachine<number> {
  items: string[] = [];
  /** The index of each entry applied here, item by item. */
  readonly indexes: number[] = [];

  apply(entry: Entry & { type: "normal" }): number {
    this.items.push(new TextDecoder().decode(entry.data));
    this.indexes.push(entry.index);
    return this.items.length;
  }

  /** Milliseconds each snapshot piece takes to make, as a large state's do. */
  pieceCostMs = 0;

  /** One piece per item, made as the pieces are taken, several turns of the loop later. */
  snapshot(): Iterable<Uint8Array> {
    const items = this.items.slice();
    const cost = this.pieceCostMs;
    return (function* () {
      for (const [n, item] of items.entries()) {
        const until = performance.now() + cost;
        while (performance.now() < until);
        yield new TextEncoder().encode(`${n === 0 ? "[" : ","}${JSON.stringify(item)}`);
      }
      yield new TextEncoder().encode(items.length === 0 ? "[]" : "]");
    })();
  }

  restore(data: Uint8Array): void {
    this.items = JSON.parse(new TextDecoder().decode(data)) as string[];
  }
}

export interface MemoryMember {
  readonly node: RaftNode<number>;
  readonly machine: ListMachine;
  readonly storage: MemoryStorage;
}

/** Raft settings for nodes in one process that tick every 5 ms. */
export function fastRaft(id: NodeId) {
  return {
    id,
    electionTicks: 10,
    heartbeatTicks: 1,
    maxEntriesPerAppend: 256,
    maxAppendBytes: 1024 * 1024,
    maxInflightAppends: 16,
    maxUncommittedEntries: 4096,
    preVote: true,
    checkQuorum: true,
  };
}

/** Three RaftNodes in one process over an in-memory network, with fast ticks. */
export async function startMemoryCluster(ids: readonly NodeId[] = ["n1", "n2", "n3"]) {
  const network = new MemoryNetwork();
  const fatal: Error[] = [];
  const members = new Map<NodeId, MemoryMember>();
  for (const id of ids) {
    const machine = new ListMachine();
    const storage = new MemoryStorage(bootstrapState(ids));
    const node = await RaftNode.start({
      raft: fastRaft(id),
      tickIntervalMs: 5,
      snapshotEveryEntries: 50,
      storage,
      transport: network.transport(id),
      stateMachine: machine,
      onFatal: (error) => fatal.push(error),
    });
    members.set(id, { node, machine, storage });
  }
  return { network, members, fatal };
}

export async function waitFor<T>(
  what: string,
  probe: () => T | undefined,
  timeoutMs = 5000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = probe();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
