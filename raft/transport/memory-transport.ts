import type { Message, NodeId } from "../core/types.js";
import type { RaftTransport } from "./transport.js";

/** An in-process network of transports, delivering asynchronously; links can be cut. */
export class MemoryNetwork {
  private readonly handlers = new Map<NodeId, (message: Message) => void>();
  private readonly cut = new Set<NodeId>();

  transport(id: NodeId): RaftTransport {
    return {
      send: (message) => {
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

  /** Cut a node off from everyone (or reconnect it). */
  setIsolated(id: NodeId, isolated: boolean): void {
    if (isolated) this.cut.add(id);
    else this.cut.delete(id);
  }
}
