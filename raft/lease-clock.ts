import type { Message } from "./core/types.js";

/**
 * Leader leases in real time. The core says which heartbeat a quorum answered
 * (Raft.leaseContext); this remembers when each heartbeat was handed out, and a lease holds
 * for `durationMs` from then. Voters that answered refuse votes for an election timeout
 * after they received it, which is no earlier. Counting from the handing out, not from the
 * answer, keeps a late answer or a stalled leader from stretching a lease.
 */
export class LeaseClock {
  /** Heartbeat context -> when it was first handed out; in order of both. */
  private readonly handedOutAt = new Map<number, number>();

  constructor(private readonly durationMs: number) {}

  /** Note the heartbeats among `messages`, handed out at `now`. */
  handedOut(messages: readonly Message[], now: number): void {
    for (const message of messages) {
      if (message.type === "heartbeat" && !this.handedOutAt.has(message.context))
        this.handedOutAt.set(message.context, now);
    }
    for (const [context, at] of this.handedOutAt) {
      if (now - at < this.durationMs) break;
      this.handedOutAt.delete(context);
    }
  }

  /** Whether a lease based on the heartbeat `context` (null: none) still holds at `now`. */
  holds(context: number | null, now: number): boolean {
    if (context === null) return false;
    const at = this.handedOutAt.get(context);
    return at !== undefined && now - at < this.durationMs;
  }
}
