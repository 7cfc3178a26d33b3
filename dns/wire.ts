import { type DnsAnswer, type DnsRecord, types } from "./answers.js";

/**
 * DNS message encoding (RFC 1035 with name compression, RFC 6891 OPT) for the records muster
 * answers with. Linear in the size of the answer: dns2's encoder takes seconds for a few
 * hundred SRV records, which would stall the node's event loop and Raft with it.
 */

const maxMessage = 65_535;

export interface EncodeOptions {
  readonly qname: string;
  readonly qtype: number;
  /** Add an OPT record advertising this UDP payload size (null: the query had no EDNS). */
  readonly ednsPayload: number | null;
  readonly truncated: boolean;
}

class Writer {
  private buffer = Buffer.alloc(512);
  length = 0;
  private readonly names = new Map<string, number>();

  private ensure(extra: number): void {
    if (this.length + extra <= this.buffer.length) return;
    const grown = Buffer.alloc(Math.max(this.buffer.length * 2, this.length + extra));
    this.buffer.copy(grown, 0, 0, this.length);
    this.buffer = grown;
  }

  u8(value: number): void {
    this.ensure(1);
    this.buffer.writeUInt8(value, this.length);
    this.length += 1;
  }

  u16(value: number): void {
    this.ensure(2);
    this.buffer.writeUInt16BE(value, this.length);
    this.length += 2;
  }

  u32(value: number): void {
    this.ensure(4);
    this.buffer.writeUInt32BE(value >>> 0, this.length);
    this.length += 4;
  }

  bytes(data: Uint8Array): void {
    this.ensure(data.length);
    this.buffer.set(data, this.length);
    this.length += data.length;
  }

  patch16(at: number, value: number): void {
    this.buffer.writeUInt16BE(value, at);
  }

  /** A name, compressed against every name (suffix) written before. */
  name(name: string): void {
    const labels = name
      .replace(/\.$/, "")
      .split(".")
      .filter((label) => label !== "");
    for (let at = 0; at < labels.length; at++) {
      const suffix = labels.slice(at).join(".").toLowerCase();
      const earlier = this.names.get(suffix);
      if (earlier !== undefined) {
        this.u16(0xc000 | earlier);
        return;
      }
      if (this.length < 0x4000) this.names.set(suffix, this.length);
      const label = Buffer.from(labels[at] as string, "latin1");
      this.u8(label.length);
      this.bytes(label);
    }
    this.u8(0);
  }

  result(): Buffer {
    return Buffer.from(this.buffer.subarray(0, this.length));
  }
}

/** Encode a response; records that would push it past 65,535 bytes are left out, with TC. */
export function encodeResponse(answer: DnsAnswer, options: EncodeOptions): Buffer {
  const writer = new Writer();
  writer.u16(0); // id, patched per query
  writer.u16(0x8400 | (options.truncated ? 0x0200 : 0)); // QR, AA, TC
  writer.u16(1);
  const counts = writer.length;
  writer.u16(0);
  writer.u16(0);
  writer.u16(0);
  writer.name(options.qname);
  writer.u16(options.qtype);
  writer.u16(1);
  const written = [0, 0, 0];
  let truncated = options.truncated;
  const reserve = options.ednsPayload === null ? 0 : 11;
  const sections = options.truncated
    ? []
    : [answer.answers, answer.authorities, answer.additionals];
  sections.forEach((records, section) => {
    for (const record of records) {
      if (truncated) return;
      const before = writer.length;
      writeRecord(writer, record);
      if (writer.length + reserve > maxMessage) {
        writer.length = before;
        truncated = true;
        return;
      }
      written[section] = (written[section] ?? 0) + 1;
    }
  });
  if (options.ednsPayload !== null) {
    writer.u8(0); // root name
    writer.u16(types.OPT);
    writer.u16(options.ednsPayload);
    writer.u32(0);
    writer.u16(0);
  }
  const message = writer.result();
  message.writeUInt16BE(written[0] ?? 0, counts);
  message.writeUInt16BE(written[1] ?? 0, counts + 2);
  message.writeUInt16BE((written[2] ?? 0) + (options.ednsPayload === null ? 0 : 1), counts + 4);
  message.writeUInt8((message[3] ?? 0) | (answer.rcode & 0x0f), 3);
  if (truncated) message.writeUInt8((message[2] ?? 0) | 0x02, 2);
  return message;
}

function writeRecord(writer: Writer, record: DnsRecord): void {
  writer.name(record.name);
  writer.u16(record.type);
  writer.u16(record.class);
  writer.u32(Math.min(record.ttl, 0x7fffffff));
  const lengthAt = writer.length;
  writer.u16(0);
  const start = writer.length;
  switch (record.type) {
    case types.A:
      writer.bytes(Buffer.from(String(record.address).split(".").map(Number)));
      break;
    case types.AAAA:
      writer.bytes(ipv6Bytes(String(record.address)));
      break;
    case types.CNAME:
      writer.name(String(record.domain));
      break;
    case types.SRV:
      writer.u16(Number(record.priority));
      writer.u16(Number(record.weight));
      writer.u16(Number(record.port));
      writer.name(String(record.target));
      break;
    case types.SOA:
      writer.name(String(record.primary));
      writer.name(String(record.admin));
      writer.u32(Number(record.serial));
      writer.u32(Number(record.refresh));
      writer.u32(Number(record.retry));
      writer.u32(Number(record.expiration));
      writer.u32(Number(record.minimum));
      break;
    default:
      throw new Error(`no encoder for record type ${record.type}`);
  }
  writer.patch16(lengthAt, writer.length - start);
}

/** The 16 bytes of an IPv6 address (any text form, an embedded IPv4 part included). */
export function ipv6Bytes(address: string): Buffer {
  // The URL parser rewrites any IPv6 text to hexadecimal groups around at most one "::".
  const text = new URL(`http://[${address.split("%")[0] ?? address}]`).hostname.slice(1, -1);
  const [head = "", rest] = text.split("::");
  const parse = (part: string) =>
    part === "" ? [] : part.split(":").map((group) => Number.parseInt(group, 16));
  const left = parse(head);
  const right = rest === undefined ? [] : parse(rest);
  const groups = [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
  const bytes = Buffer.alloc(16);
  groups.forEach((group, index) => {
    bytes.writeUInt16BE(group, index * 2);
  });
  return bytes;
}
