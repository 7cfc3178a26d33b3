import {
  encodeCommand,
  type InstanceSpec,
  type RegistryCommand,
  RegistryStateMachine,
} from "../../../server/fsm/registry.js";

/** A passing instance with one tag. */
export function spec(service: string, id: string, ttlMs = 10_000): InstanceSpec {
  return {
    id,
    service,
    address: "10.0.0.1",
    port: 80,
    tags: ["v1"],
    meta: {},
    weight: 100,
    version: "",
    status: "passing",
    ttlMs,
    session: null,
  };
}

/** A snapshot's pieces, joined as the runtime joins them. */
export function snapshotOf(fsm: RegistryStateMachine): Uint8Array {
  return Buffer.concat([...fsm.snapshot()]);
}

/** Applies commands as consecutive log entries. */
export class Log {
  index = 0;
  constructor(readonly fsm = new RegistryStateMachine()) {}

  apply(command: RegistryCommand) {
    this.index++;
    return this.fsm.apply({
      type: "normal",
      term: 1,
      index: this.index,
      data: encodeCommand(command),
    });
  }
}
