import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { createServer, isIPv6, type Server, type Socket } from "node:net";
import type { Instance } from "../server/fsm/registry.js";
import { type AnswerOptions, answer, type RegistryView, rcodes, weightedOrder } from "./answers.js";
import { parseName } from "./names.js";
import { parseQuery, type Query } from "./query.js";
import { encodeResponse } from "./wire.js";

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
const classIn = 1;
const classAny = 255;
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
  respond(message: Buffer, transport: "udp" | "tcp"): Buffer | null {
    const parsed = parseQuery(message);
    if (parsed.kind === "drop") return null;
    if (parsed.kind === "error") return errorResponse(message, parsed.rcode, null);
    const query = parsed.query;
    if (query.ednsPayload !== null && query.ednsVersion !== 0) {
      return errorResponse(message, rcodes.badVers, query);
    }
    if (query.qclass !== classIn && query.qclass !== classAny) {
      return errorResponse(message, rcodes.refused, query);
    }
    if (query.name === null) return errorResponse(message, rcodes.refused, query);
    if (this.tooStale()) return errorResponse(message, rcodes.servFail, query);
    const limit =
      transport === "tcp"
        ? Number.POSITIVE_INFINITY
        : Math.min(Math.max(query.ednsPayload ?? plainUdpLimit, plainUdpLimit), maxUdpPayload);
    try {
      const cached = this.cachedAnswer(query.name, query.qtype, query.ednsPayload !== null);
      const variant =
        cached.variants[Math.floor(Math.random() * cached.variants.length)] ?? cached.truncated;
      return patch(variant.length > limit ? cached.truncated : variant, message, query);
    } catch {
      // Whatever the registry holds, one answer must never take the node down.
      return errorResponse(message, rcodes.servFail, query);
    }
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
    if (hit !== undefined) {
      // Least recently used goes first: move this one to the end.
      this.cache.delete(key);
      this.cache.set(key, hit);
      return hit;
    }
    const ednsPayload = edns ? maxUdpPayload : null;
    const parsed = parseName(name, this.options.domain);
    const order = (instances: Instance[]) =>
      weightedOrder(instances, (instance) => instance.weight, Math.random);
    const variants: Buffer[] = [];
    let rcode: number = rcodes.noError;
    for (let variant = 0; variant < shuffledVariants; variant++) {
      const built = answer(parsed, name, qtype, this.options.registry, this.options, order);
      rcode = built.rcode;
      variants.push(encodeResponse(built, { qname: name, qtype, ednsPayload, truncated: false }));
      if (built.answers.length < 2) break;
    }
    const truncated = encodeResponse(
      { rcode, answers: [], authorities: [], additionals: [] },
      { qname: name, qtype, ednsPayload, truncated: true },
    );
    const entry = { rcode, variants, truncated };
    if (this.cache.size >= maxCachedAnswers) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
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

/** The cached response with the query's id, RD flag, and its question exactly as asked. */
function patch(cached: Buffer, message: Buffer, query: Query): Buffer {
  const cachedQuestionEnd = questionEnd(cached);
  const response = Buffer.concat([
    cached.subarray(0, headerBytes),
    query.question,
    cached.subarray(cachedQuestionEnd),
  ]);
  response.writeUInt16BE(query.id, 0);
  response[2] = ((response[2] ?? 0) & ~flagRd) | ((message[2] ?? 0) & flagRd);
  // Compression pointers into the question stay valid: the echoed name has the same length.
  return response;
}

/** Where the (uncompressed) question of one of our own responses ends. */
function questionEnd(response: Buffer): number {
  let at = headerBytes;
  while ((response[at] ?? 0) !== 0) at += (response[at] ?? 0) + 1;
  return at + 5;
}

/** An answer with only `rcode`, echoing the question (and EDNS) when the query could be read. */
function errorResponse(message: Buffer, rcode: number, query: Query | null): Buffer {
  const header = Buffer.alloc(headerBytes);
  message.copy(header, 0, 0, 2);
  const opcode = (message[2] ?? 0) & 0x78;
  header[2] = 0x80 | opcode | ((message[2] ?? 0) & flagRd);
  header[3] = rcode & 0x0f;
  if (query === null) return header;
  header.writeUInt16BE(1, 4);
  if (query.ednsPayload === null) return Buffer.concat([header, query.question]);
  header.writeUInt16BE(1, 10);
  // RFC 6891: the upper eight bits of a 12-bit rcode travel in the OPT record's TTL.
  const opt = Buffer.alloc(11);
  opt.writeUInt16BE(41, 1);
  opt.writeUInt16BE(maxUdpPayload, 3);
  opt.writeUInt8((rcode >> 4) & 0xff, 5);
  return Buffer.concat([header, query.question, opt]);
}
