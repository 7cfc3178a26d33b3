import { createSocket, type RemoteInfo } from "node:dgram";
import { connect, type Socket } from "node:net";
import { Packet } from "dns2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AgentCluster, eventually, sleep } from "./agents.js";

/**
 * Robustness of the DNS interface against hostile input: random and mutated packets over
 * UDP and TCP to all three agents of a real cluster. A response, when there is one, must be
 * a well-formed DNS response (QR set, the query's id, FORMERR / NOTIMP / REFUSED / NXDOMAIN / BADVERS /
 * NOERROR); dropping a packet is allowed; no agent may crash or stop answering good queries.
 *
 * Everything random comes from one seeded PRNG: rerun a failure with DNS_FUZZ_SEED=<seed>.
 */

const ids = ["n1", "n2", "n3"];
const udpFuzzPackets = 12_000;
const tcpFuzzPackets = 600;
const goodQueryEvery = 500;
/** Packets in flight at once over UDP (spread over the three agents). */
const udpBatch = 100;
const tcpBatch = 25;
/** How long a batch waits for the answers it expects; missing ones count as dropped. */
const udpBatchWaitMs = 300;
const tcpBatchWaitMs = 2000;
const goodQueryTimeoutMs = 1000;
const goodQueryTries = 3;

const seed = Number(process.env.DNS_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 32));
const reproduce = `seed ${seed} (rerun with DNS_FUZZ_SEED=${seed})`;

/** A long TTL: no instance may turn critical (and leave DNS) while the test runs. */
const registered: [string, { address: string; port: number; tags: string[]; ttl: string }][] = [
  ["w1", { address: "10.0.0.1", port: 8081, tags: ["blue", "v1"], ttl: "1h" }],
  ["w2", { address: "10.0.0.2", port: 8082, tags: ["v2"], ttl: "1h" }],
  ["w3", { address: "10.0.0.3", port: 8083, tags: ["blue"], ttl: "1h" }],
  ["w6", { address: "fd00::6", port: 8086, tags: ["v1"], ttl: "1h" }],
];
const webAddresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

// ---- a tiny seeded PRNG ----------------------------------------------------------------

/** mulberry32: a 32-bit state, good enough to drive a fuzzer reproducibly. */
function mulberry32(start: number): () => number {
  let state = start >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  private readonly next: () => number;
  constructor(start: number) {
    this.next = mulberry32(start);
  }
  /** 0 <= n < bound. */
  int(bound: number): number {
    return Math.floor(this.next() * bound);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  bytes(length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) out[i] = this.int(256);
    return out;
  }
}

// ---- packet building ---------------------------------------------------------------------

const T = { A: 1, NS: 2, CNAME: 5, SOA: 6, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41 } as const;
const classIn = 1;

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value & 0xffff, 0);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0, 0);
  return out;
}

/** Header with the given flags word and section counts (id patched in at send time). */
function header(flags: number, qd: number, an = 0, ns = 0, ar = 0): Buffer {
  return Buffer.concat([u16(0), u16(flags), u16(qd), u16(an), u16(ns), u16(ar)]);
}

/** Raw labels, each length-prefixed, then the root label. */
function labels(parts: readonly (string | Buffer)[]): Buffer {
  const out: Buffer[] = [];
  for (const part of parts) {
    const bytes = typeof part === "string" ? Buffer.from(part, "latin1") : part;
    out.push(Buffer.from([bytes.length & 0xff]), bytes);
  }
  out.push(Buffer.from([0]));
  return Buffer.concat(out);
}

function wireName(name: string): Buffer {
  return labels(name.split(".").filter((part) => part.length > 0));
}

function questionBytes(name: Buffer, type: number, cls = classIn): Buffer {
  return Buffer.concat([name, u16(type), u16(cls)]);
}

function record(name: Buffer, type: number, cls: number, ttl: number, rdata: Buffer): Buffer {
  return Buffer.concat([name, u16(type), u16(cls), u32(ttl), u16(rdata.length), rdata]);
}

/** An OPT pseudo-record: `cls` is the UDP payload size, `ttl` ext-rcode/version/flags. */
function optRecord(
  udpSize: number,
  rdata: Buffer = Buffer.alloc(0),
  ttl = 0,
  name: Buffer = Buffer.from([0]),
): Buffer {
  return record(name, T.OPT, udpSize, ttl, rdata);
}

const names = [
  "web.service.muster",
  "_web._tcp.service.muster",
  "blue.web.service.muster",
  "_web._blue.service.muster",
  "v9.web.service.muster",
  "w1.web.instance.muster",
  "w6.web.instance.muster",
  "muster",
  "nope.service.muster",
  "service.muster",
  "a.b.c.web.service.muster",
  "example.com",
];
const qtypes = [T.A, T.A, T.AAAA, T.SRV, T.SRV, 255, T.SOA, T.TXT, T.MX, T.CNAME, T.NS, 0, T.OPT];

function randomCase(rng: Rng, name: string): string {
  if (!rng.chance(0.3)) return name;
  return [...name].map((c) => (rng.chance(0.5) ? c.toUpperCase() : c)).join("");
}

/** A well-formed query to mutate: a name we serve (or not), a type, maybe EDNS. */
function validQuery(rng: Rng): Buffer {
  const name = randomCase(rng, rng.pick(names));
  const type = rng.pick(qtypes);
  const edns = rng.chance(0.3);
  const flags = rng.chance(0.7) ? 0x0100 : 0;
  return Buffer.concat([
    header(flags, 1, 0, 0, edns ? 1 : 0),
    questionBytes(wireName(name), type),
    ...(edns ? [optRecord(rng.pick([512, 1232, 4096]))] : []),
  ]);
}

// ---- generators ------------------------------------------------------------------------

interface FuzzPacket {
  readonly kind: string;
  readonly bytes: Buffer;
}

const interestingBytes = [0x00, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xc1, 0xfe, 0xff];
const interestingCounts = [0, 1, 2, 3, 255, 256, 0x7fff, 0xffff];

function mutate(rng: Rng, base: Buffer): FuzzPacket {
  const bytes = Buffer.from(base);
  switch (rng.int(6)) {
    case 0: {
      const flips = 1 + rng.int(8);
      for (let i = 0; i < flips && bytes.length > 0; i++) {
        const bit = rng.int(bytes.length * 8);
        bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) ^ (0x80 >> (bit & 7));
      }
      return { kind: "mutated: bit flips", bytes };
    }
    case 1: {
      const changes = 1 + rng.int(4);
      for (let i = 0; i < changes && bytes.length > 0; i++) {
        bytes[rng.int(bytes.length)] = rng.chance(0.5) ? rng.pick(interestingBytes) : rng.int(256);
      }
      return { kind: "mutated: byte changes", bytes };
    }
    case 2:
      return { kind: "mutated: truncated", bytes: bytes.subarray(0, rng.int(bytes.length)) };
    case 3:
      return {
        kind: "mutated: extended with junk",
        bytes: Buffer.concat([bytes, rng.bytes(1 + rng.int(300))]),
      };
    case 4: {
      const at = rng.int(bytes.length + 1);
      return {
        kind: "mutated: junk inserted",
        bytes: Buffer.concat([
          bytes.subarray(0, at),
          rng.bytes(1 + rng.int(16)),
          bytes.subarray(at),
        ]),
      };
    }
    default: {
      const at = rng.int(bytes.length + 1);
      const cut = 1 + rng.int(8);
      return {
        kind: "mutated: bytes deleted",
        bytes: Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + cut)]),
      };
    }
  }
}

/** A compression pointer to `offset`. */
function pointer(offset: number): Buffer {
  return Buffer.from([0xc0 | ((offset >> 8) & 0x3f), offset & 0xff]);
}

function pointerPacket(rng: Rng): FuzzPacket {
  const qtype = rng.pick([T.A, T.SRV]);
  const tail = Buffer.concat([u16(qtype), u16(classIn)]);
  switch (rng.int(9)) {
    case 0: // the question name is a pointer to itself
      return {
        kind: "pointer: to itself",
        bytes: Buffer.concat([header(0, 1), pointer(12), tail]),
      };
    case 1: // two pointers pointing at each other
      return {
        kind: "pointer: two pointing at each other",
        bytes: Buffer.concat([header(0, 1), pointer(14), pointer(12), tail]),
      };
    case 2: // a label, then a pointer back to that label: an endless name
      return {
        kind: "pointer: loop through a label",
        bytes: Buffer.concat([
          header(0, 1),
          Buffer.from([3]),
          Buffer.from("web"),
          pointer(12),
          tail,
        ]),
      };
    case 3: {
      // beyond the end of the packet
      const body = Buffer.concat([header(0, 1), Buffer.from([3]), Buffer.from("web")]);
      const target = body.length + 2 + 4 + rng.int(0x4000 - body.length - 6);
      return {
        kind: "pointer: beyond the end",
        bytes: Buffer.concat([body, pointer(target), tail]),
      };
    }
    case 4: // into the header
      return {
        kind: "pointer: into the header",
        bytes: Buffer.concat([header(0, 1), pointer(rng.int(12)), tail]),
      };
    case 5: // a pointer cut in half at the end of the packet
      return {
        kind: "pointer: truncated",
        bytes: Buffer.concat([
          header(0, 1),
          Buffer.from([3]),
          Buffer.from("web"),
          Buffer.from([0xc0]),
        ]),
      };
    case 6: {
      // a valid question, then an answer or additional record whose name loops
      const question = questionBytes(wireName("web.service.muster"), qtype);
      const at = 12 + question.length;
      const self = record(pointer(at), T.A, classIn, 0, Buffer.from([10, 0, 0, 1]));
      const inAnswer = rng.chance(0.5);
      return {
        kind: "pointer: loop in a record name",
        bytes: Buffer.concat([header(0, 1, inAnswer ? 1 : 0, 0, inAnswer ? 0 : 1), question, self]),
      };
    }
    case 7: {
      // a chain of pointers, each to the one before, ending at a real name: legal
      const target = wireName(randomCase(rng, rng.pick(names)));
      const parts: Buffer[] = [header(0, 1), pointer(0), tail, target];
      let previous = 12 + 2 + 4;
      let offset = previous + target.length;
      const hops = 1 + rng.int(100);
      for (let hop = 0; hop < hops; hop++) {
        parts.push(pointer(previous));
        previous = offset;
        offset += 2;
      }
      parts[1] = pointer(previous);
      return { kind: "pointer: long chain to a real name", bytes: Buffer.concat(parts) };
    }
    default: // reserved label types 01 and 10
      return {
        kind: "pointer: reserved label type",
        bytes: Buffer.concat([
          header(0, 1),
          Buffer.from([rng.pick([0x40, 0x41, 0x7f, 0x80, 0xbf]), 0x0c]),
          rng.bytes(rng.int(8)),
          tail,
        ]),
      };
  }
}

function namePacket(rng: Rng): FuzzPacket {
  const tail = Buffer.concat([u16(rng.pick([T.A, T.SRV])), u16(classIn)]);
  const packet = (kind: string, name: Buffer) => ({
    kind,
    bytes: Buffer.concat([header(0x0100, 1), name, tail]),
  });
  switch (rng.int(8)) {
    case 0: {
      // label length byte 64..191 (reserved and too long); the bytes may or may not be there
      const length = 64 + rng.int(128);
      const present = rng.chance(0.5) ? length : rng.int(length);
      return packet(
        "name: label longer than 63",
        Buffer.concat([Buffer.from([length]), Buffer.alloc(present, 0x61), wireName("muster")]),
      );
    }
    case 1: {
      // total length around the 255-octet limit, under our domain
      const target = 250 + rng.int(16);
      const parts: string[] = [];
      let octets = 1 + wireName("web.service.muster").length - 1;
      while (octets < target) {
        const length = Math.min(63, Math.max(1, target - octets - 1));
        parts.push("a".repeat(length));
        octets += length + 1;
      }
      return packet(`name: ${octets} octets`, labels([...parts, "web", "service", "muster"]));
    }
    case 2: // far too long: many maximal labels
      return packet(
        "name: longer than 255",
        labels(Array.from({ length: 5 + rng.int(4) }, () => "x".repeat(63))),
      );
    case 3: {
      // a label length that runs past the end of the packet
      const bytes = Buffer.concat([
        header(0, 1),
        Buffer.from([20 + rng.int(40)]),
        Buffer.from("web"),
      ]);
      return { kind: "name: label beyond the end", bytes };
    }
    case 4: // dots, NULs and high bytes inside labels
      return packet(
        "name: odd bytes in labels",
        labels([
          rng.pick([
            "web.service.muster",
            "web\0",
            Buffer.from([0xc0, 0xe9, 0xff]),
            "w.e.b",
            "WEB",
            "web ",
            rng.bytes(1 + rng.int(20)),
          ]),
          ...rng.pick([["service", "muster"], ["muster"], []]),
        ]),
      );
    case 5: // many one-letter labels
      return packet(
        "name: many short labels",
        labels([...Array.from({ length: 1 + rng.int(130) }, () => "a"), "muster"]),
      );
    case 6: // the root name, or an empty name in front of the domain
      return packet(
        "name: root or empty labels",
        rng.chance(0.5) ? Buffer.from([0]) : Buffer.from([0, 6, ...Buffer.from("muster"), 0]),
      );
    default: // the question has no name at all: the packet ends after the header
      return { kind: "name: missing", bytes: header(0, 1) };
  }
}

function optPacket(rng: Rng): FuzzPacket {
  const question = questionBytes(wireName("web.service.muster"), rng.pick([T.A, T.SRV, T.AAAA]));
  const plain = (kind: string, ...additionals: Buffer[]) => ({
    kind,
    bytes: Buffer.concat([header(0x0100, 1, 0, 0, additionals.length), question, ...additionals]),
  });
  switch (rng.int(10)) {
    case 0:
      return plain(
        "opt: odd payload size",
        optRecord(rng.pick([0, 1, 12, 511, 512, 513, 1232, 4096, 4097, 65535])),
      );
    case 1: {
      // RDLENGTH larger than what follows
      const opt = optRecord(4096, rng.bytes(rng.int(8)));
      opt.writeUInt16BE(opt.readUInt16BE(9) + 1 + rng.int(500), 9);
      return plain("opt: RDLENGTH past the end", opt);
    }
    case 2: // an option header cut short
      return plain("opt: truncated option header", optRecord(4096, rng.bytes(1 + rng.int(3))));
    case 3: {
      // an option whose length runs past the RDATA
      const data = rng.bytes(rng.int(6));
      const option = Buffer.concat([
        u16(rng.pick([8, 10, 12, 15, 0xfffe])),
        u16(data.length + 1 + rng.int(40)),
        data,
      ]);
      return plain("opt: option longer than its RDATA", optRecord(4096, option));
    }
    case 4: {
      // client subnet with a bad family or prefix
      const ecs = Buffer.concat([
        u16(rng.pick([0, 1, 2, 3, 0xffff])),
        Buffer.from([rng.int(256), rng.int(256)]),
        rng.bytes(rng.int(18)),
      ]);
      return plain(
        "opt: malformed client subnet",
        optRecord(4096, Buffer.concat([u16(8), u16(ecs.length), ecs])),
      );
    }
    case 5: // an OPT owned by a name other than the root
      return plain("opt: non-root owner", optRecord(4096, Buffer.alloc(0), 0, wireName("web")));
    case 6:
      return plain("opt: two OPT records", optRecord(4096), optRecord(rng.pick([0, 512, 65535])));
    case 7: // EDNS version > 0, extended rcode bits, DO bit
      return plain(
        "opt: version / ext-rcode / flags",
        optRecord(
          4096,
          Buffer.alloc(0),
          (rng.int(256) << 24) | (rng.int(256) << 16) | rng.int(0x10000),
        ),
      );
    case 8: {
      // OPT in the answer or authority section
      const inAnswer = rng.chance(0.5);
      return {
        kind: "opt: in the wrong section",
        bytes: Buffer.concat([
          header(0, 1, inAnswer ? 1 : 0, inAnswer ? 0 : 1, 0),
          question,
          optRecord(4096),
        ]),
      };
    }
    default: // arcount promises more additional records than there are
      return {
        kind: "opt: arcount beyond the records",
        bytes: Buffer.concat([header(0, 1, 0, 0, 2 + rng.int(100)), question, optRecord(4096)]),
      };
  }
}

function countsPacket(rng: Rng): FuzzPacket {
  const name = randomCase(rng, rng.pick(names));
  const question = questionBytes(wireName(name), rng.pick(qtypes));
  const qd = rng.pick(interestingCounts);
  const extra =
    qd === 2 && rng.chance(0.5) ? [questionBytes(wireName("web.service.muster"), T.A)] : [];
  const sections = [
    qd,
    rng.pick(interestingCounts),
    rng.pick(interestingCounts),
    rng.pick(interestingCounts),
  ];
  // Most of the time keep three of the four counts sane, so the odd one is what gets tested.
  const keep = rng.int(5);
  const counts = sections.map((count, index) =>
    keep === index || keep === 4 ? count : index === 0 ? 1 : 0,
  );
  return {
    kind: `counts: qd ${counts[0]} an ${counts[1]} ns ${counts[2]} ar ${counts[3]}`.replace(
      /\d{3,}/g,
      "big",
    ),
    bytes: Buffer.concat([
      header(0x0100, counts[0] ?? 1, counts[1], counts[2], counts[3]),
      question,
      ...extra,
      ...(rng.chance(0.3) ? [rng.bytes(rng.int(60))] : []),
    ]),
  };
}

function headerPacket(rng: Rng): FuzzPacket {
  const bytes = validQuery(rng);
  switch (rng.int(4)) {
    case 0:
      bytes[2] = (bytes[2] ?? 0) | 0x80;
      return { kind: "header: QR bit set", bytes };
    case 1:
      bytes[2] = ((bytes[2] ?? 0) & 0x87) | ((1 + rng.int(15)) << 3);
      return { kind: "header: opcode other than QUERY", bytes };
    case 2: {
      // a class other than IN in the question
      const cls = rng.pick([0, 2, 3, 4, 254, 255, rng.int(0x10000)]);
      const name = wireName(randomCase(rng, rng.pick(names)));
      return {
        kind: "header: class other than IN",
        bytes: Buffer.concat([header(0x0100, 1), questionBytes(name, rng.pick(qtypes), cls)]),
      };
    }
    default:
      // AA, TC, RA, Z, AD, CD and RCODE bits that a query should not carry
      bytes[2] = ((bytes[2] ?? 0) & 0x79) | (rng.int(256) & 0x07);
      bytes[3] = rng.int(256);
      return { kind: "header: stray flag bits", bytes };
  }
}

function typePacket(rng: Rng): FuzzPacket {
  const name = wireName(randomCase(rng, rng.pick(names)));
  const type = rng.chance(0.5)
    ? rng.int(0x10000)
    : rng.pick([0, 3, 4, 41, 250, 251, 252, 253, 254, 255, 0xffff]);
  return {
    kind: "type: unusual qtype",
    bytes: Buffer.concat([header(0x0100, 1), questionBytes(name, type)]),
  };
}

function randomPacket(rng: Rng): FuzzPacket {
  if (rng.chance(0.5)) return { kind: "random bytes", bytes: rng.bytes(rng.int(601)) };
  // Random after a plausible header, so the parser gets past it more often.
  const body = rng.bytes(rng.int(589));
  return { kind: "random after a query header", bytes: Buffer.concat([header(0x0100, 1), body]) };
}

function fuzzPacket(rng: Rng): FuzzPacket {
  const roll = rng.int(100);
  if (roll < 15) return randomPacket(rng);
  if (roll < 50) return mutate(rng, validQuery(rng));
  if (roll < 60) return pointerPacket(rng);
  if (roll < 70) return namePacket(rng);
  if (roll < 80) return optPacket(rng);
  if (roll < 87) return countsPacket(rng);
  if (roll < 95) return headerPacket(rng);
  return typePacket(rng);
}

/** Every truncation of a few valid queries: each length from 0 to one short of whole. */
function truncations(rng: Rng): FuzzPacket[] {
  const out: FuzzPacket[] = [];
  for (let base = 0; base < 8; base++) {
    const query = validQuery(rng);
    for (let length = 0; length < query.length; length++) {
      out.push({ kind: "truncated at every length", bytes: query.subarray(0, length) });
    }
  }
  return out;
}

// ---- checking responses ----------------------------------------------------------------

// NOERROR FORMERR NXDOMAIN NOTIMP REFUSED, and BADVERS (16) for an EDNS version other than 0.
const allowedRcodes = new Set([0, 1, 3, 4, 5, 16]);

/** The largest UDP response the query allows: 512, or what its OPT advertised. */
function udpLimit(query: Buffer): number {
  try {
    const parsed = Packet.parse(query);
    const opt = parsed.additionals.find((r) => r.type === T.OPT);
    if (parsed.errors.length === 0 && opt !== undefined) return Math.max(512, opt.class);
  } catch {
    // an unreadable query advertised nothing
  }
  return 512;
}

/** Why `response` is not an acceptable answer to `query`, or null when it is. */
function problem(query: Buffer, response: Buffer, transport: "udp" | "tcp"): string | null {
  let parsed: InstanceType<typeof Packet>;
  try {
    parsed = Packet.parse(response);
  } catch (error) {
    return `unparseable response: ${(error as Error).message}`;
  }
  if (parsed.errors.length > 0) return `malformed response: ${parsed.errors[0]?.message}`;
  if (parsed.header.qr !== 1) return "response without the QR bit";
  if (query.length >= 2 && parsed.header.id !== query.readUInt16BE(0)) {
    return `response id ${parsed.header.id}, query id ${query.readUInt16BE(0)}`;
  }
  if (!allowedRcodes.has(parsed.header.rcode)) return `rcode ${parsed.header.rcode}`;
  if (query.length >= 3 && ((query[2] ?? 0) & 0x80) !== 0) return "answered a response (QR set)";
  if (transport === "udp" && response.length > udpLimit(query)) {
    return `UDP response of ${response.length} bytes, limit ${udpLimit(query)}`;
  }
  return null;
}

/** Whether the server has what it needs to answer: a header, and not a response. */
function deservesAnswer(query: Buffer): boolean {
  return query.length >= 12 && ((query[2] ?? 0) & 0x80) === 0;
}

function goodQuery(id: number): Buffer {
  const packet = new Packet();
  packet.header.id = id;
  packet.header.rd = 1;
  packet.questions.push(new Packet.Question("web.service.muster", Packet.TYPE.A, Packet.CLASS.IN));
  return packet.toBuffer();
}

/** Why `response` is not the right answer to the good query, or null. */
function wrongAnswer(response: Buffer): string | null {
  let parsed: InstanceType<typeof Packet>;
  try {
    parsed = Packet.parse(response);
  } catch (error) {
    return `unparseable: ${(error as Error).message}`;
  }
  if (parsed.header.rcode !== 0) return `rcode ${parsed.header.rcode}`;
  const addresses = parsed.answers
    .filter((r) => r.type === T.A)
    .map((r) => String(r.address))
    .sort();
  return addresses.join(",") === webAddresses.join(",")
    ? null
    : `addresses ${addresses.join(",")}, expected ${webAddresses.join(",")}`;
}

// ---- the test ----------------------------------------------------------------------------

interface Sent {
  readonly kind: string;
  readonly bytes: Buffer;
  readonly node: string;
  readonly transport: "udp" | "tcp";
  answers: number;
}

interface Failure {
  readonly what: string;
  readonly kind: string;
  readonly node: string;
  readonly query: string;
  readonly response: string;
}

let cluster: AgentCluster;

beforeAll(async () => {
  cluster = await AgentCluster.create();
  await cluster.bootstrap(ids);
  const leader = await cluster.leader();
  for (const [id, body] of registered) {
    const answer = await cluster.request(leader, "PUT", `/v1/services/web/instances/${id}`, body);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  }
  await cluster.converged();
}, 60_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe("DNS fuzzing", () => {
  it("answers hostile packets with well-formed errors, never crashes, keeps answering", async () => {
    console.log(`dns-fuzz: ${reproduce}`);
    const rng = new Rng(seed);
    const port = (node: string) => Number(cluster.get(node).dns.split(":")[1]);
    const failures: Failure[] = [];
    const fail = (what: string, sent: Pick<Sent, "kind" | "bytes" | "node">, response?: Buffer) =>
      failures.push({
        what,
        kind: sent.kind,
        node: sent.node,
        query: sent.bytes.toString("hex"),
        response: response?.toString("hex") ?? "",
      });
    const exited = new Map<string, string>();
    for (const id of ids) {
      cluster.get(id).process?.once("exit", (code, signal) => {
        exited.set(id, `${id} exited (code ${code}, signal ${signal})`);
      });
    }
    /** Fails the test, with the seed and the first failures, if anything went wrong. */
    const verdict = () => {
      const listed = failures
        .slice(0, 10)
        .map(
          (f) => `${f.what} [${f.kind}] to ${f.node}\n  query ${f.query}\n  response ${f.response}`,
        )
        .join("\n");
      expect(
        { exited: [...exited.values()], failures: failures.slice(0, 10) },
        `${exited.size} agents exited, ${failures.length} failures, ${reproduce}:\n${listed}`,
      ).toEqual({ exited: [], failures: [] });
    };
    const stats = {
      udp: 0,
      tcp: 0,
      answered: 0,
      dropped: 0,
      good: 0,
      goodRetries: 0,
      goodSlowestMs: 0,
    };
    const rcodeCounts = new Map<number, number>();

    // Every packet of two bytes or more carries a unique id (a sequence number), so that a
    // response, however late, can be matched to its query.
    let nextId = 1;
    const sentById = new Map<number, Sent>();
    const goodWaiters = new Map<number, (response: Buffer) => void>();
    let batchWaiting = new Set<number>();
    let batchDone: () => void = () => undefined;

    const onResponse = (response: Buffer, from: string, transport: "udp" | "tcp") => {
      const unknown: Sent = {
        kind: "?",
        bytes: Buffer.alloc(0),
        node: from,
        transport,
        answers: 0,
      };
      if (response.length < 2) {
        fail("response shorter than an id", unknown, response);
        return;
      }
      const id = response.readUInt16BE(0);
      const sent = sentById.get(id);
      if (sent === undefined) {
        fail("response to no query sent", unknown, response);
        return;
      }
      sent.answers++;
      stats.answered++;
      if (sent.answers > 1) fail("more than one response", sent, response);
      if (sent.node !== from) fail(`response from ${from}`, sent, response);
      const why = problem(sent.bytes, response, transport);
      if (why !== null) fail(why, sent, response);
      else {
        const rcode = Packet.parse(response).header.rcode;
        rcodeCounts.set(rcode, (rcodeCounts.get(rcode) ?? 0) + 1);
      }
      goodWaiters.get(id)?.(response);
      if (batchWaiting.delete(id) && batchWaiting.size === 0) batchDone();
    };

    const register = (fuzz: FuzzPacket, node: string, transport: "udp" | "tcp"): Sent => {
      const sent: Sent = {
        kind: fuzz.kind,
        bytes: Buffer.from(fuzz.bytes),
        node,
        transport,
        answers: 0,
      };
      const id = nextId++;
      if (id > 0xffff) throw new Error("more packets than ids");
      if (sent.bytes.length >= 2) {
        sent.bytes.writeUInt16BE(id, 0);
        sentById.set(id, sent);
      }
      return sent;
    };

    /** Wait until the batch's expected answers are in, or `waitMs`. */
    const collect = async (expected: Set<number>, waitMs: number) => {
      batchWaiting = expected;
      const deadline = new Promise<void>((resolve) => setTimeout(resolve, waitMs));
      const complete = new Promise<void>((resolve) => {
        batchDone = resolve;
        if (expected.size === 0) resolve();
      });
      await Promise.race([deadline, complete]);
      stats.dropped += batchWaiting.size;
      batchWaiting = new Set();
    };

    const udp = createSocket("udp4");
    const portToNode = new Map(ids.map((id) => [port(id), id]));
    udp.on("message", (message: Buffer, peer: RemoteInfo) =>
      onResponse(message, portToNode.get(peer.port) ?? `${peer.address}:${peer.port}`, "udp"),
    );
    await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", () => resolve()));
    const sendUdp = (bytes: Buffer, node: string) =>
      new Promise<void>((resolve) =>
        udp.send(bytes, port(node), "127.0.0.1", (error) => {
          if (error)
            failures.push({
              what: `send: ${error.message}`,
              kind: "",
              node,
              query: "",
              response: "",
            });
          resolve();
        }),
      );

    /** A good query over UDP must be answered correctly (a retry allowed for loss). */
    const checkGood = async (node: string) => {
      const started = performance.now();
      for (let attempt = 1; attempt <= goodQueryTries; attempt++) {
        const sent = register({ kind: "good query", bytes: goodQuery(0) }, node, "udp");
        const id = sent.bytes.readUInt16BE(0);
        const answered = new Promise<Buffer | null>((resolve) => {
          goodWaiters.set(id, resolve);
          setTimeout(() => resolve(null), goodQueryTimeoutMs);
        });
        await sendUdp(sent.bytes, node);
        const response = await answered;
        goodWaiters.delete(id);
        if (response !== null) {
          const wrong = wrongAnswer(response);
          if (wrong !== null) fail(`good query: ${wrong}`, sent, response);
          stats.good++;
          stats.goodSlowestMs = Math.max(stats.goodSlowestMs, performance.now() - started);
          return;
        }
        stats.goodRetries++;
      }
      fail(`good query unanswered after ${goodQueryTries} tries`, {
        kind: "good query",
        bytes: goodQuery(0),
        node,
      });
    };

    const stopEarly = () => exited.size > 0 || failures.length > 50;

    try {
      // ---- UDP ----
      const queue = truncations(rng);
      while (queue.length < udpFuzzPackets) queue.push(fuzzPacket(rng));
      for (let start = 0; start < queue.length && !stopEarly(); start += udpBatch) {
        if (
          Math.floor(start / goodQueryEvery) !== Math.floor((start - udpBatch) / goodQueryEvery)
        ) {
          await checkGood(ids[(start / goodQueryEvery) % ids.length] ?? "n1");
        }
        const expected = new Set<number>();
        const batch = queue.slice(start, start + udpBatch).map((fuzz, offset) => {
          const node = ids[(start + offset) % ids.length] ?? "n1";
          const sent = register(fuzz, node, "udp");
          if (deservesAnswer(sent.bytes)) expected.add(sent.bytes.readUInt16BE(0));
          return sent;
        });
        await Promise.all(batch.map((sent) => sendUdp(sent.bytes, sent.node)));
        stats.udp += batch.length;
        await collect(expected, udpBatchWaitMs);
        if (exited.size > 0) {
          for (const sent of batch) {
            // The culprit is among the packets to that agent that got no answer.
            if (exited.has(sent.node) && sent.answers === 0 && deservesAnswer(sent.bytes)) {
              fail("unanswered just before the agent exited", sent);
            }
          }
        }
      }

      // ---- TCP: the same kinds of packets, two-byte length framing ----
      const connections = new Map<string, Socket>();
      const tcpConnection = (node: string): Socket => {
        const existing = connections.get(node);
        if (existing !== undefined && !existing.destroyed) return existing;
        const socket = connect(port(node), "127.0.0.1");
        let buffered = Buffer.alloc(0);
        socket.on("data", (chunk: Buffer) => {
          buffered = Buffer.concat([buffered, chunk]);
          while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
            const frame = buffered.subarray(2, 2 + buffered.readUInt16BE(0));
            buffered = buffered.subarray(2 + frame.length);
            onResponse(Buffer.from(frame), node, "tcp");
          }
        });
        socket.on("error", () => socket.destroy());
        connections.set(node, socket);
        return socket;
      };
      const frame = (bytes: Buffer) => Buffer.concat([u16(bytes.length), bytes]);
      for (let start = 0; start < tcpFuzzPackets && !stopEarly(); start += tcpBatch) {
        const expected = new Set<number>();
        for (const node of ids) {
          const batch = Array.from({ length: Math.ceil(tcpBatch / ids.length) }, () =>
            register(fuzzPacket(rng), node, "tcp"),
          );
          for (const sent of batch) {
            if (deservesAnswer(sent.bytes)) expected.add(sent.bytes.readUInt16BE(0));
          }
          const stream = Buffer.concat(batch.map((sent) => frame(sent.bytes)));
          const socket = tcpConnection(node);
          if (rng.chance(0.2)) {
            // frames split at random places, across several writes
            for (let at = 0; at < stream.length; ) {
              const size = 1 + rng.int(64);
              socket.write(stream.subarray(at, at + size));
              at += size;
              if (rng.chance(0.2)) await sleep(1);
            }
          } else {
            socket.write(stream);
          }
          stats.tcp += batch.length;
        }
        await collect(expected, tcpBatchWaitMs);
      }
      // Connections that misbehave at the framing level: the server must survive them.
      for (const node of ids) {
        const partial = connect(port(node), "127.0.0.1");
        partial.on("error", () => undefined);
        partial.write(Buffer.concat([u16(1000), rng.bytes(10)]));
        const huge = connect(port(node), "127.0.0.1");
        huge.on("error", () => undefined);
        huge.write(Buffer.concat([u16(0xffff), rng.bytes(0xffff)]));
        const empty = connect(port(node), "127.0.0.1");
        empty.on("error", () => undefined);
        empty.write(u16(0));
        await sleep(100);
        for (const socket of [partial, huge, empty]) socket.destroy();
      }
      for (const socket of connections.values()) socket.destroy();
      verdict();

      // ---- afterwards: every agent alive, healthy and answering ----
      for (const id of ids) {
        const health = await cluster.request(id, "GET", "/healthz");
        expect(health, `${id} /healthz, ${reproduce}`).toMatchObject({
          status: 200,
          body: { status: "ok" },
        });
        await checkGood(id);
        const tcpAnswer = await eventually(`${id} to answer over TCP`, async () => {
          const socket = tcpConnection(id);
          const sent = register({ kind: "good query over TCP", bytes: goodQuery(0) }, id, "tcp");
          const answered = new Promise<Buffer | null>((resolve) => {
            goodWaiters.set(sent.bytes.readUInt16BE(0), resolve);
            setTimeout(() => resolve(null), goodQueryTimeoutMs);
          });
          socket.write(frame(sent.bytes));
          return (await answered) ?? undefined;
        });
        expect(
          wrongAnswer(tcpAnswer),
          `${id} over TCP, response ${tcpAnswer.toString("hex")}, ${reproduce}`,
        ).toBeNull();
        tcpConnection(id).destroy();
      }
    } finally {
      udp.close();
    }

    const neverAnswered = [...sentById.values()].filter(
      (sent) => deservesAnswer(sent.bytes) && sent.answers === 0,
    ).length;
    const rcodes = [...rcodeCounts].map(([rcode, count]) => `${rcode}:${count}`).join(" ");
    console.log(
      `dns-fuzz: ${stats.udp} UDP + ${stats.tcp} TCP packets, ${stats.answered} answers ` +
        `(rcodes ${rcodes}), ${stats.dropped} not answered within the batch wait (${neverAnswered} never); ` +
        `${stats.good} good queries, ${stats.goodRetries} retries, slowest ${Math.round(stats.goodSlowestMs)} ms`,
    );
    verdict();
    expect(stats.udp).toBeGreaterThanOrEqual(10_000);
  }, 90_000);
});
