import * as grpc from "@grpc/grpc-js";
import { CodecError, decodeFrame, encodeFrame, encodeSummary, type Frame } from "../codec/codec.js";
import type { Message, NodeId } from "../core/types.js";
import type { RaftTransport } from "./transport.js";

const streamPath = "/muster.raft.v1.RaftPeer/Stream";

const peerService: grpc.ServiceDefinition = {
  Stream: {
    path: streamPath,
    requestStream: true,
    responseStream: false,
    requestSerialize: (frame: Uint8Array) =>
      Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength),
    requestDeserialize: (bytes: Buffer) => bytes,
    responseSerialize: (summary: Uint8Array) =>
      Buffer.from(summary.buffer, summary.byteOffset, summary.byteLength),
    responseDeserialize: (bytes: Buffer) => bytes,
  },
};

export interface GrpcTransportOptions {
  readonly id: NodeId;
  readonly clusterId: string;
  /** host:port to listen on for peers. */
  readonly listen: string;
  /** Raft address (host:port) of every other member. */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** Frames waiting for one peer; past it new messages to that peer are dropped. */
  readonly maxQueuedFrames: number;
  readonly snapshotChunkBytes: number;
  /** A snapshot larger than this is refused on receipt. */
  readonly maxSnapshotBytes: number;
  /**
   * Whether a node that is not among `peers` is a member all the same (say, one in the
   * Raft configuration whose address is not known yet). Messages from anyone else are
   * dropped: a node outside the membership must never move a term or a leadership.
   */
  readonly isMember?: (node: NodeId) => boolean;
  /** Mutual TLS between peers (both ends show and check certificates); plain when absent. */
  readonly credentials?: PeerCredentials;
}

export interface PeerCredentials {
  readonly server: grpc.ServerCredentials;
  readonly channel: grpc.ChannelCredentials;
}

/** Why messages were dropped, for metrics and tests. */
export interface TransportCounters {
  sent: number;
  received: number;
  droppedQueueFull: number;
  droppedOtherCluster: number;
  droppedUndecodable: number;
  droppedMisaddressed: number;
  droppedStranger: number;
  reconnects: number;
}

/**
 * Raft messages over gRPC: one long-lived client stream to each peer, frames written back
 * to back (appends are pipelined), snapshots cut into chunks, a bounded queue per peer and
 * reconnection with exponential backoff and jitter.
 */
export class GrpcTransport implements RaftTransport {
  readonly counters: TransportCounters = {
    sent: 0,
    received: 0,
    droppedQueueFull: 0,
    droppedOtherCluster: 0,
    droppedUndecodable: 0,
    droppedMisaddressed: 0,
    droppedStranger: 0,
    reconnects: 0,
  };
  private handler: (message: Message) => void = () => {};
  private readonly senders = new Map<NodeId, PeerSender>();

  private constructor(
    private readonly options: GrpcTransportOptions,
    private readonly server: grpc.Server,
    readonly port: number,
  ) {
    for (const [peer, address] of options.peers) this.setPeer(peer, address);
  }

  static async start(options: GrpcTransportOptions): Promise<GrpcTransport> {
    const server = new grpc.Server({
      // Room for a snapshot chunk or an append (about 1 MiB of entries) with their framing.
      "grpc.max_receive_message_length": options.snapshotChunkBytes + 3 * 1024 * 1024,
    });
    let transport: GrpcTransport | null = null;
    server.addService(peerService, {
      Stream: (
        call: grpc.ServerReadableStream<Buffer, Uint8Array>,
        callback: grpc.sendUnaryData<Uint8Array>,
      ) => transport?.serveStream(call, callback),
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(
        options.listen,
        options.credentials?.server ?? grpc.ServerCredentials.createInsecure(),
        (error, bound) => (error === null ? resolve(bound) : reject(error)),
      ),
    );
    transport = new GrpcTransport(options, server, port);
    return transport;
  }

  onMessage(handler: (message: Message) => void): void {
    this.handler = handler;
  }

  send(message: Message): void {
    const sender = this.senders.get(message.to);
    if (sender === undefined) {
      this.counters.droppedMisaddressed++;
      return;
    }
    const frames = framesOf(message, this.options.clusterId, this.options.snapshotChunkBytes);
    if (sender.enqueue(frames)) this.counters.sent++;
    else this.counters.droppedQueueFull++;
  }

  /** Add a peer, or move it to a new address. */
  setPeer(peer: NodeId, address: string): void {
    if (peer === this.options.id) return;
    const current = this.senders.get(peer);
    if (current?.address === address) return;
    current?.close();
    this.senders.set(
      peer,
      new PeerSender(
        address,
        this.options.credentials?.channel ?? grpc.credentials.createInsecure(),
        this.options.maxQueuedFrames,
        this.counters,
      ),
    );
  }

  removePeer(peer: NodeId): void {
    this.senders.get(peer)?.close();
    this.senders.delete(peer);
  }

  async close(): Promise<void> {
    for (const sender of this.senders.values()) sender.close();
    this.senders.clear();
    // Peers reconnect on their own: no need to wait for their streams to end.
    this.server.forceShutdown();
  }

  private serveStream(
    call: grpc.ServerReadableStream<Buffer, Uint8Array>,
    callback: grpc.sendUnaryData<Uint8Array>,
  ): void {
    let received = 0;
    let pendingSnapshot: {
      message: Extract<Message, { type: "snapshot" }>;
      chunks: Uint8Array[];
      size: number;
    } | null = null;
    call.on("data", (bytes: Buffer) => {
      const frame = this.decode(bytes);
      if (frame === null) return;
      received++;
      if (frame.kind === "message") {
        if (frame.message.type === "snapshot") {
          pendingSnapshot = { message: frame.message, chunks: [], size: 0 };
          return;
        }
        this.deliver(frame.message);
        return;
      }
      if (
        pendingSnapshot === null ||
        pendingSnapshot.message.snapshot.index !== frame.index ||
        frame.offset !== pendingSnapshot.size
      ) {
        this.counters.droppedUndecodable++;
        pendingSnapshot = null;
        return;
      }
      pendingSnapshot.chunks.push(frame.data);
      pendingSnapshot.size += frame.data.length;
      if (pendingSnapshot.size > this.options.maxSnapshotBytes) {
        this.counters.droppedUndecodable++;
        pendingSnapshot = null;
        return;
      }
      if (frame.last) {
        const { message, chunks } = pendingSnapshot;
        pendingSnapshot = null;
        this.deliver({
          ...message,
          snapshot: { ...message.snapshot, data: Buffer.concat(chunks) },
        });
      }
    });
    call.on("end", () => callback(null, encodeSummary(received)));
    call.on("error", () => {
      // The peer went away; it reconnects on its own.
    });
  }

  private decode(bytes: Buffer): Frame | null {
    try {
      const frame = decodeFrame(bytes);
      if (frame.clusterId !== this.options.clusterId) {
        this.counters.droppedOtherCluster++;
        return null;
      }
      return frame;
    } catch (error) {
      if (!(error instanceof CodecError)) throw error;
      this.counters.droppedUndecodable++;
      return null;
    }
  }

  private deliver(message: Message): void {
    if (message.to !== this.options.id) {
      this.counters.droppedMisaddressed++;
      return;
    }
    if (!this.senders.has(message.from) && this.options.isMember?.(message.from) !== true) {
      this.counters.droppedStranger++;
      return;
    }
    this.counters.received++;
    this.handler(message);
  }
}

/** A message as frames: a snapshot goes as its metadata, then its data in chunks. */
function framesOf(message: Message, clusterId: string, chunkBytes: number): Frame[] {
  if (message.type !== "snapshot") return [{ kind: "message", clusterId, message }];
  const data = message.snapshot.data;
  const header = { ...message, snapshot: { ...message.snapshot, data: new Uint8Array(0) } };
  const frames: Frame[] = [{ kind: "message", clusterId, message: header }];
  const chunkCount = Math.max(1, Math.ceil(data.length / chunkBytes));
  for (let chunk = 0; chunk < chunkCount; chunk++) {
    const offset = chunk * chunkBytes;
    frames.push({
      kind: "chunk",
      clusterId,
      index: message.snapshot.index,
      offset,
      data: data.subarray(offset, offset + chunkBytes),
      last: chunk === chunkCount - 1,
    });
  }
  return frames;
}

const minBackoffMs = 50;
const maxBackoffMs = 2000;

/** The stream to one peer, with its bounded queue and reconnect loop. */
class PeerSender {
  private readonly client: grpc.Client;
  private readonly queue: Frame[] = [];
  private stream: grpc.ClientWritableStream<Uint8Array> | null = null;
  private waitingForDrain = false;
  private backoffMs = minBackoffMs;
  private retryTimer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(
    readonly address: string,
    credentials: grpc.ChannelCredentials,
    private readonly maxQueuedFrames: number,
    private readonly counters: TransportCounters,
  ) {
    this.client = new grpc.Client(address, credentials, {
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      "grpc.initial_reconnect_backoff_ms": minBackoffMs,
      "grpc.max_reconnect_backoff_ms": maxBackoffMs,
    });
  }

  /** Queue a message's frames, all or none; false when the queue is full. */
  enqueue(frames: Frame[]): boolean {
    if (this.closed || this.queue.length + frames.length > this.maxQueuedFrames) return false;
    this.queue.push(...frames);
    this.flush();
    return true;
  }

  private flush(): void {
    if (this.closed || this.waitingForDrain || this.retryTimer !== null) return;
    const stream = this.stream ?? this.open();
    while (this.queue.length > 0) {
      const frame = this.queue.shift() as Frame;
      const accepted = stream.write(encodeFrame(frame), (error: Error | null | undefined) => {
        if (error === null || error === undefined) this.backoffMs = minBackoffMs;
      });
      if (!accepted) {
        this.waitingForDrain = true;
        stream.once("drain", () => {
          this.waitingForDrain = false;
          this.flush();
        });
        return;
      }
    }
  }

  private open(): grpc.ClientWritableStream<Uint8Array> {
    const stream = this.client.makeClientStreamRequest<Uint8Array, Uint8Array>(
      streamPath,
      (frame: Uint8Array) => Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength),
      (bytes: Buffer) => bytes,
      (error) => {
        if (error !== null && this.stream === stream) this.reconnectLater();
      },
    );
    stream.on("error", () => {
      if (this.stream === stream) this.reconnectLater();
    });
    this.stream = stream;
    return stream;
  }

  private reconnectLater(): void {
    this.stream = null;
    this.waitingForDrain = false;
    if (this.closed || this.retryTimer !== null) return;
    const delay = this.backoffMs / 2 + Math.random() * (this.backoffMs / 2);
    this.backoffMs = Math.min(this.backoffMs * 2, maxBackoffMs);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.counters.reconnects++;
      if (this.queue.length > 0) this.flush();
    }, delay);
    this.retryTimer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.stream?.end();
    this.stream = null;
    this.queue.length = 0;
    this.client.close();
  }
}
