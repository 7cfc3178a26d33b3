import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import { assert } from "../core/assert.js";
import type {
  ConfChange,
  ConfigState,
  Entry,
  HardState,
  Message,
  MessageType,
  NodeId,
  Snapshot,
} from "../core/types.js";

/** Bytes that do not decode to a valid Raft record or message; `field` names what is wrong. */
export class CodecError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "CodecError";
  }
}

const root = protobuf.loadSync(
  fileURLToPath(new URL("../../proto/muster/raft/v1/raft.proto", import.meta.url)),
);
const types = {
  entry: root.lookupType("muster.raft.v1.Entry"),
  snapshot: root.lookupType("muster.raft.v1.Snapshot"),
  message: root.lookupType("muster.raft.v1.Message"),
  envelope: root.lookupType("muster.raft.v1.Envelope"),
  logMeta: root.lookupType("muster.raft.v1.LogMeta"),
  summary: root.lookupType("muster.raft.v1.StreamSummary"),
};
const snapshotDataField: number = (() => {
  const field = types.snapshot.fields.data;
  assert(field !== undefined, "the Snapshot message has no data field");
  return field.id;
})();
const decodeOptions: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true };

const messageTypes: Record<MessageType, string> = {
  vote: "VOTE",
  prevote: "PREVOTE",
  "vote-response": "VOTE_RESPONSE",
  "prevote-response": "PREVOTE_RESPONSE",
  append: "APPEND",
  "append-response": "APPEND_RESPONSE",
  heartbeat: "HEARTBEAT",
  "heartbeat-response": "HEARTBEAT_RESPONSE",
  snapshot: "SNAPSHOT",
  "timeout-now": "TIMEOUT_NOW",
  "read-index": "READ_INDEX",
  "read-index-response": "READ_INDEX_RESPONSE",
};
const messageTypeOfWire = new Map(
  Object.entries(messageTypes).map(([type, wire]) => [wire, type as MessageType]),
);

type Wire = Record<string, unknown>;

function decode(type: protobuf.Type, bytes: Uint8Array, what: string): Wire {
  try {
    return type.toObject(type.decode(bytes), decodeOptions);
  } catch (error) {
    throw new CodecError(what, `undecodable (${(error as Error).message})`);
  }
}

function count(wire: Wire, field: string): number {
  const value = wire[field];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new CodecError(field, "must be a non-negative integer");
  }
  return value;
}

function signed(wire: Wire, field: string): number {
  const value = wire[field];
  if (typeof value !== "number" || !Number.isSafeInteger(value))
    throw new CodecError(field, "must be an integer");
  return value;
}

function text(wire: Wire, field: string): string {
  const value = wire[field];
  if (typeof value !== "string") throw new CodecError(field, "must be a string");
  return value;
}

function nodeId(wire: Wire, field: string): NodeId {
  const value = text(wire, field);
  if (value.length === 0 || value.length > 128)
    throw new CodecError(field, "must be a node id of 1 to 128 characters");
  return value;
}

function nodeIds(wire: Wire, field: string): NodeId[] {
  const value = wire[field];
  if (!Array.isArray(value)) throw new CodecError(field, "must be a list");
  return value.map((_, i) => nodeId(value as unknown as Wire, String(i)));
}

function sub(wire: Wire, field: string): Wire {
  const value = wire[field];
  if (typeof value !== "object" || value === null) throw new CodecError(field, "is missing");
  return value as Wire;
}

// ---- entries and configuration -------------------------------------------------------

function confChangeToWire(change: ConfChange): Wire {
  switch (change.kind) {
    case "bootstrap":
      return { kind: "BOOTSTRAP", voters: [...change.voters] };
    case "add-learner":
      return { kind: "ADD_LEARNER", node: change.node };
    case "promote":
      return { kind: "PROMOTE", node: change.node };
    case "remove":
      return { kind: "REMOVE", node: change.node };
  }
}

function confChangeFromWire(wire: Wire): ConfChange {
  switch (wire.kind) {
    case "BOOTSTRAP":
      return { kind: "bootstrap", voters: nodeIds(wire, "voters") };
    case "ADD_LEARNER":
      return { kind: "add-learner", node: nodeId(wire, "node") };
    case "PROMOTE":
      return { kind: "promote", node: nodeId(wire, "node") };
    case "REMOVE":
      return { kind: "remove", node: nodeId(wire, "node") };
    default:
      throw new CodecError("change.kind", `unknown kind ${String(wire.kind)}`);
  }
}

function entryToWire(entry: Entry): Wire {
  switch (entry.type) {
    case "normal":
      return { term: entry.term, index: entry.index, type: "NORMAL", data: entry.data };
    case "config":
      return {
        term: entry.term,
        index: entry.index,
        type: "CONFIG",
        change: confChangeToWire(entry.change),
      };
    case "noop":
      return { term: entry.term, index: entry.index, type: "NOOP" };
  }
}

function entryFromWire(wire: Wire): Entry {
  const term = count(wire, "term");
  const index = count(wire, "index");
  switch (wire.type) {
    case "NORMAL":
      return { term, index, type: "normal", data: wire.data as Uint8Array };
    case "CONFIG":
      return { term, index, type: "config", change: confChangeFromWire(sub(wire, "change")) };
    case "NOOP":
      return { term, index, type: "noop" };
    default:
      throw new CodecError("entry.type", `unknown type ${String(wire.type)}`);
  }
}

function configFromWire(wire: Wire): ConfigState {
  return { voters: nodeIds(wire, "voters"), learners: nodeIds(wire, "learners") };
}

function snapshotToWire(snapshot: Snapshot, withData: boolean): Wire {
  return {
    index: snapshot.index,
    term: snapshot.term,
    config: { voters: [...snapshot.config.voters], learners: [...snapshot.config.learners] },
    data: withData ? snapshot.data : new Uint8Array(0),
  };
}

function snapshotFromWire(wire: Wire): Snapshot {
  return {
    index: count(wire, "index"),
    term: count(wire, "term"),
    config: configFromWire(sub(wire, "config")),
    data: wire.data as Uint8Array,
  };
}

export function encodeEntry(entry: Entry): Uint8Array {
  return types.entry.encode(types.entry.fromObject(entryToWire(entry))).finish();
}

export function decodeEntry(bytes: Uint8Array): Entry {
  return entryFromWire(decode(types.entry, bytes, "entry"));
}

/**
 * A snapshot's encoding in parts to write one after another, its data not copied: the
 * other fields, then the data field's key and length, then the data (protobuf takes fields
 * in any order).
 */
export function encodeSnapshotParts(snapshot: Snapshot): Uint8Array[] {
  const rest = types.snapshot.encode(types.snapshot.fromObject(snapshotToWire(snapshot, false)));
  const dataKey = protobuf.Writer.create()
    .uint32((snapshotDataField << 3) | 2)
    .uint32(snapshot.data.length);
  return [rest.finish(), dataKey.finish(), snapshot.data];
}

export function decodeSnapshot(bytes: Uint8Array): Snapshot {
  return snapshotFromWire(decode(types.snapshot, bytes, "snapshot"));
}

// ---- stored log metadata ---------------------------------------------------------------

export interface LogMeta {
  readonly hardState: HardState;
  readonly lastIndex: number;
  readonly lastTerm: number;
}

export function encodeLogMeta(meta: LogMeta): Uint8Array {
  const hardState = {
    term: meta.hardState.term,
    vote: meta.hardState.vote ?? "",
    commit: meta.hardState.commit,
  };
  return types.logMeta
    .encode(
      types.logMeta.fromObject({ hardState, lastIndex: meta.lastIndex, lastTerm: meta.lastTerm }),
    )
    .finish();
}

export function decodeLogMeta(bytes: Uint8Array): LogMeta {
  const wire = decode(types.logMeta, bytes, "log meta");
  const hardState = sub(wire, "hardState");
  const vote = text(hardState, "vote");
  return {
    hardState: {
      term: count(hardState, "term"),
      vote: vote === "" ? null : vote,
      commit: count(hardState, "commit"),
    },
    lastIndex: count(wire, "lastIndex"),
    lastTerm: count(wire, "lastTerm"),
  };
}

// ---- peer messages ---------------------------------------------------------------------

function messageToWire(message: Message): Wire {
  const wire: Wire = {
    type: messageTypes[message.type],
    from: message.from,
    to: message.to,
    term: message.term,
  };
  switch (message.type) {
    case "vote":
    case "prevote":
      wire.lastIndex = message.lastIndex;
      wire.lastTerm = message.lastTerm;
      wire.transfer = message.transfer;
      return wire;
    case "vote-response":
    case "prevote-response":
      wire.granted = message.granted;
      return wire;
    case "append":
      wire.prevIndex = message.prevIndex;
      wire.prevTerm = message.prevTerm;
      wire.entries = message.entries.map(entryToWire);
      wire.commit = message.commit;
      return wire;
    case "append-response":
      wire.index = message.index;
      wire.reject = message.reject;
      wire.hintIndex = message.hintIndex;
      wire.hintTerm = message.hintTerm;
      return wire;
    case "heartbeat":
      wire.commit = message.commit;
      wire.context = message.context;
      return wire;
    case "heartbeat-response":
      wire.context = message.context;
      return wire;
    case "snapshot":
      wire.snapshot = snapshotToWire(message.snapshot, false);
      return wire;
    case "timeout-now":
      return wire;
    case "read-index":
      wire.requestId = message.requestId;
      return wire;
    case "read-index-response":
      wire.requestId = message.requestId;
      wire.index = message.index;
      return wire;
  }
}

function messageFromWire(wire: Wire): Message {
  const type = messageTypeOfWire.get(String(wire.type));
  if (type === undefined) throw new CodecError("message.type", `unknown type ${String(wire.type)}`);
  const from = nodeId(wire, "from");
  const to = nodeId(wire, "to");
  const term = count(wire, "term");
  switch (type) {
    case "vote":
    case "prevote":
      return {
        from,
        to,
        term,
        type,
        lastIndex: count(wire, "lastIndex"),
        lastTerm: count(wire, "lastTerm"),
        transfer: wire.transfer === true,
      };
    case "vote-response":
    case "prevote-response":
      return { from, to, term, type, granted: wire.granted === true };
    case "append": {
      const entries = wire.entries;
      if (!Array.isArray(entries)) throw new CodecError("entries", "must be a list");
      return {
        from,
        to,
        term,
        type,
        prevIndex: count(wire, "prevIndex"),
        prevTerm: count(wire, "prevTerm"),
        entries: entries.map((entry) => entryFromWire(entry as Wire)),
        commit: count(wire, "commit"),
      };
    }
    case "append-response":
      return {
        from,
        to,
        term,
        type,
        index: count(wire, "index"),
        reject: wire.reject === true,
        hintIndex: count(wire, "hintIndex"),
        hintTerm: count(wire, "hintTerm"),
      };
    case "heartbeat":
      return {
        from,
        to,
        term,
        type,
        commit: count(wire, "commit"),
        context: count(wire, "context"),
      };
    case "heartbeat-response":
      return { from, to, term, type, context: count(wire, "context") };
    case "snapshot":
      return { from, to, term, type, snapshot: snapshotFromWire(sub(wire, "snapshot")) };
    case "timeout-now":
      return { from, to, term, type };
    case "read-index":
      return { from, to, term, type, requestId: count(wire, "requestId") };
    case "read-index-response":
      return {
        from,
        to,
        term,
        type,
        requestId: count(wire, "requestId"),
        index: signed(wire, "index"),
      };
  }
}

/** One frame of a peer stream: a message (a snapshot's data left out) or a piece of snapshot data. */
export type Frame =
  | { readonly kind: "message"; readonly clusterId: string; readonly message: Message }
  | {
      readonly kind: "chunk";
      readonly clusterId: string;
      readonly index: number;
      readonly offset: number;
      readonly data: Uint8Array;
      readonly last: boolean;
    };

export function encodeFrame(frame: Frame): Uint8Array {
  const body =
    frame.kind === "message"
      ? { message: messageToWire(frame.message) }
      : { chunk: { index: frame.index, offset: frame.offset, data: frame.data, last: frame.last } };
  return types.envelope
    .encode(types.envelope.fromObject({ clusterId: frame.clusterId, ...body }))
    .finish();
}

export function decodeFrame(bytes: Uint8Array): Frame {
  const wire = decode(types.envelope, bytes, "envelope");
  const clusterId = text(wire, "clusterId");
  if (typeof wire.message === "object" && wire.message !== null) {
    return { kind: "message", clusterId, message: messageFromWire(wire.message as Wire) };
  }
  if (typeof wire.chunk === "object" && wire.chunk !== null) {
    const chunk = wire.chunk as Wire;
    return {
      kind: "chunk",
      clusterId,
      index: count(chunk, "index"),
      offset: count(chunk, "offset"),
      data: chunk.data as Uint8Array,
      last: chunk.last === true,
    };
  }
  throw new CodecError("envelope.body", "has neither a message nor a snapshot chunk");
}

export function encodeSummary(received: number): Uint8Array {
  return types.summary.encode(types.summary.fromObject({ received })).finish();
}

export function decodeSummary(bytes: Uint8Array): number {
  return count(decode(types.summary, bytes, "summary"), "received");
}
