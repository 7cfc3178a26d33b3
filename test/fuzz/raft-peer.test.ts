import { readFile } from "node:fs/promises";
import { connect as http2Connect } from "node:http2";
import { connect } from "node:net";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeFrame } from "../../raft/codec/codec.js";
import { type AgentCluster, eventually, sleep } from "../integration/agents.js";
import {
  Failures,
  fatalLines,
  fuzzSeed,
  leaderView,
  liveness,
  nodeIds,
  pool,
  samples,
  settled,
  shown,
  startCluster,
} from "./helpers.js";

/**
 * Fuzzing the Raft peer port (muster.raft.v1.RaftPeer/Stream, gRPC with a protobuf Envelope
 * carrying the cluster id on every frame) of a running three-node cluster.
 *
 * 1. Raw TCP: random bytes, HTTP/1.1, TLS-like bytes, the HTTP/2 preface followed by garbage
 *    or by well-framed HTTP/2 frames with random types, flags, stream ids and lengths, and
 *    gRPC streams whose 5-byte message prefix lies (compressed flag, length).
 * 2. gRPC streams of frames: random bytes, truncated and oversized protobuf, well-formed
 *    frames of every message type with absurd terms and indexes from members and strangers
 *    under a wrong cluster id, frames the codec refuses (empty node ids, unknown types,
 *    terms past 2^53), stray snapshot chunks, and calls to methods the port does not have.
 *    The product's own decodeFrame() is the oracle: a frame it would accept with this
 *    cluster's id and addressed to the node is not sent in this phase.
 *
 * After each: every node alive and ready, the same leader and term everywhere (a foreign
 * frame must never raise a term), the state hash unchanged, and a write still commits.
 *
 * 3. Well-formed frames with this cluster's id from a node id that is not a member, one kind
 *    at a time, each judged on its own (DESIGN.md: a message from outside is dropped and
 *    counted, never allowed to change a term). This test fails while the transport and the
 *    Raft core accept messages from any sender: several kinds raise the term, move the
 *    leadership, crash the leader (RaftInvariantError) or wedge the cluster for good.
 *
 * Rerun a failure with MUSTER_FUZZ_SEED=<seed>.
 */

const seed = fuzzSeed("raft-peer");
const rawConnections = 700;
const grpcStreams = 450;
const framesPerStream = 25;
const http2Streams = 250;
const streamPath = "/muster.raft.v1.RaftPeer/Stream";

// ---- protobuf by hand (any value, however absurd) ----------------------------------------

type Pb =
  | readonly [number, "varint", bigint]
  | readonly [number, "bytes", Uint8Array]
  | readonly [number, "sint", bigint];

function varint(value: bigint): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}

function pb(fields: readonly Pb[]): Buffer {
  return Buffer.concat(
    fields.map(([field, kind, value]) => {
      if (kind === "bytes")
        return Buffer.concat([
          varint(BigInt((field << 3) | 2)),
          varint(BigInt(value.length)),
          Buffer.from(value),
        ]);
      const n = kind === "sint" ? (value << 1n) ^ (value < 0n ? -1n : 0n) : value;
      return Buffer.concat([varint(BigInt(field << 3)), varint(n)]);
    }),
  );
}

const str = (field: number, text: string): Pb => [field, "bytes", Buffer.from(text, "utf8")];
const num = (field: number, value: bigint | number): Pb => [field, "varint", BigInt(value)];

const messageTypes = {
  VOTE: 1,
  PREVOTE: 2,
  VOTE_RESPONSE: 3,
  PREVOTE_RESPONSE: 4,
  APPEND: 5,
  APPEND_RESPONSE: 6,
  HEARTBEAT: 7,
  HEARTBEAT_RESPONSE: 8,
  SNAPSHOT: 9,
  TIMEOUT_NOW: 10,
  READ_INDEX: 11,
  READ_INDEX_RESPONSE: 12,
} as const;

interface RaftMessage {
  readonly type: number;
  readonly from: string;
  readonly to: string;
  readonly term: bigint;
  readonly lastIndex?: bigint;
  readonly lastTerm?: bigint;
  readonly transfer?: boolean;
  readonly granted?: boolean;
  readonly prevIndex?: bigint;
  readonly prevTerm?: bigint;
  readonly entries?: readonly { term: bigint; index: bigint; type: number; data: Uint8Array }[];
  readonly commit?: bigint;
  readonly index?: bigint;
  readonly reject?: boolean;
  readonly hintIndex?: bigint;
  readonly hintTerm?: bigint;
  readonly context?: bigint;
  readonly snapshot?: { index: bigint; term: bigint; voters: readonly string[] };
  readonly requestId?: bigint;
}

function encodeMessage(m: RaftMessage): Buffer {
  const fields: Pb[] = [num(1, m.type), str(2, m.from), str(3, m.to), num(4, m.term)];
  const opt = (field: number, value: bigint | boolean | undefined) => {
    if (value !== undefined)
      fields.push(num(field, typeof value === "boolean" ? (value ? 1 : 0) : value));
  };
  opt(5, m.lastIndex);
  opt(6, m.lastTerm);
  opt(7, m.transfer);
  opt(8, m.granted);
  opt(9, m.prevIndex);
  opt(10, m.prevTerm);
  for (const entry of m.entries ?? []) {
    fields.push([
      11,
      "bytes",
      pb([num(1, entry.term), num(2, entry.index), num(3, entry.type), [4, "bytes", entry.data]]),
    ]);
  }
  opt(12, m.commit);
  if (m.index !== undefined) fields.push([13, "sint", m.index]);
  opt(14, m.reject);
  opt(15, m.hintIndex);
  opt(16, m.hintTerm);
  opt(17, m.context);
  if (m.snapshot !== undefined) {
    const config = pb(m.snapshot.voters.map((voter) => str(1, voter)));
    fields.push([
      18,
      "bytes",
      pb([num(1, m.snapshot.index), num(2, m.snapshot.term), [3, "bytes", config]]),
    ]);
  }
  opt(19, m.requestId);
  return pb(fields);
}

function envelope(clusterId: string, body: { message: Buffer } | { chunk: Buffer }): Buffer {
  return pb([
    str(1, clusterId),
    "message" in body ? [2, "bytes", body.message] : [3, "bytes", body.chunk],
  ]);
}

function chunk(index: bigint, offset: bigint, data: Uint8Array, last: boolean): Buffer {
  return pb([num(1, index), num(2, offset), [3, "bytes", data], num(4, last ? 1 : 0)]);
}

// ---- generators --------------------------------------------------------------------------

let clusterId = "";

const absurd = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    2n,
    2n ** 31n,
    2n ** 32n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    2n ** 63n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.bigInt({ min: 0n, max: 1000n }),
);
const nodeName = fc.oneof(
  fc.constantFrom(...nodeIds),
  fc.constantFrom("intruder", "n4", "N1", "n1 ", "", "\u0000", "x".repeat(129)),
  fc.string({ maxLength: 20 }),
);

const raftMessage: fc.Arbitrary<RaftMessage> = fc.record(
  {
    type: fc.oneof(
      { weight: 12, arbitrary: fc.integer({ min: 1, max: 12 }) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 1000 }) },
    ),
    from: nodeName,
    to: nodeName,
    term: absurd,
    lastIndex: absurd,
    lastTerm: absurd,
    transfer: fc.boolean(),
    granted: fc.boolean(),
    prevIndex: absurd,
    prevTerm: absurd,
    entries: fc.array(
      fc.record({
        term: absurd,
        index: absurd,
        type: fc.integer({ min: 0, max: 5 }),
        data: fc.uint8Array({ maxLength: 64 }),
      }),
      { maxLength: 4 },
    ),
    commit: absurd,
    index: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    reject: fc.boolean(),
    hintIndex: absurd,
    hintTerm: absurd,
    context: absurd,
    snapshot: fc.record({
      index: absurd,
      term: absurd,
      voters: fc.array(nodeName, { maxLength: 4 }),
    }),
    requestId: absurd,
  },
  { requiredKeys: ["type", "from", "to", "term"] },
);

/** A cluster id that is not this cluster's. */
const foreignId = fc
  .oneof(
    fc.string({ maxLength: 24 }),
    fc.constantFrom("", "0000000000000000"),
    fc.constant(null).map(() => clusterId.toUpperCase()),
    fc.constant(null).map(() => clusterId.slice(0, -1)),
    fc.constant(null).map(() => `${clusterId}\u0000`),
    fc.constant(null).map(() => ` ${clusterId}`),
  )
  .filter((id) => id !== clusterId);

type Frame = { readonly what: string; readonly bytes: Buffer };

const frame: fc.Arbitrary<Frame> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc
      .uint8Array({ maxLength: 300 })
      .map((b) => ({ what: "random bytes", bytes: Buffer.from(b) })),
  },
  {
    weight: 5,
    arbitrary: fc.tuple(foreignId, raftMessage).map(([id, m]) => ({
      what: `type ${m.type} from ${JSON.stringify(m.from)} term ${m.term} under cluster id ${JSON.stringify(id)}`,
      bytes: envelope(id, { message: encodeMessage(m) }),
    })),
  },
  {
    // This cluster's id: only frames the codec refuses, or addressed elsewhere, are kept.
    weight: 4,
    arbitrary: raftMessage.map((m) => ({
      what: `type ${m.type} from ${JSON.stringify(m.from)} to ${JSON.stringify(m.to)} term ${m.term} under this cluster's id`,
      bytes: envelope(clusterId, { message: encodeMessage(m) }),
    })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.oneof(
          foreignId,
          fc.constant(null).map(() => clusterId),
        ),
        raftMessage,
        fc.nat(),
      )
      .map(([id, m, cut]) => {
        const whole = envelope(id, { message: encodeMessage(m) });
        return {
          what: `truncated at ${cut % whole.length} of ${whole.length}`,
          bytes: whole.subarray(0, cut % whole.length),
        };
      }),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        fc.oneof(
          foreignId,
          fc.constant(null).map(() => clusterId),
        ),
        absurd,
        absurd,
        fc.uint8Array({ maxLength: 200 }),
        fc.boolean(),
      )
      .map(([id, index, offset, data, last]) => ({
        what: `stray snapshot chunk index ${index} offset ${offset}`,
        bytes: envelope(id, { chunk: chunk(index, offset, data, last) }),
      })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(
        fc.uint8Array({ minLength: 1, maxLength: 60 }),
        fc.integer({ min: 0, max: 7 }),
        fc.integer({ min: 1, max: 40 }),
      )
      .map(([b, wire, field]) => ({
        what: `envelope with field ${field} of wire type ${wire}`,
        bytes: Buffer.concat([
          pb([str(1, clusterId)]),
          varint(BigInt((field << 3) | wire)),
          Buffer.from(b),
        ]),
      })),
  },
);

/**
 * Whether the product's codec would hand this frame to Raft on `node`: this cluster's id, a
 * message that decodes, addressed to it. Such frames belong to phase 3.
 */
function delivered(bytes: Buffer, node: string): boolean {
  try {
    const decoded = decodeFrame(bytes);
    return (
      decoded.clusterId === clusterId && decoded.kind === "message" && decoded.message.to === node
    );
  } catch {
    return false;
  }
}

// ---- raw bytes at the TCP and HTTP/2 level -----------------------------------------------

const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

function h2frame(
  type: number,
  flags: number,
  stream: number,
  payload: Uint8Array,
  declared?: number,
): Buffer {
  const header = Buffer.alloc(9);
  const length = declared ?? payload.length;
  header.writeUIntBE(length & 0xffffff, 0, 3);
  header[3] = type & 0xff;
  header[4] = flags & 0xff;
  header.writeUInt32BE(stream >>> 0, 5);
  return Buffer.concat([header, Buffer.from(payload)]);
}

const rawBytes: fc.Arbitrary<Frame> = fc.oneof(
  fc.uint8Array({ maxLength: 4096 }).map((b) => ({ what: "random bytes", bytes: Buffer.from(b) })),
  fc.constantFrom(
    {
      what: "HTTP/1.1 request",
      bytes: Buffer.from(
        "POST /muster.raft.v1.RaftPeer/Stream HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
      ),
    },
    { what: "TLS client hello", bytes: Buffer.from("16030100a5010000a10303", "hex") },
    { what: "preface only", bytes: preface },
    { what: "half a preface", bytes: preface.subarray(0, 11) },
  ),
  fc
    .uint8Array({ maxLength: 2048 })
    .map((b) => ({ what: "preface + garbage", bytes: Buffer.concat([preface, Buffer.from(b)]) })),
  fc
    .array(
      fc.record({
        type: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.integer({ min: 0, max: 255 })),
        flags: fc.integer({ min: 0, max: 255 }),
        stream: fc.oneof(fc.constantFrom(0, 1, 2, 3, 0x7fffffff, 0x80000001), fc.nat()),
        payload: fc.uint8Array({ maxLength: 64 }),
        declared: fc.option(
          fc.oneof(fc.integer({ min: 0, max: 100 }), fc.constantFrom(0xffffff, 16_385, 16_384)),
          { freq: 4 },
        ),
      }),
      { minLength: 1, maxLength: 12 },
    )
    .map((frames) => ({
      what: `preface + ${frames.length} HTTP/2 frames (types ${frames.map((f) => f.type).join(",")})`,
      bytes: Buffer.concat([
        preface,
        h2frame(4, 0, 0, new Uint8Array(0)),
        ...frames.map((f) =>
          h2frame(f.type, f.flags, f.stream, f.payload, f.declared ?? undefined),
        ),
      ]),
    })),
);

/** A gRPC stream opened by hand, whose 5-byte message prefix says anything. */
const lyingMessage = fc.oneof(
  fc
    .tuple(fc.integer({ min: 0, max: 255 }), fc.nat(), fc.uint8Array({ maxLength: 200 }))
    .map(([flag, length, body]) => ({
      what: `gRPC prefix flag ${flag} length ${length} with ${body.length} bytes`,
      bytes: Buffer.concat([
        Buffer.from([flag]),
        (() => {
          const b = Buffer.alloc(4);
          b.writeUInt32BE(length >>> 0);
          return b;
        })(),
        Buffer.from(body),
      ]),
    })),
  fc
    .uint8Array({ maxLength: 64 })
    .map((b) => ({ what: "DATA without a gRPC prefix", bytes: Buffer.from(b) })),
);

// ---- the cluster's view --------------------------------------------------------------------

let cluster: AgentCluster;
let clients: grpc.Client[] = [];
let baseline: { hash: { appliedIndex: number; hash: string }; leaders: Record<string, string> };

beforeAll(async () => {
  cluster = await startCluster();
  clusterId = (await readFile(join(cluster.get("n1").dataDir, "cluster-id"), "utf8")).trim();
  clients = nodeIds.map(
    (id) =>
      new grpc.Client(cluster.get(id).raft, grpc.credentials.createInsecure(), {
        "grpc.max_send_message_length": 16 * 1024 * 1024,
      }),
  );
  baseline = { hash: await settled(cluster), leaders: await leaderView(cluster) };
}, 120_000);

afterAll(async () => {
  for (const client of clients) client.close();
  await cluster?.destroy();
}, 30_000);

/** Everything a foreign input must leave as it was; then a write must still commit. */
/** `muster_raft_messages_dropped_total{reason}` summed over the live nodes' /metrics. */
async function droppedTotal(reason: string): Promise<number> {
  const pattern = new RegExp(
    `^muster_raft_messages_dropped_total\\{reason="${reason}"\\} (\\d+)$`,
    "m",
  );
  let total = 0;
  for (const id of nodeIds) {
    const text = await fetch(`http://${cluster.get(id).http}/metrics`)
      .then((response) => response.text())
      .catch(() => "");
    total += Number(pattern.exec(text)?.[1] ?? 0);
  }
  return total;
}

async function unchangedAndCommitting(what: string): Promise<void> {
  const problems = await liveness(cluster);
  expect(
    problems,
    `${what}: ${await Promise.all(nodeIds.map((id) => fatalLines(cluster, id)))}`,
  ).toEqual([]);
  expect(await leaderView(cluster), `${what}: leader or term moved`).toEqual(baseline.leaders);
  expect(await cluster.converged(), `${what}: state hash moved`).toEqual(baseline.hash);
  const leader = await cluster.leader();
  const service = `after-${what.replace(/[^a-z]/g, "")}`.slice(0, 40);
  const written = await cluster.request(leader, "PUT", `/v1/services/${service}/instances/i1`, {
    address: "10.0.0.1",
    port: 80,
    ttl: "1h",
  });
  expect(written.status, `${what}: a write after the fuzz`).toBe(200);
  baseline = { hash: await cluster.converged(), leaders: await leaderView(cluster) };
}

/** One client stream of frames to a node's peer port; resolves with how it ended. */
function stream(node: number, frames: readonly Buffer[], path = streamPath): Promise<string> {
  const client = clients[node] as grpc.Client;
  return new Promise((resolve) => {
    const call = client.makeClientStreamRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      { deadline: Date.now() + 10_000 },
      (error) => resolve(error === null ? "OK" : (grpc.status[error.code] ?? String(error.code))),
    );
    call.on("error", () => undefined);
    for (const f of frames) call.write(f);
    call.end();
  });
}

describe("Raft peer port fuzz", () => {
  it("survives raw TCP garbage and broken HTTP/2 and gRPC framing", async () => {
    const started = performance.now();
    const connections = samples(rawBytes, seed, 1, rawConnections);
    let sent = 0;
    await pool(connections, 24, Date.now() + 12_000, async (c, i) => {
      const address = cluster.get(nodeIds[i % 3] as string).raft;
      const at = address.lastIndexOf(":");
      await new Promise<void>((resolve) => {
        const socket = connect(Number(address.slice(at + 1)), address.slice(0, at));
        const done = () => {
          socket.destroy();
          resolve();
        };
        socket.on("error", done);
        socket.on("close", done);
        socket.on("data", () => undefined);
        // The server may stop reading (a frame that announces more than is sent): give up.
        setTimeout(done, 500);
        socket.write(c.bytes, () => setTimeout(done, 40));
      });
      sent++;
    });
    const rawSeconds = (performance.now() - started) / 1000;
    // gRPC streams opened by hand with lying message prefixes.
    const lies = samples(
      fc.array(lyingMessage, { minLength: 1, maxLength: 4 }),
      seed,
      2,
      http2Streams,
    );
    const endings = new Map<string, number>();
    await pool(lies, 16, Date.now() + 10_000, async (messages, i) => {
      const address = cluster.get(nodeIds[i % 3] as string).raft;
      const ending = await new Promise<string>((resolve) => {
        const session = http2Connect(`http://${address}`);
        let status = "no status";
        let settledAlready = false;
        const finish = (why?: string) => {
          if (settledAlready) return;
          settledAlready = true;
          clearTimeout(limit);
          session.destroy();
          resolve(why ?? status);
        };
        // A stream that ends inside a message gets no status from grpc-js: cut it short.
        const limit = setTimeout(() => finish(), 500);
        session.on("error", () => finish("session error"));
        const req = session.request({
          ":method": "POST",
          ":path": streamPath,
          "content-type": "application/grpc",
          te: "trailers",
        });
        req.on("trailers", (trailers) => {
          status = `grpc-status ${String(trailers["grpc-status"])}`;
        });
        req.on("response", (headers) => {
          if (headers["grpc-status"] !== undefined)
            status = `grpc-status ${String(headers["grpc-status"])}`;
        });
        req.on("error", () => undefined);
        req.on("close", () => finish());
        for (const m of messages) req.write(m.bytes);
        req.end();
      });
      endings.set(ending, (endings.get(ending) ?? 0) + 1);
      sent += messages.length;
    });
    console.log(
      `[fuzz raft-peer] ${sent} raw connections (${rawSeconds.toFixed(1)} s) and hand-made gRPC messages in ${((performance.now() - started) / 1000).toFixed(1)} s; ` +
        `hand-made streams ended: ${[...endings].map(([k, v]) => `${k} x${v}`).join(", ")}`,
    );
    await unchangedAndCommitting("raw bytes");
  }, 60_000);

  it("drops every frame from outside this cluster, undecodable or refused by the codec", async () => {
    const started = performance.now();
    const failures = new Failures();
    const plan = samples(
      fc
        .integer({ min: 1, max: 2 * framesPerStream })
        .chain((n) => fc.array(frame, { minLength: n, maxLength: n })),
      seed,
      3,
      grpcStreams,
    );
    let frames = 0;
    let held = 0;
    const endings = new Map<string, number>();
    await pool(plan, 16, Date.now() + 15_000, async (batch, i) => {
      const node = i % 3;
      const target = nodeIds[node] as string;
      const kept = batch.filter((f) => !delivered(f.bytes, target));
      held += batch.length - kept.length;
      const ending = await stream(
        node,
        kept.map((f) => f.bytes),
      );
      endings.set(ending, (endings.get(ending) ?? 0) + 1);
      if (ending !== "OK")
        failures.add(
          `stream ended ${ending}`,
          kept
            .map((f) => f.what)
            .join("; ")
            .slice(0, 300),
        );
      frames += kept.length;
    });
    // A frame over the receive limit, and methods the port does not serve.
    const oversized = await stream(0, [
      envelope(clusterId.toUpperCase(), {
        chunk: chunk(1n, 0n, Buffer.alloc(5 * 1024 * 1024), true),
      }),
    ]);
    const unknown = await stream(1, [Buffer.from("hello")], "/muster.raft.v1.RaftPeer/Nope");
    const other = await stream(2, [Buffer.alloc(0)], "/muster.v1.Registry/Get");
    console.log(
      `[fuzz raft-peer] ${frames} frames over ${plan.length} streams in ${((performance.now() - started) / 1000).toFixed(1)} s ` +
        `(${held} frames this cluster would deliver left for phase 3); streams ended: ${[...endings].map(([k, v]) => `${k} x${v}`).join(", ")}; ` +
        `oversized frame: ${oversized}, unknown method: ${unknown}, API method on the peer port: ${other}`,
    );
    expect(frames).toBeGreaterThanOrEqual(9_000);
    expect(failures.count, failures.summary()).toBe(0);
    expect({ oversized, unknown, other }).toEqual({
      oversized: "RESOURCE_EXHAUSTED",
      unknown: "UNIMPLEMENTED",
      other: "UNIMPLEMENTED",
    });
    await unchangedAndCommitting("foreign frames");
    // Operators see the drops in /metrics, by reason.
    expect(await droppedTotal("other-cluster")).toBeGreaterThan(0);
    expect(await droppedTotal("undecodable")).toBeGreaterThan(0);
  }, 60_000);

  it("never lets a node outside the membership raise a term, lead, or crash a node", async () => {
    // One kind of frame at a time, from "intruder" (not a member) with this cluster's id,
    // from the least to the most harmful; after each, the cluster is judged and, if it
    // moved, given a new baseline so that the next kind is judged on its own.
    const intruder = "intruder";
    const alive = () =>
      nodeIds.filter((id) => {
        const child = cluster.get(id).process;
        return child !== null && child.exitCode === null && child.signalCode === null;
      });
    /** The leader and term every live node agrees on, or null after `ms`. */
    const agreed = async (ms: number) =>
      eventually(
        "the live nodes to agree on a leader",
        async () => {
          const views = await Promise.all(
            alive().map((id) => cluster.request(id, "GET", "/v1/cluster/leader")),
          );
          const ids = new Set(views.map((v) => (v.body.leader as { id: string } | null)?.id));
          const [only] = ids;
          if (
            ids.size !== 1 ||
            only === undefined ||
            !alive().includes(only as (typeof nodeIds)[number])
          )
            return undefined;
          return { leader: only, term: BigInt(views[0]?.body.term as number) };
        },
        ms,
      ).catch(() => null);
    const kinds: {
      name: string;
      build: (s: { leader: string; follower: string; term: bigint }) => [string, RaftMessage][];
    }[] = [
      {
        name: "prevote with a far higher term and log",
        build: ({ leader, follower, term }) =>
          [leader, follower].map((to) => [
            to,
            {
              type: messageTypes.PREVOTE,
              from: intruder,
              to,
              term: term + 1000n,
              lastIndex: 2n ** 50n,
              lastTerm: term + 1000n,
            },
          ]),
      },
      {
        name: "vote with a far higher term and log",
        build: ({ leader, follower, term }) =>
          [leader, follower].map((to) => [
            to,
            {
              type: messageTypes.VOTE,
              from: intruder,
              to,
              term: term + 1000n,
              lastIndex: 2n ** 50n,
              lastTerm: term + 1000n,
            },
          ]),
      },
      {
        name: "read-index and read-index-response",
        build: ({ leader, follower, term }) => [
          [
            leader,
            { type: messageTypes.READ_INDEX, from: intruder, to: leader, term, requestId: 1n },
          ],
          [
            follower,
            {
              type: messageTypes.READ_INDEX_RESPONSE,
              from: intruder,
              to: follower,
              term,
              requestId: 1n,
              index: 2n ** 40n,
            },
          ],
        ],
      },
      {
        name: "append-response and heartbeat-response in the current term",
        build: ({ leader, term }) => [
          [
            leader,
            {
              type: messageTypes.APPEND_RESPONSE,
              from: intruder,
              to: leader,
              term,
              index: 2n ** 40n,
            },
          ],
          [
            leader,
            {
              type: messageTypes.HEARTBEAT_RESPONSE,
              from: intruder,
              to: leader,
              term,
              context: 2n ** 40n,
            },
          ],
        ],
      },
      {
        name: "heartbeat in the current term (claims leadership of a follower)",
        build: ({ follower, term }) => [
          [
            follower,
            {
              type: messageTypes.HEARTBEAT,
              from: intruder,
              to: follower,
              term,
              commit: 0n,
              context: 1n,
            },
          ],
        ],
      },
      {
        name: "heartbeat with a higher term",
        build: ({ follower, term }) => [
          [
            follower,
            {
              type: messageTypes.HEARTBEAT,
              from: intruder,
              to: follower,
              term: term + 1000n,
              commit: 0n,
              context: 1n,
            },
          ],
        ],
      },
      {
        name: "vote with the transfer flag and a higher term",
        build: ({ follower, term }) => [
          [
            follower,
            {
              type: messageTypes.VOTE,
              from: intruder,
              to: follower,
              term: term + 1000n,
              lastIndex: 2n ** 50n,
              lastTerm: term + 1000n,
              transfer: true,
            },
          ],
        ],
      },
      {
        name: "append-response with a higher term",
        build: ({ leader, term }) => [
          [
            leader,
            {
              type: messageTypes.APPEND_RESPONSE,
              from: intruder,
              to: leader,
              term: term + 1000n,
              index: 0n,
              reject: true,
            },
          ],
        ],
      },
      {
        name: "timeout-now in the current term",
        build: ({ follower, term }) => [
          [follower, { type: messageTypes.TIMEOUT_NOW, from: intruder, to: follower, term }],
        ],
      },
      {
        name: "append in the leader's own term, to the leader",
        build: ({ leader, term }) => [
          [
            leader,
            {
              type: messageTypes.APPEND,
              from: intruder,
              to: leader,
              term,
              prevIndex: 0n,
              prevTerm: 0n,
              commit: 0n,
            },
          ],
        ],
      },
      {
        // Terms past 2^53 do not decode (codec: "must be a non-negative integer"): a cluster
        // pushed to 2^53 - 1 can no longer carry a vote for the next term.
        name: "heartbeat with term 2^53 - 1",
        build: ({ follower }) => [
          [
            follower,
            {
              type: messageTypes.HEARTBEAT,
              from: intruder,
              to: follower,
              term: 2n ** 53n - 1n,
              commit: 0n,
              context: 1n,
            },
          ],
        ],
      },
    ];
    const violations: string[] = [];
    const untried: string[] = [];
    for (const kind of kinds) {
      const current = await agreed(10_000);
      if (current === null) {
        untried.push(`${kind.name} (no leader among ${alive().join(", ")})`);
        continue;
      }
      const { leader, term } = current;
      const follower = alive().find((id) => id !== leader) as string;
      const exitedBefore = nodeIds.filter((id) => !alive().includes(id));
      const before = await leaderView(cluster);
      const frames = kind.build({ leader, follower, term });
      for (const [to, message] of frames) {
        const bytes = envelope(clusterId, { message: encodeMessage(message) });
        await stream(nodeIds.indexOf(to as (typeof nodeIds)[number]), [bytes]);
      }
      // Several election timeouts (200 ms here) for any effect to show.
      await sleep(1500);
      const exited = nodeIds.filter((id) => !alive().includes(id) && !exitedBefore.includes(id));
      const after = await leaderView(cluster);
      const sent = frames
        .map(
          ([to, m]) =>
            `${to} <- ${shown(Object.fromEntries(Object.entries(m).map(([k, v]) => [k, typeof v === "bigint" ? String(v) : v])), 200)} (hex ${envelope(clusterId, { message: encodeMessage(m) }).toString("hex")})`,
        )
        .join("; ");
      if (exited.length > 0) {
        const why = (await Promise.all(exited.map((id) => fatalLines(cluster, id)))).join(" | ");
        violations.push(
          `${kind.name}: ${exited.join(", ")} exited (${why.slice(0, 400)}); sent ${sent}`,
        );
        continue;
      }
      if (JSON.stringify(after) !== JSON.stringify(before)) {
        const recovered = await agreed(5000);
        violations.push(
          `${kind.name}: ${JSON.stringify(before)} -> ${JSON.stringify(after)}` +
            `${recovered === null ? " and no leader 5 s later" : ""}; sent ${sent}`,
        );
      }
    }
    console.log(
      `[fuzz raft-peer] non-member frames: ${kinds.length - untried.length} kinds tried, ${violations.length} violations`,
    );
    expect({ violations, untried }).toEqual({ violations: [], untried: [] });
    expect(await droppedTotal("not-a-member")).toBeGreaterThanOrEqual(kinds.length);
  }, 90_000);
});
