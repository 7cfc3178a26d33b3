import type { Message } from "../core/types.js";

/**
 * Carries Raft messages between peers. Delivery is best effort: Raft tolerates loss,
 * duplication and reordering, so send() never blocks and never throws for a peer that
 * is down.
 */
export interface RaftTransport {
  send(message: Message): void;
  onMessage(handler: (message: Message) => void): void;
  close(): Promise<void>;
}
