/**
 * Reading a query off the wire, strictly and in time linear in its size: a query holds one
 * question and at most an OPT record. Anything else is malformed, and nothing in it is
 * followed blindly (no compression in the question, no records to chase pointers in).
 */

export interface Query {
  readonly id: number;
  /** Labels as asked (case kept), joined with dots; null when a label holds a dot itself. */
  readonly name: string | null;
  readonly qtype: number;
  readonly qclass: number;
  /** The question's bytes, name, type and class, to echo exactly. */
  readonly question: Buffer;
  /** The requester's UDP payload size, or null without EDNS. */
  readonly ednsPayload: number | null;
  readonly ednsVersion: number;
}

export type ParsedQuery =
  | { readonly kind: "query"; readonly query: Query }
  /** Answer with this rcode (and the header's id and opcode). */
  | { readonly kind: "error"; readonly rcode: number }
  /** Not a query at all: no answer. */
  | { readonly kind: "drop" };

export const maxQueryBytes = 4096;
const headerBytes = 12;
const typeOpt = 41;

export function parseQuery(message: Buffer): ParsedQuery {
  if (message.length < headerBytes) return { kind: "drop" };
  const flags = message.readUInt16BE(2);
  if (flags & 0x8000) return { kind: "drop" };
  if (((flags >> 11) & 0x0f) !== 0) return { kind: "error", rcode: 4 }; // NOTIMP
  const formErr = { kind: "error", rcode: 1 } as const;
  const [qd, an, ns, ar] = [4, 6, 8, 10].map((at) => message.readUInt16BE(at));
  if (message.length > maxQueryBytes || qd !== 1 || an !== 0 || ns !== 0 || (ar ?? 0) > 1) {
    return formErr;
  }
  let at = headerBytes;
  const labels: string[] = [];
  let wireLength = 1;
  let dotted = false;
  for (;;) {
    const length = message[at];
    if (length === undefined) return formErr;
    at++;
    if (length === 0) break;
    if (length > 63) return formErr; // a compression pointer or a reserved label type
    wireLength += length + 1;
    if (wireLength > 255 || at + length > message.length) return formErr;
    const label = message.toString("latin1", at, at + length);
    if (label.includes(".")) dotted = true;
    labels.push(label);
    at += length;
  }
  if (at + 4 > message.length) return formErr;
  const qtype = message.readUInt16BE(at);
  const qclass = message.readUInt16BE(at + 2);
  at += 4;
  const question = message.subarray(headerBytes, at);
  let ednsPayload: number | null = null;
  let ednsVersion = 0;
  if (ar === 1) {
    // Only an OPT record, owned by the root, is expected here.
    if (at + 11 > message.length || message[at] !== 0) return formErr;
    if (message.readUInt16BE(at + 1) !== typeOpt) return formErr;
    ednsPayload = message.readUInt16BE(at + 3);
    ednsVersion = message[at + 6] ?? 0;
    const rdLength = message.readUInt16BE(at + 9);
    if (at + 11 + rdLength > message.length) return formErr;
  }
  return {
    kind: "query",
    query: {
      id: message.readUInt16BE(0),
      name: dotted ? null : labels.join("."),
      qtype,
      qclass,
      question: Buffer.from(question),
      ednsPayload,
      ednsVersion,
    },
  };
}
