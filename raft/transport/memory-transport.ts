import type { Message, NodeId } from "../core/types.js";
import type { RaftTransport } from "./transport.js";

/** An in-process network of transports, delivering asynchronously; links can be cut. */
export class MemoryNetwork {
  private readonly handlers = new Map<NodeId, (message: Message) => void>();
  private readonly cut = new Set<NodeId>();
  private readonly sentByType = new Map<Message["type"], number>();

  transport(id: NodeId): RaftTransport {
    return {
      send: (message) => {
        this.sentByType.set(message.type, (this.sentByType.get(message.type) ?? 0) + 1);
        if (this.cut.has(message.from) || this.cut.has(message.to)) return;
        setImmediate(() => this.handlers.get(message.to)?.(message));
      },
      onMessage: (handler) => {
        this.handlers.set(id, handler);
      },
      close: async () => {
        this.handlers.delete(id);
      },
    };
  }

  /** How many messages of this type were sent, delivered or not. */
  sent(type: Message["type"]): number {
    return this.sentByType.get(type) ?? 0;
  }

  /** Cut a node off from everyone (or reconnect it). */
  setIsolated(id: NodeId, isolated: boolean): void {
    if (isolated) this.cut.add(id);
    else this.cut.delete(id);
  }
}
