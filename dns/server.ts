import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { createServer, isIPv6, type Server, type Socket } from "node:net";
import { Packet } from "dns2";
import type { Instance } from "../server/fsm/registry.js";
import {
  type AnswerOptions,
  answer,
  type DnsRecord,
  type RegistryView,
  rcodes,
  types,
  weightedOrder,
} from "./answers.js";
import { parseName } from "./names.js";

export interface DnsServerOptions extends AnswerOptions {
  /** host:port for both UDP and TCP. */
  readonly listen: string;
  readonly registry: RegistryView;
  /** Answer SERVFAIL once this node has heard no leader for this long (null: never). */
  readonly maxStaleMs: number | null;
  readonly lastLeaderContactMs: () => number | null;
}

/** Encoded answers to one question, with the query id and case still to patch in. */
interface CachedAnswer {
  readonly rcode: number;
  /** A few weighted shuffles, encoded once each; a query gets one at random. */
  readonly variants: readonly Buffer[];
  /** What a UDP client whose buffer is too small gets: the question and TC. */
  readonly truncated: Buffer;
}

const headerBytes = 12;
const plainUdpLimit = 512;
const maxUdpPayload = 4096;
const shuffledVariants = 8;
const maxCachedAnswers = 10_000;
const tcpIdleMs = 30_000;
const flagRd = 0x01;

/**
 * The DNS interface: UDP and TCP on one address, answering from this node's registry
 * state (also without a leader). Answers are built once per question and kept until a
 * change to their service, so a lookup costs no work proportional to the registry.
 */
export class DnsServer {
  private readonly cache = new Map<string, CachedAnswer>();
  /** service -> cache keys of its answers, for invalidation. */
  private readonly keysByService = new Map<string, Set<string>>();
  private udp!: UdpSocket;
  private tcp!: Server;
  private readonly connections = new Set<Socket>();

  private constructor(private readonly options: DnsServerOptions) {}

  static async start(options: DnsServerOptions): Promise<DnsServer> {
    const server = new DnsServer(options);
    await server.listen();
    return server;
  }

  get port(): number {
    return this.udp.address().port;
  }

  /** The registry changed `service` (null: possibly everything). */
  invalidate(service: string | null): void {
    if (service === null) {
      this.cache.clear();
      this.keysByService.clear();
      return;
    }
    for (const key of this.keysByService.get(service) ?? []) this.cache.delete(key);
    this.keysByService.delete(service);
  }

  /** The response to a query as received, or null when it deserves none. */
  respond(query: Buffer, transport: "udp" | "tcp"): Buffer | null {
    if (query.length < headerBytes) return null;
    if ((query[2] ?? 0) & 0x80) return null; // a response, not a query
    let packet: InstanceType<typeof Packet>;
    try {
      packet = Packet.parse(query);
    } catch {
      return errorResponse(query, rcodes.formErr);
    }
    const question = packet.questions[0];
    if (packet.errors.length > 0 || packet.questions.length !== 1 || question === undefined) {
      return errorResponse(query, rcodes.formErr);
    }
    if (packet.header.opcode !== 0) return errorResponse(query, rcodes.notImp);
    if (question.class !== 1 && question.class !== 255) return errorResponse(query, rcodes.refused);
    const opt = packet.additionals.find((record) => record.type === types.OPT);
    const limit =
      transport === "tcp"
        ? Number.POSITIVE_INFINITY
        : opt === undefined
          ? plainUdpLimit
          : Math.min(Math.max(Number(opt.class) || plainUdpLimit, plainUdpLimit), maxUdpPayload);
    if (this.tooStale()) return errorResponse(query, rcodes.servFail);
    const cached = this.cachedAnswer(
      String(question.name),
      Number(question.type),
      opt !== undefined,
    );
    const variant =
      cached.variants[Math.floor(Math.random() * cached.variants.length)] ?? cached.truncated;
    return patch(variant.length > limit ? cached.truncated : variant, query);
  }

  private tooStale(): boolean {
    if (this.options.maxStaleMs === null) return false;
    const contact = this.options.lastLeaderContactMs();
    return contact === null || contact > this.options.maxStaleMs;
  }

  private cachedAnswer(qname: string, qtype: number, edns: boolean): CachedAnswer {
    const name = qname.toLowerCase().replace(/\.$/, "");
    const key = `${qtype} ${edns ? "e" : "-"} ${name}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    const parsed = parseName(name, this.options.domain);
    const order = (instances: Instance[]) =>
      weightedOrder(instances, (instance) => instance.weight, Math.random);
    const variants: Buffer[] = [];
    let rcode: number = rcodes.noError;
    for (let variant = 0; variant < shuffledVariants; variant++) {
      const built = answer(parsed, name, qtype, this.options.registry, this.options, order);
      rcode = built.rcode;
      variants.push(encode(name, qtype, edns, built));
      if (built.answers.length < 2) break;
    }
    const truncated = encode(
      name,
      qtype,
      edns,
      { rcode, answers: [], authorities: [], additionals: [] },
      true,
    );
    const entry = { rcode, variants, truncated };
    if (this.cache.size >= maxCachedAnswers) this.invalidate(null);
    this.cache.set(key, entry);
    if (parsed.kind === "service" || parsed.kind === "instance") {
      let keys = this.keysByService.get(parsed.service);
      if (keys === undefined) {
        keys = new Set();
        this.keysByService.set(parsed.service, keys);
      }
      keys.add(key);
    }
    return entry;
  }

  private async listen(): Promise<void> {
    const at = this.options.listen.lastIndexOf(":");
    const host = this.options.listen.slice(0, at);
    const port = Number(this.options.listen.slice(at + 1));
    this.udp = createSocket(isIPv6(host) ? "udp6" : "udp4");
    this.udp.on("message", (message, peer) => {
      const response = this.respond(message, "udp");
      if (response !== null) this.udp.send(response, peer.port, peer.address);
    });
    this.udp.on("error", () => undefined);
    await new Promise<void>((resolve, reject) => {
      this.udp.once("error", reject);
      this.udp.bind(port, host, () => resolve());
    });
    this.tcp = createServer((socket) => this.serveTcp(socket));
    await new Promise<void>((resolve, reject) => {
      this.tcp.once("error", reject);
      // The same port as UDP, so that port 0 in tests still gives one address.
      this.tcp.listen(this.port, host, () => resolve());
    });
  }

  /** RFC 7766: two-byte length, then the message; many queries per connection. */
  private serveTcp(socket: Socket): void {
    this.connections.add(socket);
    socket.setTimeout(tcpIdleMs, () => socket.destroy());
    socket.on("error", () => socket.destroy());
    socket.on("close", () => this.connections.delete(socket));
    let buffered = Buffer.alloc(0);
    socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0);
        if (buffered.length < 2 + length) return;
        const query = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        const response = this.respond(Buffer.from(query), "tcp");
        if (response === null) continue;
        const frame = Buffer.alloc(2 + response.length);
        frame.writeUInt16BE(response.length, 0);
        response.copy(frame, 2);
        socket.write(frame);
      }
    });
  }

  async close(): Promise<void> {
    for (const socket of this.connections) socket.destroy();
    await new Promise<void>((resolve) => this.tcp.close(() => resolve()));
    await new Promise<void>((resolve) => this.udp.close(() => resolve()));
  }
}

function encode(
  name: string,
  qtype: number,
  edns: boolean,
  built: {
    rcode: number;
    answers: readonly DnsRecord[];
    authorities: readonly DnsRecord[];
    additionals: readonly DnsRecord[];
  },
  truncated = false,
): Buffer {
  const packet = new Packet();
  Object.assign(packet.header, {
    id: 0,
    qr: 1,
    opcode: 0,
    aa: 1,
    tc: truncated ? 1 : 0,
    rd: 0,
    ra: 0,
    rcode: built.rcode,
  });
  const resource = (record: DnsRecord) =>
    new Packet.Resource(record as ConstructorParameters<typeof Packet.Resource>[0]);
  packet.questions = [new Packet.Question(name, qtype, 1)];
  packet.answers = built.answers.map(resource);
  packet.authorities = built.authorities.map(resource);
  packet.additionals = built.additionals.map(resource);
  if (edns) packet.additionals.push(Packet.Resource.EDNS([], { udpPayloadSize: maxUdpPayload }));
  return packet.toBuffer();
}

/** The cached response with the query's id, RD flag and the question exactly as asked. */
function patch(cached: Buffer, query: Buffer): Buffer {
  const response = Buffer.from(cached);
  query.copy(response, 0, 0, 2);
  response[2] = ((response[2] ?? 0) & ~flagRd) | ((query[2] ?? 0) & flagRd);
  // Resolvers that randomise the case of names (0x20) expect it echoed: copy the name.
  let end = headerBytes;
  while (end < query.length && end < response.length && query[end] !== 0)
    end += (query[end] ?? 0) + 1;
  if (
    end < response.length &&
    query.subarray(headerBytes, end).toString("latin1").toLowerCase() ===
      response.subarray(headerBytes, end).toString("latin1")
  ) {
    query.copy(response, headerBytes, headerBytes, end);
  }
  return response;
}

/** A bare answer with `rcode` for a query we could only partly read. */
function errorResponse(query: Buffer, rcode: number): Buffer {
  const response = Buffer.alloc(headerBytes);
  query.copy(response, 0, 0, 2);
  const opcode = (query[2] ?? 0) & 0x78;
  response[2] = 0x80 | opcode | ((query[2] ?? 0) & flagRd);
  response[3] = rcode & 0x0f;
  return response;
}
