/** Thrown when an invariant of the Raft core breaks: the node must stop, never limp on. */
export class RaftInvariantError extends Error {
  override readonly name = "RaftInvariantError";
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new RaftInvariantError(message);
}
