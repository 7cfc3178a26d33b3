import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import type { Message } from "../../../raft/core/types.js";
import {
  GrpcTransport,
  type GrpcTransportOptions,
} from "../../../raft/transport/grpc-transport.js";
import { waitFor } from "../runtime/memory-cluster.js";

const started: GrpcTransport[] = [];
afterEach(async () => {
  for (const transport of started.splice(0)) await transport.close();
});

async function transport(
  id: string,
  overrides: Partial<GrpcTransportOptions> = {},
): Promise<{ transport: GrpcTransport; inbox: Message[] }> {
  const created = await GrpcTransport.start({
    id,
    clusterId: "cluster-a",
    listen: "127.0.0.1:0",
    peers: new Map(),
    maxQueuedFrames: 1000,
    snapshotChunkBytes: 64 * 1024,
    maxSnapshotBytes: 64 * 1024 * 1024,
    // Every node of these tests is a member unless a test says otherwise.
    isMember: () => true,
    ...overrides,
  });
  started.push(created);
  const inbox: Message[] = [];
  created.onMessage((message) => inbox.push(message));
  return { transport: created, inbox };
}

function heartbeat(from: string, to: string, context: number): Message {
  return { type: "heartbeat", from, to, term: 3, commit: 7, context };
}

describe("gRPC peer transport", () => {
  it("drops messages from a node outside the membership, and counts them", async () => {
    const intruder = await transport("intruder");
    const b = await transport("n2", { isMember: (node) => node === "n1" });
    intruder.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    const a = await transport("n1");
    a.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    intruder.transport.send(heartbeat("intruder", "n2", 1));
    a.transport.send(heartbeat("n1", "n2", 2));
    await waitFor("the member's message", () => (b.inbox.length === 1 ? true : undefined));
    await waitFor("the stranger's message to be dropped", () =>
      b.transport.counters.droppedStranger === 1 ? true : undefined,
    );
    expect(b.inbox.map((message) => message.from)).toEqual(["n1"]);
  });

  it("delivers messages between peers in the order they were sent", async () => {
    const a = await transport("n1");
    const b = await transport("n2");
    a.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    b.transport.setPeer("n1", `127.0.0.1:${a.transport.port}`);
    for (let context = 1; context <= 200; context++)
      a.transport.send(heartbeat("n1", "n2", context));
    b.transport.send(heartbeat("n2", "n1", 1));
    await waitFor("200 messages at n2", () => (b.inbox.length === 200 ? true : undefined));
    await waitFor("1 message at n1", () => (a.inbox.length === 1 ? true : undefined));
    expect(b.inbox.map((m) => (m.type === "heartbeat" ? m.context : -1))).toEqual(
      Array.from({ length: 200 }, (_, i) => i + 1),
    );
    expect(b.inbox[0]).toEqual(heartbeat("n1", "n2", 1));
  });

  it("streams a large snapshot in chunks and reassembles it intact", async () => {
    const a = await transport("n1");
    const b = await transport("n2");
    a.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    const data = new Uint8Array(1_000_000).map((_, i) => (i * 31) % 251);
    const snapshot = { index: 90, term: 4, config: { voters: ["n1", "n2"], learners: [] }, data };
    a.transport.send({ type: "snapshot", from: "n1", to: "n2", term: 4, snapshot });
    const received = await waitFor("the snapshot", () => b.inbox[0]);
    expect(received.type).toBe("snapshot");
    if (received.type !== "snapshot") return;
    expect(received.snapshot.index).toBe(90);
    expect(received.snapshot.config).toEqual(snapshot.config);
    expect(Buffer.compare(Buffer.from(received.snapshot.data), Buffer.from(data))).toBe(0);
  });

  it("drops, and counts, messages from another cluster", async () => {
    const stranger = await transport("n1", { clusterId: "cluster-b" });
    const b = await transport("n2");
    stranger.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    stranger.transport.send({
      type: "vote",
      from: "n1",
      to: "n2",
      term: 99,
      lastIndex: 1,
      lastTerm: 1,
      transfer: false,
    });
    await waitFor("the drop to be counted", () =>
      b.transport.counters.droppedOtherCluster === 1 ? true : undefined,
    );
    expect(b.inbox).toEqual([]);
  });

  it("survives undecodable frames and keeps serving the stream", async () => {
    const b = await transport("n2");
    const client = new grpc.Client(
      `127.0.0.1:${b.transport.port}`,
      grpc.credentials.createInsecure(),
    );
    const stream = client.makeClientStreamRequest<Buffer, Buffer>(
      "/muster.raft.v1.RaftPeer/Stream",
      (bytes: Buffer) => bytes,
      (bytes: Buffer) => bytes,
      () => {},
    );
    stream.write(Buffer.from([0xff, 0xff, 0xff, 0x01]));
    stream.end();
    await waitFor("the bad frame to be counted", () =>
      b.transport.counters.droppedUndecodable === 1 ? true : undefined,
    );
    client.close();
    const a = await transport("n1");
    a.transport.setPeer("n2", `127.0.0.1:${b.transport.port}`);
    a.transport.send(heartbeat("n1", "n2", 5));
    await waitFor("a good message after the bad one", () => b.inbox[0]);
  });

  it("bounds the queue to a dead peer and delivers again once it is back", async () => {
    const b = await transport("n2");
    const port = b.transport.port;
    await b.transport.close();
    started.splice(started.indexOf(b.transport), 1);
    const a = await transport("n1", { maxQueuedFrames: 50 });
    a.transport.setPeer("n2", `127.0.0.1:${port}`);
    for (let context = 1; context <= 5000; context++)
      a.transport.send(heartbeat("n1", "n2", context));
    expect(a.transport.counters.droppedQueueFull).toBeGreaterThan(4000);
    const back = await transport("n2", { listen: `127.0.0.1:${port}` });
    // Raft resends heartbeats every tick; a frame written while the link was still down may be lost.
    let context = 10_000;
    await waitFor(
      "delivery after the peer came back",
      () => {
        a.transport.send(heartbeat("n1", "n2", ++context));
        return back.inbox.some((m) => m.type === "heartbeat" && m.context >= 10_000)
          ? true
          : undefined;
      },
      10_000,
    );
    expect(a.transport.counters.reconnects).toBeGreaterThan(0);
  });
});
