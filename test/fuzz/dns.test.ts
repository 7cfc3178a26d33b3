import { createSocket, type RemoteInfo } from "node:dgram";
import { connect, type Socket } from "node:net";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AgentCluster } from "../integration/agents.js";
import {
  Failures,
  fuzzSeed,
  leaderView,
  liveness,
  nodeIds,
  samples,
  settled,
  startCluster,
} from "./helpers.js";

/**
 * Grammar-based DNS fuzzing with fast-check. A query is generated as a structure (header
 * flags, a question name built from the names muster serves, a type and class, maybe an OPT
 * record with options), encoded, then mutated with structure-aware edits (a bit flip, a
 * truncation, a label length byte, a compression pointer or pointer loop, a section count,
 * an OPT RDLENGTH or owner, a second OPT or question, trailing bytes, an over-long name).
 *
 * Every packet is judged by an oracle written from the RFCs and DESIGN.md: a reference
 * parser decides whether the bytes are a valid query, and a model of the registry decides
 * the answer. Every response is parsed strictly (no trailing bytes, counts that match,
 * compression pointers only backwards, lengths within bounds) and must carry the query's
 * id, opcode and RD bit, echo its question byte for byte, include OPT exactly when the
 * query had one, fit the UDP size asked for, and have the rcode and records the oracle says.
 *
 * Rerun a failure with MUSTER_FUZZ_SEED=<seed>.
 */

const seed = fuzzSeed("dns");
const udpCases = 10_500;
const tcpCases = 1_500;
const udpBatch = 150;
const tcpBatch = 60;
const budgetMs = 35_000;

const T = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  ANY: 255,
};
const R = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, BADVERS: 16 };
const rcodeName = Object.fromEntries(Object.entries(R).map(([name, code]) => [code, name]));
const domain = "muster";
const recordTtl = 5;

// ---- the registry the answers are judged against ---------------------------------------------

interface Fixture {
  readonly service: string;
  readonly id: string;
  readonly address: string;
  readonly port: number;
  readonly tags: readonly string[];
  readonly weight: number;
  readonly status: string;
}

const fixtures: Fixture[] = [
  {
    service: "web",
    id: "w1",
    address: "10.0.0.1",
    port: 8081,
    tags: ["blue", "v1"],
    weight: 10,
    status: "passing",
  },
  {
    service: "web",
    id: "w2",
    address: "10.0.0.2",
    port: 8082,
    tags: ["v2"],
    weight: 20,
    status: "passing",
  },
  {
    service: "web",
    id: "w3",
    address: "10.0.0.3",
    port: 8083,
    tags: ["blue"],
    weight: 30,
    status: "warning",
  },
  {
    service: "web",
    id: "w6",
    address: "fd00::6",
    port: 8086,
    tags: ["v1"],
    weight: 40,
    status: "passing",
  },
  {
    service: "web",
    id: "w7",
    address: "10.0.0.7",
    port: 8087,
    tags: ["old"],
    weight: 50,
    status: "critical",
  },
  {
    service: "host",
    id: "h1",
    address: "db.example.com",
    port: 5432,
    tags: [],
    weight: 100,
    status: "passing",
  },
  {
    service: "sick",
    id: "s1",
    address: "10.0.5.1",
    port: 80,
    tags: ["x"],
    weight: 100,
    status: "critical",
  },
  ...Array.from({ length: 60 }, (_, i) => ({
    service: "big",
    id: `b${i}`,
    address: `10.1.0.${i + 1}`,
    port: 9000 + i,
    tags: i % 2 === 0 ? ["even"] : [],
    weight: 1 + i,
    status: "passing",
  })),
];
const healthy = (f: Fixture) => f.status === "passing" || f.status === "warning";

function ipv6Bytes(address: string): Buffer {
  const [head = "", tail = ""] = address.split("::");
  const groups = (part: string) =>
    part === "" ? [] : part.split(":").map((g) => Number.parseInt(g, 16));
  const left = groups(head);
  const right = groups(tail);
  const all = [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => {
    out.writeUInt16BE(g, i * 2);
  });
  return out;
}

/** A record as the oracle sees it: type and a canonical text of its data. */
type Sig = string;

function addressSigs(f: Fixture, qtype: number, cnameForHost: boolean): Sig[] {
  const v4 = /^\d+\.\d+\.\d+\.\d+$/.test(f.address);
  const v6 = f.address.includes(":");
  if (v4 && (qtype === T.A || qtype === T.ANY)) return [`A ${f.address}`];
  if (v6 && (qtype === T.AAAA || qtype === T.ANY))
    return [`AAAA ${ipv6Bytes(f.address).toString("hex")}`];
  if (!v4 && !v6 && cnameForHost && qtype !== T.SRV) return [`CNAME ${f.address}`];
  return [];
}

interface Resolution {
  readonly rcode: number;
  /** null: the oracle does not know the exact records (still checked for form). */
  readonly answers: Sig[] | null;
  readonly additionals: Sig[] | null;
  /** NXDOMAIN or no data: the SOA in the authority section. */
  readonly soa: boolean;
  /** Another answer is defensible too (documented in place). */
  readonly alsoAllowed?: readonly number[];
}

const labelRe = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** What DESIGN.md says muster answers for a (lower-cased) name and type. */
function resolve(labels: readonly string[], qtype: number): Resolution {
  const nx: Resolution = { rcode: R.NXDOMAIN, answers: [], additionals: [], soa: true };
  const noData: Resolution = { rcode: R.NOERROR, answers: [], additionals: [], soa: true };
  if (labels.length === 0 || labels[labels.length - 1] !== domain)
    return { rcode: R.REFUSED, answers: [], additionals: [], soa: false };
  const own = labels.slice(0, -1);
  if (own.length === 0) {
    if (qtype === T.SOA || qtype === T.ANY)
      return { rcode: R.NOERROR, answers: ["SOA"], additionals: [], soa: false };
    return noData;
  }
  const zone = own[own.length - 1];
  const rest = own.slice(0, -1);
  if (zone === "instance" && rest.length >= 2) {
    const service = rest[rest.length - 1] as string;
    const id = rest.slice(0, -1).join(".");
    if (!labelRe.test(service) || !/^[a-z0-9._-]{1,128}$/.test(id)) return nx;
    const found = fixtures.find((f) => f.service === service && f.id.toLowerCase() === id);
    if (found === undefined) return nx;
    const answers = addressSigs(found, qtype, true);
    const result =
      answers.length === 0 ? noData : { rcode: R.NOERROR, answers, additionals: [], soa: false };
    // DESIGN: DNS serves passing and warning instances only; the instance name of a critical
    // instance may be answered or refused (NXDOMAIN/no data): either is accepted.
    return healthy(found)
      ? result
      : { ...result, answers: null, alsoAllowed: [R.NXDOMAIN, R.NOERROR] };
  }
  if (zone !== "service") return nx;
  let service: string;
  let tag: string | null = null;
  const [first, second] = rest;
  if (rest.length === 1 && first !== undefined && labelRe.test(first)) service = first;
  else if (rest.length === 2 && first !== undefined && second !== undefined) {
    if (first.startsWith("_") && second.startsWith("_")) {
      service = first.slice(1);
      tag = second.slice(1) === "tcp" ? null : second.slice(1);
      if (!labelRe.test(service) || (tag !== null && !labelRe.test(tag))) return nx;
    } else if (labelRe.test(first) && labelRe.test(second)) {
      service = second;
      tag = first;
    } else return nx;
  } else return nx;
  const all = fixtures.filter((f) => f.service === service);
  if (all.length === 0) return nx;
  if (tag !== null && !all.some((f) => f.tags.includes(tag as string))) return nx;
  const served = all.filter((f) => healthy(f) && (tag === null || f.tags.includes(tag as string)));
  const answers: Sig[] = [];
  const additionals: Sig[] = [];
  for (const f of served) {
    const target = `${f.id.toLowerCase()}.${f.service}.instance.${domain}`;
    if (qtype === T.SRV || qtype === T.ANY) {
      answers.push(`SRV 1 ${f.weight} ${f.port} ${target}`);
      additionals.push(...addressSigs(f, T.ANY, true));
    }
    if (qtype !== T.SRV) answers.push(...addressSigs(f, qtype, false));
  }
  if (answers.length === 0) return noData;
  return { rcode: R.NOERROR, answers, additionals, soa: false };
}

// ---- the query grammar ------------------------------------------------------------------------

interface OptModel {
  readonly udp: number;
  readonly extRcode: number;
  readonly version: number;
  readonly flags: number;
  readonly options: readonly { code: number; data: Uint8Array; extra: number }[];
}

interface QueryModel {
  readonly flags: number;
  readonly labels: readonly Buffer[];
  readonly qtype: number;
  readonly qclass: number;
  readonly opt: OptModel | null;
}

const known = ["web", "big", "host", "sick"];
const knownTags = ["blue", "v1", "v2", "old", "even", "x", "tcp"];
const knownIds = ["w1", "w2", "w3", "w6", "w7", "h1", "s1", "b0", "b59", "w9"];
const weirdLabel = fc.oneof(
  fc.stringMatching(/^[a-z0-9-]{1,12}$/),
  fc.constantFrom("-web", "web-", "we_b", "WEB", "a".repeat(63), "xn--bcher-kva", "*", "@"),
  fc.uint8Array({ minLength: 1, maxLength: 63 }).map((b) => Buffer.from(b).toString("latin1")),
);
const service = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...known) },
  { weight: 1, arbitrary: weirdLabel },
);
const tag = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...knownTags) },
  { weight: 1, arbitrary: weirdLabel },
);

const nameLabels: fc.Arbitrary<readonly string[]> = fc.oneof(
  { weight: 6, arbitrary: service.map((s) => [s, "service", domain]) },
  { weight: 3, arbitrary: fc.tuple(tag, service).map(([t, s]) => [t, s, "service", domain]) },
  {
    weight: 3,
    arbitrary: fc.tuple(service, tag).map(([s, t]) => [`_${s}`, `_${t}`, "service", domain]),
  },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.oneof(fc.constantFrom(...knownIds), weirdLabel), service)
      .map(([id, s]) => [id, s, "instance", domain]),
  },
  { weight: 1, arbitrary: fc.constant([domain]) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      ["service", domain],
      ["instance", domain],
      ["a", "b", "web", "service", domain],
    ),
  },
  { weight: 1, arbitrary: fc.array(weirdLabel, { maxLength: 4 }).map((l) => [...l, domain]) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      ["example", "com"],
      [],
      ["muster", "com"],
      ["web", "service", "muster", "x"],
    ),
  },
);

const qtypes = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(T.A, T.AAAA, T.SRV, T.ANY) },
  { weight: 2, arbitrary: fc.constantFrom(T.SOA, T.TXT, T.MX, T.CNAME, T.NS, T.PTR) },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.constantFrom(0, T.OPT, 251, 252, 253, 254, 0xffff),
      fc.integer({ min: 0, max: 0xffff }),
    ),
  },
);
const qclasses = fc.oneof(
  { weight: 12, arbitrary: fc.constant(1) },
  { weight: 1, arbitrary: fc.constantFrom(255, 3, 4, 254, 0, 2) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const headerFlags = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom(0x0100, 0x0000) },
  // AA, TC, RA, Z, AD, CD and rcode bits a query should not carry (QR and opcode kept 0).
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0x07ff }) },
  // Another opcode, or the QR bit.
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const optModel: fc.Arbitrary<OptModel> = fc.record({
  udp: fc.oneof(
    fc.constantFrom(0, 1, 511, 512, 513, 1232, 4096, 4097, 65535),
    fc.integer({ min: 0, max: 0xffff }),
  ),
  extRcode: fc.oneof(
    { weight: 6, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) },
  ),
  version: fc.oneof(
    { weight: 8, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 255 }) },
  ),
  flags: fc.oneof(fc.constantFrom(0, 0x8000), fc.integer({ min: 0, max: 0xffff })),
  options: fc.array(
    fc.record({
      code: fc.oneof(fc.constantFrom(3, 8, 10, 11, 12, 15), fc.integer({ min: 0, max: 0xffff })),
      data: fc.uint8Array({ maxLength: 24 }),
      extra: fc.oneof(
        { weight: 8, arbitrary: fc.constant(0) },
        { weight: 1, arbitrary: fc.integer({ min: -3, max: 40 }) },
      ),
    }),
    { maxLength: 3 },
  ),
});
const queryModel: fc.Arbitrary<QueryModel> = fc
  .record({
    flags: headerFlags,
    labels: nameLabels,
    caseMask: fc.integer({ min: 0, max: 0x7fffffff }),
    upper: fc.boolean(),
    qtype: qtypes,
    qclass: qclasses,
    opt: fc.option(optModel, { freq: 3 }),
  })
  .map(({ flags, labels, caseMask, upper, qtype, qclass, opt }) => {
    let bit = 0;
    const cased = labels.map((label) =>
      upper
        ? [...label].map((c) => ((caseMask >> (bit++ % 31)) & 1 ? c.toUpperCase() : c)).join("")
        : label,
    );
    return {
      flags,
      labels: cased.map((l) => Buffer.from(l, "latin1").subarray(0, 63)),
      qtype,
      qclass,
      opt,
    };
  });

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(value & 0xffff, 0);
  return out;
}

interface Encoded {
  readonly bytes: Buffer;
  /** Offsets of each label's length byte, and of the qtype and of the OPT record. */
  readonly labelAt: readonly number[];
  readonly qtypeAt: number;
  readonly optAt: number | null;
}

function encodeOpt(opt: OptModel, owner: Buffer = Buffer.from([0])): Buffer {
  const rdata = Buffer.concat(
    opt.options.map((o) =>
      Buffer.concat([u16(o.code), u16(Math.max(0, o.data.length + o.extra)), Buffer.from(o.data)]),
    ),
  );
  const ttl = Buffer.alloc(4);
  ttl.writeUInt8(opt.extRcode, 0);
  ttl.writeUInt8(opt.version, 1);
  ttl.writeUInt16BE(opt.flags, 2);
  return Buffer.concat([owner, u16(T.OPT), u16(opt.udp), ttl, u16(rdata.length), rdata]);
}

function encode(model: QueryModel): Encoded {
  const parts: Buffer[] = [
    u16(0),
    u16(model.flags),
    u16(1),
    u16(0),
    u16(0),
    u16(model.opt === null ? 0 : 1),
  ];
  let at = 12;
  const labelAt: number[] = [];
  for (const label of model.labels) {
    labelAt.push(at);
    parts.push(Buffer.from([label.length]), label);
    at += 1 + label.length;
  }
  parts.push(Buffer.from([0]), u16(model.qtype), u16(model.qclass));
  const qtypeAt = at + 1;
  at += 5;
  let optAt: number | null = null;
  if (model.opt !== null) {
    optAt = at;
    parts.push(encodeOpt(model.opt));
  }
  return { bytes: Buffer.concat(parts), labelAt, qtypeAt, optAt };
}

// ---- structure-aware mutations ----------------------------------------------------------------

type Mutation =
  | { readonly kind: "flip"; readonly at: number; readonly bit: number }
  | { readonly kind: "truncate"; readonly at: number }
  | { readonly kind: "label length"; readonly label: number; readonly value: number }
  | {
      readonly kind: "pointer";
      readonly label: number;
      readonly target: number;
      readonly how: string;
    }
  | { readonly kind: "count"; readonly section: number; readonly value: number }
  | { readonly kind: "opt rdlength"; readonly delta: number }
  | { readonly kind: "opt owner" }
  | { readonly kind: "second opt"; readonly udp: number }
  | { readonly kind: "second question" }
  | { readonly kind: "trailing"; readonly bytes: Uint8Array }
  | { readonly kind: "long name"; readonly labels: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    kind: fc.constant("flip" as const),
    at: fc.nat(),
    bit: fc.integer({ min: 0, max: 7 }),
  }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant("label length" as const),
    label: fc.nat(),
    value: fc.oneof(
      fc.constantFrom(0, 1, 62, 63, 64, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff),
      fc.integer({ min: 0, max: 255 }),
    ),
  }),
  fc.record({
    kind: fc.constant("pointer" as const),
    label: fc.nat(),
    target: fc.nat(),
    how: fc.constantFrom("self", "header", "forward", "backward", "loop", "past end", "any"),
  }),
  fc.record({
    kind: fc.constant("count" as const),
    section: fc.integer({ min: 0, max: 3 }),
    value: fc.oneof(
      fc.constantFrom(0, 1, 2, 3, 255, 0x7fff, 0xffff),
      fc.integer({ min: 0, max: 0xffff }),
    ),
  }),
  fc.record({
    kind: fc.constant("opt rdlength" as const),
    delta: fc.integer({ min: -20, max: 600 }),
  }),
  fc.constant({ kind: "opt owner" as const }),
  fc.record({
    kind: fc.constant("second opt" as const),
    udp: fc.constantFrom(0, 512, 4096, 65535),
  }),
  fc.constant({ kind: "second question" as const }),
  fc.record({
    kind: fc.constant("trailing" as const),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }),
  }),
  fc.record({ kind: fc.constant("long name" as const), labels: fc.integer({ min: 3, max: 6 }) }),
);

function pointer(offset: number): Buffer {
  return Buffer.from([0xc0 | ((offset >> 8) & 0x3f), offset & 0xff]);
}

function mutate(encoded: Encoded, mutations: readonly Mutation[]): Buffer {
  let bytes = Buffer.from(encoded.bytes);
  const { labelAt, optAt } = encoded;
  for (const m of mutations) {
    switch (m.kind) {
      case "flip":
        if (bytes.length > 0) {
          const at = m.at % bytes.length;
          bytes[at] = (bytes[at] ?? 0) ^ (1 << m.bit);
        }
        break;
      case "truncate":
        bytes = bytes.subarray(0, m.at % (bytes.length + 1));
        break;
      case "label length": {
        const at = labelAt.length === 0 ? 12 : (labelAt[m.label % labelAt.length] as number);
        if (at < bytes.length) bytes[at] = m.value;
        break;
      }
      case "pointer": {
        // Replace the name from one label on by a pointer (the rest of the packet follows).
        const at = labelAt.length === 0 ? 12 : (labelAt[m.label % labelAt.length] as number);
        if (at > bytes.length) break;
        const nameEnd = encoded.qtypeAt - 1;
        const target =
          m.how === "self"
            ? at
            : m.how === "header"
              ? m.target % 12
              : m.how === "forward"
                ? at + 2 + (m.target % 64)
                : m.how === "backward"
                  ? 12 + (m.target % Math.max(1, at - 12))
                  : m.how === "past end"
                    ? bytes.length + (m.target % 0x3000)
                    : m.target % 0x4000;
        if (m.how === "loop") {
          // Two pointers pointing at each other.
          bytes = Buffer.concat([
            bytes.subarray(0, at),
            pointer(at + 2),
            pointer(at),
            bytes.subarray(nameEnd + 1),
          ]);
        } else {
          bytes = Buffer.concat([
            bytes.subarray(0, at),
            pointer(target),
            bytes.subarray(nameEnd + 1),
          ]);
        }
        break;
      }
      case "count":
        if (bytes.length >= 12) bytes.writeUInt16BE(m.value, 4 + 2 * m.section);
        break;
      case "opt rdlength":
        if (optAt !== null && optAt + 11 <= bytes.length) {
          bytes.writeUInt16BE(
            Math.max(0, Math.min(0xffff, bytes.readUInt16BE(optAt + 9) + m.delta)),
            optAt + 9,
          );
        }
        break;
      case "opt owner":
        if (optAt !== null && optAt < bytes.length) {
          bytes = Buffer.concat([
            bytes.subarray(0, optAt),
            Buffer.from([3, 0x77, 0x65, 0x62]),
            bytes.subarray(optAt),
          ]);
        }
        break;
      case "second opt":
        bytes = Buffer.concat([
          bytes,
          encodeOpt({ udp: m.udp, extRcode: 0, version: 0, flags: 0, options: [] }),
        ]);
        if (bytes.length >= 12) bytes.writeUInt16BE((bytes.readUInt16BE(10) + 1) & 0xffff, 10);
        break;
      case "second question":
        if (bytes.length >= 12) {
          const question = encoded.bytes.subarray(12, encoded.qtypeAt + 4);
          const end = optAt ?? encoded.bytes.length;
          bytes = Buffer.concat([
            bytes.subarray(0, Math.min(end, bytes.length)),
            question,
            bytes.subarray(Math.min(end, bytes.length)),
          ]);
          bytes.writeUInt16BE(2, 4);
        }
        break;
      case "trailing":
        bytes = Buffer.concat([bytes, Buffer.from(m.bytes)]);
        break;
      case "long name": {
        const at = labelAt[0] ?? 12;
        const padding = Buffer.concat(
          Array.from({ length: m.labels }, () =>
            Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)]),
          ),
        );
        bytes = Buffer.concat([bytes.subarray(0, at), padding, bytes.subarray(at)]);
        break;
      }
    }
  }
  return bytes;
}

// ---- the oracle: a reference parser of queries -------------------------------------------------

type Expected =
  | { readonly kind: "drop"; readonly why: string }
  | {
      readonly kind: "answer";
      readonly why: string;
      readonly rcodes: readonly number[];
      /** The question as received, when the query is readable up to its end. */
      readonly question: Buffer | null;
      readonly edns: { udp: number } | null;
      readonly labels: string[] | null;
      readonly qtype: number;
      /** The records are judged only when the query is valid and the oracle knows them. */
      readonly resolution: Resolution | null;
    };

const formerr = (
  why: string,
  extra: readonly number[] = [],
): Extract<Expected, { kind: "answer" }> => ({
  kind: "answer",
  why,
  rcodes: [R.FORMERR, ...extra],
  question: null,
  edns: null,
  labels: null,
  qtype: 0,
  resolution: null,
});

function oracle(bytes: Buffer): Expected {
  if (bytes.length < 12) return { kind: "drop", why: "shorter than a header" };
  const flags = bytes.readUInt16BE(2);
  if (flags & 0x8000) return { kind: "drop", why: "a response (QR set)" };
  const opcode = (flags >> 11) & 0x0f;
  if (opcode !== 0) return { ...formerr(`opcode ${opcode}`), rcodes: [R.NOTIMP, R.REFUSED] };
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((at) => bytes.readUInt16BE(at)) as [
    number,
    number,
    number,
    number,
  ];
  if (qd === 0) return formerr("no question");
  if (qd > 1) return formerr(`${qd} questions`, [R.NOTIMP]);
  if (an !== 0 || ns !== 0) return formerr("records in the answer or authority section of a query");
  if (ar > 1) return formerr(`${ar} additional records`);
  if (bytes.length > 4096)
    return formerr("longer than 4096 bytes", [R.NOERROR, R.NXDOMAIN, R.REFUSED]);
  let at = 12;
  const labels: Buffer[] = [];
  let wire = 1;
  for (;;) {
    const length = bytes[at];
    if (length === undefined) return formerr("name runs past the end");
    at++;
    if (length === 0) break;
    if (length >= 0xc0) return formerr("compression pointer in the question");
    if (length > 63) return formerr(`label length byte ${length}`);
    wire += length + 1;
    if (wire > 255) return formerr("name longer than 255 octets");
    if (at + length > bytes.length) return formerr("label runs past the end");
    labels.push(bytes.subarray(at, at + length));
    at += length;
  }
  if (at + 4 > bytes.length) return formerr("question without type or class");
  const qtype = bytes.readUInt16BE(at);
  const qclass = bytes.readUInt16BE(at + 2);
  at += 4;
  const question = Buffer.from(bytes.subarray(12, at));
  let edns: { udp: number } | null = null;
  let version = 0;
  let lenient: string | null = null;
  if (ar === 1) {
    if (at + 11 > bytes.length) return formerr("additional record cut short");
    if (bytes[at] !== 0) return formerr("additional record not owned by the root");
    if (bytes.readUInt16BE(at + 1) !== T.OPT) return formerr("additional record other than OPT");
    const udp = bytes.readUInt16BE(at + 3);
    version = bytes[at + 6] ?? 0;
    const rdLength = bytes.readUInt16BE(at + 9);
    if (at + 11 + rdLength > bytes.length) return formerr("OPT RDLENGTH past the end");
    // Options are not needed to answer: a malformed one may be refused or ignored.
    let option = at + 11;
    const end = at + 11 + rdLength;
    while (option < end) {
      if (option + 4 > end || option + 4 + bytes.readUInt16BE(option + 2) > end) {
        lenient = "malformed EDNS option";
        break;
      }
      option += 4 + bytes.readUInt16BE(option + 2);
    }
    edns = { udp };
    at += 11 + rdLength;
  }
  if (at < bytes.length) lenient = "bytes after the last record";
  const also = lenient === null ? [] : [R.FORMERR];
  const base = { kind: "answer" as const, question, edns, qtype, labels: null, resolution: null };
  if (version !== 0)
    return { ...base, why: `EDNS version ${version}`, rcodes: [R.BADVERS, ...also] };
  if (qclass !== 1 && qclass !== 255)
    return { ...base, why: `class ${qclass}`, rcodes: [R.REFUSED, R.NOTIMP, ...also] };
  const text = labels.map((label) => label.toString("latin1").toLowerCase());
  if (text.some((label) => label.includes(".")))
    return { ...base, why: "a label holding a dot", rcodes: [R.REFUSED, R.NXDOMAIN, ...also] };
  const resolution = resolve(text, qtype);
  const meta = qtype === 0 || qtype === T.OPT || (qtype >= 128 && qtype <= 254);
  return {
    ...base,
    why: `${lenient ?? "valid"} query ${text.join(".")} type ${qtype}`,
    rcodes: meta
      ? [R.NOERROR, R.NXDOMAIN, R.REFUSED, R.NOTIMP, R.FORMERR]
      : [resolution.rcode, ...(resolution.alsoAllowed ?? []), ...also],
    labels: text,
    resolution: meta ? null : resolution,
  };
}

// ---- a strict parser of responses ----------------------------------------------------------------

interface Rr {
  readonly name: string;
  readonly type: number;
  readonly cls: number;
  readonly ttl: number;
  readonly data: string;
}

class Malformed extends Error {}

function readName(message: Buffer, start: number): { name: string; end: number } {
  const labels: string[] = [];
  let at = start;
  let end = -1;
  let wire = 1;
  let lowest = start;
  for (let hops = 0; ; hops++) {
    const length = message[at];
    if (length === undefined) throw new Malformed(`name at ${start} runs past the end`);
    if ((length & 0xc0) === 0xc0) {
      const next = message[at + 1];
      if (next === undefined) throw new Malformed(`pointer at ${at} cut short`);
      const target = ((length & 0x3f) << 8) | next;
      // Only backwards, so that every name ends: a pointer loop is malformed.
      if (target >= lowest)
        throw new Malformed(`pointer at ${at} to ${target} does not point backwards`);
      if (end < 0) end = at + 2;
      lowest = target;
      at = target;
      if (hops > 127) throw new Malformed("too many pointers");
      continue;
    }
    if (length & 0xc0) throw new Malformed(`reserved label type ${length.toString(16)} at ${at}`);
    if (length === 0) {
      if (end < 0) end = at + 1;
      break;
    }
    wire += length + 1;
    if (wire > 255) throw new Malformed(`name at ${start} longer than 255 octets`);
    if (at + 1 + length > message.length) throw new Malformed(`label at ${at} runs past the end`);
    labels.push(message.toString("latin1", at + 1, at + 1 + length));
    at += 1 + length;
  }
  return { name: labels.join(".").toLowerCase(), end };
}

function readRecord(message: Buffer, start: number): { rr: Rr; end: number } {
  const { name, end: nameEnd } = readName(message, start);
  if (nameEnd + 10 > message.length) throw new Malformed(`record at ${start} cut short`);
  const type = message.readUInt16BE(nameEnd);
  const cls = message.readUInt16BE(nameEnd + 2);
  const ttl = message.readUInt32BE(nameEnd + 4);
  const length = message.readUInt16BE(nameEnd + 8);
  const rdata = nameEnd + 10;
  const end = rdata + length;
  if (end > message.length) throw new Malformed(`RDATA at ${rdata} runs past the end`);
  let data: string;
  const exact = (what: string, used: number) => {
    if (used !== end) throw new Malformed(`${what} RDATA of ${length} bytes holds ${used - rdata}`);
  };
  switch (type) {
    case T.A:
      if (length !== 4) throw new Malformed(`A record of ${length} bytes`);
      data = [...message.subarray(rdata, end)].join(".");
      break;
    case T.AAAA:
      if (length !== 16) throw new Malformed(`AAAA record of ${length} bytes`);
      data = message.subarray(rdata, end).toString("hex");
      break;
    case T.CNAME: {
      const target = readName(message, rdata);
      exact("CNAME", target.end);
      data = target.name;
      break;
    }
    case T.SRV: {
      if (length < 7) throw new Malformed(`SRV record of ${length} bytes`);
      const target = readName(message, rdata + 6);
      exact("SRV", target.end);
      data = `${message.readUInt16BE(rdata)} ${message.readUInt16BE(rdata + 2)} ${message.readUInt16BE(rdata + 4)} ${target.name}`;
      break;
    }
    case T.SOA: {
      const mname = readName(message, rdata);
      const rname = readName(message, mname.end);
      exact("SOA", rname.end + 20);
      data = `${mname.name} ${rname.name}`;
      break;
    }
    case T.OPT:
      data = message.subarray(rdata, end).toString("hex");
      break;
    default:
      throw new Malformed(`unexpected record type ${type}`);
  }
  if (type !== T.OPT && ttl > 0x7fffffff) throw new Malformed(`TTL ${ttl} above 2^31 - 1`);
  return { rr: { name, type, cls, ttl, data }, end };
}

interface Response {
  readonly id: number;
  readonly flags: number;
  readonly rcode: number;
  readonly question: Buffer | null;
  readonly answers: Rr[];
  readonly authorities: Rr[];
  readonly additionals: Rr[];
  readonly opt: Rr | null;
  readonly compressedSrvTargets: number;
}

function parseResponse(message: Buffer): Response {
  if (message.length < 12) throw new Malformed(`response of ${message.length} bytes`);
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((at) => message.readUInt16BE(at)) as [
    number,
    number,
    number,
    number,
  ];
  if (qd > 1) throw new Malformed(`${qd} questions in a response`);
  let at = 12;
  let question: Buffer | null = null;
  if (qd === 1) {
    const { end } = readName(message, at);
    if (end + 4 > message.length) throw new Malformed("question cut short");
    question = Buffer.from(message.subarray(12, end + 4));
    at = end + 4;
  }
  const sections: Rr[][] = [[], [], []];
  let compressedSrvTargets = 0;
  [an, ns, ar].forEach((count, section) => {
    for (let i = 0; i < count; i++) {
      const before = at;
      const { rr, end } = readRecord(message, at);
      if (rr.type === T.SRV) {
        // RFC 2782: the target is not to be compressed.
        const { end: nameEnd } = readName(message, before);
        const target = nameEnd + 10 + 6;
        if (((message[target] ?? 0) & 0xc0) === 0xc0 || !message.subarray(target, end).includes(0))
          compressedSrvTargets++;
      }
      sections[section]?.push(rr);
      at = end;
    }
  });
  if (at !== message.length)
    throw new Malformed(`${message.length - at} bytes after the last record`);
  const [answers = [], authorities = [], additionals = []] = sections;
  const opts = [...answers, ...authorities, ...additionals].filter((rr) => rr.type === T.OPT);
  if (opts.length > 1) throw new Malformed("more than one OPT record");
  const opt = opts[0] ?? null;
  if (opt !== null && !additionals.includes(opt))
    throw new Malformed("OPT outside the additional section");
  if (opt !== null && opt.name !== "") throw new Malformed("OPT not owned by the root");
  const flags = message.readUInt16BE(2);
  const rcode = (flags & 0x0f) | (opt === null ? 0 : ((opt.ttl >>> 24) & 0xff) << 4);
  return {
    id: message.readUInt16BE(0),
    flags,
    rcode,
    question,
    answers,
    authorities,
    additionals: additionals.filter((rr) => rr.type !== T.OPT),
    opt,
    compressedSrvTargets,
  };
}

const sigOf = (rr: Rr): Sig =>
  rr.type === T.A
    ? `A ${rr.data}`
    : rr.type === T.AAAA
      ? `AAAA ${rr.data}`
      : rr.type === T.CNAME
        ? `CNAME ${rr.data}`
        : rr.type === T.SRV
          ? `SRV ${rr.data}`
          : rr.type === T.SOA
            ? "SOA"
            : `TYPE${rr.type}`;

const sameSet = (a: readonly Sig[], b: readonly Sig[]) =>
  a.length === b.length && [...a].sort().join("|") === [...b].sort().join("|");

/** Why `response` is not the answer the oracle expects to `query`, or null. */
function judge(
  query: Buffer,
  expected: Expected,
  response: Buffer,
  transport: "udp" | "tcp",
): string | null {
  if (expected.kind === "drop") return `answered a packet that deserves none (${expected.why})`;
  let parsed: Response;
  try {
    parsed = parseResponse(response);
  } catch (error) {
    return `malformed response: ${(error as Error).message}`;
  }
  const queryFlags = query.readUInt16BE(2);
  if (parsed.id !== query.readUInt16BE(0))
    return `id ${parsed.id}, query id ${query.readUInt16BE(0)}`;
  if (!(parsed.flags & 0x8000)) return "QR bit not set";
  if (((parsed.flags >> 11) & 0x0f) !== ((queryFlags >> 11) & 0x0f)) return "opcode not echoed";
  if ((parsed.flags & 0x0100) !== (queryFlags & 0x0100)) return "RD bit not echoed";
  if (parsed.flags & 0x0040) return "Z bit set";
  if (!expected.rcodes.includes(parsed.rcode))
    return `rcode ${rcodeName[parsed.rcode] ?? parsed.rcode}, expected ${expected.rcodes.map((r) => rcodeName[r] ?? r).join("/")} (${expected.why})`;
  const truncated = (parsed.flags & 0x0200) !== 0;
  if (transport === "tcp" && truncated) return "TC set over TCP";
  const limit = expected.edns === null ? 512 : Math.min(4096, Math.max(512, expected.edns.udp));
  if (transport === "udp" && response.length > limit)
    return `UDP response of ${response.length} bytes, limit ${limit}`;
  if (expected.question === null) {
    // An unreadable query: only the header is owed, or the question if it was readable.
    return null;
  }
  if (parsed.rcode === R.FORMERR && !expected.rcodes.every((r) => r === R.FORMERR)) return null;
  if (parsed.question === null) return "question not echoed";
  if (!parsed.question.equals(expected.question))
    return `question echoed as ${parsed.question.toString("hex")}, asked ${expected.question.toString("hex")}`;
  if ((expected.edns !== null) !== (parsed.opt !== null))
    return expected.edns === null
      ? "OPT in the answer to a query without EDNS"
      : "no OPT in the answer to an EDNS query";
  if (parsed.rcode === R.BADVERS && (parsed.flags & 0x0f) !== 0)
    return "BADVERS with a header rcode";
  for (const rr of [...parsed.answers, ...parsed.authorities, ...parsed.additionals]) {
    if (rr.cls !== 1) return `record of class ${rr.cls}`;
  }
  const resolution = expected.resolution;
  if (resolution === null || parsed.rcode !== resolution.rcode) return null;
  const qname = (expected.labels ?? []).join(".");
  for (const rr of parsed.answers) {
    if (rr.name !== qname && rr.type !== T.SOA) return `answer owned by ${rr.name}, asked ${qname}`;
    if (rr.ttl !== recordTtl) return `answer TTL ${rr.ttl}`;
  }
  if (truncated) {
    if (transport !== "udp") return "TC over TCP";
    return parsed.answers.length === 0 ? null : "TC with a partial answer";
  }
  const soas = parsed.authorities.filter((rr) => rr.type === T.SOA);
  if (
    resolution.soa &&
    (parsed.answers.length > 0 || soas.length !== 1 || soas[0]?.name !== domain)
  )
    return `expected no answer and the SOA of ${domain} in authority, got ${parsed.answers.length} answers, ${soas.length} SOA`;
  if (resolution.answers !== null && !sameSet(parsed.answers.map(sigOf), resolution.answers))
    return `answers ${parsed.answers.map(sigOf).join(", ")}; expected ${resolution.answers.join(", ")}`;
  if (
    resolution.additionals !== null &&
    !sameSet(parsed.additionals.map(sigOf), resolution.additionals)
  )
    return `additionals ${parsed.additionals.map(sigOf).join(", ")}; expected ${resolution.additionals.join(", ")}`;
  return null;
}

// ---- the test ------------------------------------------------------------------------------------

interface Case {
  readonly model: QueryModel;
  readonly mutations: readonly Mutation[];
  /** Random bytes instead of the query (after a plausible header when `header`). */
  readonly random: { readonly bytes: Uint8Array; readonly header: boolean } | null;
}

const fuzzCase: fc.Arbitrary<Case> = fc.record({
  model: queryModel,
  mutations: fc.oneof(
    { weight: 4, arbitrary: fc.constant([]) },
    { weight: 4, arbitrary: fc.array(mutation, { minLength: 1, maxLength: 1 }) },
    { weight: 2, arbitrary: fc.array(mutation, { minLength: 2, maxLength: 3 }) },
  ),
  random: fc.oneof(
    { weight: 19, arbitrary: fc.constant(null) },
    {
      weight: 1,
      arbitrary: fc.record({ bytes: fc.uint8Array({ maxLength: 600 }), header: fc.boolean() }),
    },
  ),
});

interface Sent {
  readonly bytes: Buffer;
  readonly expected: Expected;
  readonly node: string;
  readonly transport: "udp" | "tcp";
  readonly describe: string;
  answers: number;
}

let cluster: AgentCluster;
let before: { appliedIndex: number; hash: string };
let leaderBefore: Record<string, string>;

beforeAll(async () => {
  cluster = await startCluster();
  const leader = await cluster.leader();
  for (const f of fixtures) {
    const answer = await cluster.request(
      leader,
      "PUT",
      `/v1/services/${f.service}/instances/${f.id}`,
      {
        address: f.address,
        port: f.port,
        tags: f.tags,
        weight: f.weight,
        status: f.status,
        ttl: "1h",
      },
    );
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  }
  before = await settled(cluster);
  leaderBefore = await leaderView(cluster);
}, 120_000);

afterAll(async () => {
  await cluster?.destroy();
}, 30_000);

function describeCase(c: Case, bytes: Buffer): string {
  if (c.random !== null) return `random bytes ${bytes.toString("hex")}`;
  const name = c.model.labels.map((l) => l.toString("latin1")).join(".");
  const mutations = c.mutations.map((m) => m.kind).join("+") || "none";
  return `${JSON.stringify(name)} type ${c.model.qtype} class ${c.model.qclass} flags ${c.model.flags.toString(16)} opt ${c.model.opt === null ? "-" : `udp ${c.model.opt.udp} v${c.model.opt.version}`}; mutations ${mutations}; bytes ${bytes.toString("hex")}`;
}

describe("DNS fuzz (grammar-based, fast-check)", () => {
  it("answers every mutated query with a well-formed response the oracle agrees with", async () => {
    const started = performance.now();
    const deadline = Date.now() + budgetMs;
    const failures = new Failures();
    const stats = { udp: 0, tcp: 0, answered: 0, dropped: 0, retried: 0, compressedSrv: 0 };
    const rcodes = new Map<string, number>();
    const port = (node: string) => Number(cluster.get(node).dns.split(":")[1]);
    const portToNode = new Map(nodeIds.map((id) => [port(id), id]));
    let nextId = 1;
    const byId = new Map<number, Sent>();
    const waiting = new Map<number, () => void>();

    const prepare = (c: Case, node: string, transport: "udp" | "tcp"): Sent => {
      const bytes =
        c.random === null
          ? mutate(encode(c.model), c.mutations)
          : Buffer.concat([
              c.random.header ? Buffer.from([0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]) : Buffer.alloc(0),
              Buffer.from(c.random.bytes),
            ]);
      // A fresh id on every packet that can carry one, so that answers match their query.
      const id = nextId++ & 0xffff;
      if (bytes.length >= 2) bytes.writeUInt16BE(id, 0);
      const sent: Sent = {
        bytes,
        expected: oracle(bytes),
        node,
        transport,
        describe: describeCase(c, bytes),
        answers: 0,
      };
      if (bytes.length >= 2) byId.set(id, sent);
      return sent;
    };

    const onResponse = (response: Buffer, from: string, transport: "udp" | "tcp") => {
      if (response.length < 2) {
        failures.add("response shorter than an id", `${from} ${response.toString("hex")}`);
        return;
      }
      const sent = byId.get(response.readUInt16BE(0));
      if (sent === undefined) {
        failures.add("response to no query", `${from} ${response.toString("hex").slice(0, 200)}`);
        return;
      }
      sent.answers++;
      stats.answered++;
      if (sent.answers > 1) failures.add("two responses to one query", sent.describe);
      if (sent.node !== from) failures.add(`response from ${from}`, sent.describe);
      const why = judge(sent.bytes, sent.expected, response, transport);
      if (why !== null)
        failures.add(
          why.replace(/\d+/g, "N").slice(0, 90),
          `${why}\n    query ${sent.describe}\n    response ${response.toString("hex").slice(0, 600)}`,
        );
      else {
        const parsed = parseResponse(response);
        stats.compressedSrv += parsed.compressedSrvTargets;
        const name = rcodeName[parsed.rcode] ?? String(parsed.rcode);
        rcodes.set(name, (rcodes.get(name) ?? 0) + 1);
      }
      waiting.get(response.readUInt16BE(0))?.();
    };

    const udp = createSocket("udp4");
    udp.on("message", (message: Buffer, peer: RemoteInfo) =>
      onResponse(message, portToNode.get(peer.port) ?? `${peer.address}:${peer.port}`, "udp"),
    );
    await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", () => resolve()));
    const sendUdp = (sent: Sent) =>
      new Promise<void>((resolve) =>
        udp.send(sent.bytes, port(sent.node), "127.0.0.1", () => resolve()),
      );
    const deserves = (sent: Sent) => sent.expected.kind === "answer";
    /** Wait for the answers a batch deserves, at most `ms`. */
    const collect = async (batch: readonly Sent[], ms: number) => {
      const pending = batch.filter((s) => deserves(s) && s.answers === 0 && s.bytes.length >= 2);
      await Promise.race([
        new Promise((resolve) => setTimeout(resolve, ms)),
        Promise.all(
          pending.map(
            (s) => new Promise<void>((resolve) => waiting.set(s.bytes.readUInt16BE(0), resolve)),
          ),
        ),
      ]);
    };

    try {
      // ---- UDP ----
      const udpPlan = samples(fuzzCase, seed, 1, udpCases);
      const unanswered: Sent[] = [];
      for (
        let start = 0;
        start < udpPlan.length && Date.now() < deadline - 10_000;
        start += udpBatch
      ) {
        const batch = udpPlan
          .slice(start, start + udpBatch)
          .map((c, i) => prepare(c, nodeIds[(start + i) % nodeIds.length] as string, "udp"));
        await Promise.all(batch.map(sendUdp));
        stats.udp += batch.length;
        await collect(batch, 400);
        unanswered.push(...batch.filter((s) => deserves(s) && s.answers === 0));
        if (failures.count > 200) break;
      }
      // A datagram can be lost on a busy machine: a query left unanswered gets a second
      // chance, alone; it must be answered then.
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const lost of unanswered.filter((s) => s.answers === 0).slice(0, 500)) {
        stats.retried++;
        await sendUdp(lost);
        await collect([lost], 1000);
        if (lost.answers === 0) failures.add("UDP query never answered", lost.describe);
      }

      // ---- TCP: length-prefixed, pipelined on one connection per node ----
      const tcpPlan = samples(fuzzCase, seed, 2, tcpCases);
      const sockets = new Map<string, Socket>();
      const tcp = (node: string): Socket => {
        const open = sockets.get(node);
        if (open !== undefined && !open.destroyed) return open;
        const socket = connect(port(node), "127.0.0.1");
        let buffer = Buffer.alloc(0);
        socket.on("data", (chunk: Buffer) => {
          buffer = Buffer.concat([buffer, chunk]);
          while (buffer.length >= 2 && buffer.length >= 2 + buffer.readUInt16BE(0)) {
            const frame = Buffer.from(buffer.subarray(2, 2 + buffer.readUInt16BE(0)));
            buffer = buffer.subarray(2 + frame.length);
            onResponse(frame, node, "tcp");
          }
        });
        socket.on("error", () => socket.destroy());
        sockets.set(node, socket);
        return socket;
      };
      for (let start = 0; start < tcpPlan.length && Date.now() < deadline; start += tcpBatch) {
        const batch = tcpPlan
          .slice(start, start + tcpBatch)
          .map((c, i) => prepare(c, nodeIds[(start + i) % nodeIds.length] as string, "tcp"));
        for (const node of nodeIds) {
          const frames = batch
            .filter((s) => s.node === node)
            .map((s) => Buffer.concat([u16(s.bytes.length), s.bytes]));
          tcp(node).write(Buffer.concat(frames));
        }
        stats.tcp += batch.length;
        await collect(batch, 3000);
        for (const s of batch) {
          if (deserves(s) && s.answers === 0) failures.add("TCP query not answered", s.describe);
        }
        if (failures.count > 200) break;
      }
      for (const socket of sockets.values()) socket.destroy();
    } finally {
      udp.close();
    }
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `[fuzz dns] ${stats.udp} UDP + ${stats.tcp} TCP queries in ${seconds.toFixed(1)} s, ` +
        `${stats.answered} answers (${[...rcodes].map(([r, n]) => `${r} ${n}`).join(", ")}), ` +
        `${stats.retried} UDP retries; ${stats.compressedSrv} SRV targets sent compressed (RFC 2782 says not to)`,
    );
    expect(failures.count, failures.summary()).toBe(0);
    expect(stats.udp).toBeGreaterThanOrEqual(10_000);
    expect(stats.tcp).toBeGreaterThanOrEqual(1_000);
  }, 90_000);

  it("still answers good queries on every node, over UDP and TCP, and nothing else changed", async () => {
    const good: Case = {
      model: {
        flags: 0x0100,
        labels: ["_web", "_tcp", "service", "muster"].map((l) => Buffer.from(l)),
        qtype: T.SRV,
        qclass: 1,
        opt: null,
      },
      mutations: [],
      random: null,
    };
    for (const node of nodeIds) {
      for (const transport of ["udp", "tcp"] as const) {
        const bytes = encode(good.model).bytes;
        bytes.writeUInt16BE(0x4242, 0);
        const response = await ask(cluster.get(node).dns, bytes, transport);
        expect(judge(bytes, oracle(bytes), response, transport), `${node} ${transport}`).toBeNull();
        expect(parseResponse(response).answers).toHaveLength(4);
      }
      // Too big for 512 bytes: TC over UDP, everything over TCP.
      const big = encode({
        ...good.model,
        labels: ["big", "service", "muster"].map((l) => Buffer.from(l)),
      }).bytes;
      const overUdp = parseResponse(await ask(cluster.get(node).dns, big, "udp"));
      expect(overUdp.flags & 0x0200, `${node}: TC over UDP`).toBe(0x0200);
      const overTcp = parseResponse(await ask(cluster.get(node).dns, big, "tcp"));
      expect(overTcp.answers, `${node}: SRV over TCP`).toHaveLength(60);
    }
    expect(await cluster.converged()).toEqual(before);
    expect(await leaderView(cluster)).toEqual(leaderBefore);
    expect(await liveness(cluster)).toEqual([]);
  });
});

/** One query, one response (UDP retried on loss). */
async function ask(address: string, bytes: Buffer, transport: "udp" | "tcp"): Promise<Buffer> {
  const at = address.lastIndexOf(":");
  const host = address.slice(0, at);
  const port = Number(address.slice(at + 1));
  if (transport === "tcp") {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host);
      let buffer = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        buffer = Buffer.concat([buffer, chunk]);
        if (buffer.length >= 2 && buffer.length >= 2 + buffer.readUInt16BE(0)) {
          socket.destroy();
          resolve(Buffer.from(buffer.subarray(2, 2 + buffer.readUInt16BE(0))));
        }
      });
      socket.on("error", reject);
      socket.setTimeout(3000, () => socket.destroy(new Error("no TCP answer")));
      socket.write(Buffer.concat([u16(bytes.length), bytes]));
    });
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    const socket = createSocket("udp4");
    const answer = await new Promise<Buffer | null>((resolve) => {
      socket.on("message", (message: Buffer) => resolve(message));
      setTimeout(() => resolve(null), 1000);
      socket.send(bytes, port, host);
    });
    socket.close();
    if (answer !== null) return answer;
  }
  throw new Error(`no UDP answer from ${address}`);
}
