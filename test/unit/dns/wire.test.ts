import { Packet } from "dns2";
import { describe, expect, it } from "vitest";
import { type DnsRecord, rcodes, types } from "../../../dns/answers.js";
import { isEncodableName } from "../../../dns/names.js";
import { maxQueryBytes, parseQuery } from "../../../dns/query.js";
import { encodeResponse, ipv6Bytes } from "../../../dns/wire.js";

function srv(n: number): DnsRecord {
  return {
    name: "big.service.muster",
    type: types.SRV,
    class: 1,
    ttl: 5,
    priority: 1,
    weight: 100,
    port: 9000 + (n % 1000),
    target: `instance-number-${n}.big.instance.muster`,
  };
}

describe("DNS wire encoding", () => {
  it("encodes what dns2 decodes, with names compressed", () => {
    const answers = [srv(1), srv(2)];
    const additionals: DnsRecord[] = [
      {
        name: "instance-number-1.big.instance.muster",
        type: types.A,
        class: 1,
        ttl: 5,
        address: "10.0.0.1",
      },
      {
        name: "instance-number-2.big.instance.muster",
        type: types.AAAA,
        class: 1,
        ttl: 5,
        address: "::ffff:1.2.3.4",
      },
    ];
    const message = encodeResponse(
      { rcode: rcodes.noError, answers, authorities: [], additionals },
      { qname: "big.service.muster", qtype: types.SRV, ednsPayload: 4096, truncated: false },
    );
    const decoded = Packet.parse(message);
    expect(decoded.errors).toEqual([]);
    expect(decoded.header).toMatchObject({ qr: 1, aa: 1, tc: 0, rcode: 0 });
    expect(decoded.answers.map((r) => (r as unknown as { target: string }).target)).toEqual([
      "instance-number-1.big.instance.muster",
      "instance-number-2.big.instance.muster",
    ]);
    expect(decoded.additionals.map((r) => (r as unknown as { address?: string }).address)).toEqual([
      "10.0.0.1",
      "::ffff:102:304",
      undefined,
    ]);
    // The domain is written once; every later name ends in a two-byte pointer to it.
    expect(message.toString("latin1").split("muster").length - 1).toBe(1);
  });

  it("stops before 65,535 bytes and sets TC instead of failing", () => {
    const answers = Array.from({ length: 5000 }, (_, n) => srv(n));
    const message = encodeResponse(
      { rcode: rcodes.noError, answers, authorities: [], additionals: [] },
      { qname: "big.service.muster", qtype: types.SRV, ednsPayload: null, truncated: false },
    );
    expect(message.length).toBeLessThanOrEqual(65_535);
    const decoded = Packet.parse(message);
    expect(decoded.header.tc).toBe(1);
    expect(decoded.answers.length).toBeGreaterThan(1000);
    expect(decoded.answers.length).toBeLessThan(5000);
  });

  it("reads IPv6 addresses in every text form", () => {
    expect(ipv6Bytes("::1").toString("hex")).toBe("00000000000000000000000000000001");
    expect(ipv6Bytes("fd00::3").toString("hex")).toBe("fd000000000000000000000000000003");
    expect(ipv6Bytes("::ffff:1.2.3.4").toString("hex")).toBe("00000000000000000000ffff01020304");
    expect(ipv6Bytes("1:2:3:4:5:6:7:8").toString("hex")).toBe("00010002000300040005000600070008");
  });

  it("knows which names DNS can carry", () => {
    expect(isEncodableName("web.service.muster")).toBe(true);
    expect(isEncodableName(`${"x".repeat(64)}.web.instance.muster`)).toBe(false);
    expect(isEncodableName(Array.from({ length: 60 }, () => "abcd").join("."))).toBe(false);
  });
});

describe("DNS query parsing", () => {
  function query(name: Buffer, counts = [1, 0, 0, 0], tail = Buffer.alloc(0)): Buffer {
    const header = Buffer.alloc(12);
    header.writeUInt16BE(0x1234, 0);
    counts.forEach((count, i) => {
      header.writeUInt16BE(count, 4 + 2 * i);
    });
    const typeClass = Buffer.from([0, 1, 0, 1]);
    return Buffer.concat([header, name, typeClass, tail]);
  }
  const web = Buffer.from("\x03WeB\x07service\x06muster\x00", "latin1");

  it("reads the question as asked, and an OPT record", () => {
    const opt = Buffer.from([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    const parsed = parseQuery(query(web, [1, 0, 0, 1], opt));
    expect(parsed).toMatchObject({
      kind: "query",
      query: { id: 0x1234, name: "WeB.service.muster", qtype: 1, qclass: 1, ednsPayload: 4096 },
    });
  });

  it("refuses what a query never holds, without following it", () => {
    const pointer = Buffer.from([0xc0, 12]);
    expect(parseQuery(query(pointer))).toEqual({ kind: "error", rcode: 1 });
    expect(parseQuery(query(web, [2, 0, 0, 0]))).toEqual({ kind: "error", rcode: 1 });
    expect(parseQuery(query(web, [1, 1, 0, 0]))).toEqual({ kind: "error", rcode: 1 });
    expect(parseQuery(query(web, [1, 0, 0, 1], Buffer.from([3, 0x61, 0x62, 0x63, 0])))).toEqual({
      kind: "error",
      rcode: 1,
    });
    const huge = query(web, [1, 0, 0, 0], Buffer.alloc(maxQueryBytes));
    expect(parseQuery(huge)).toEqual({ kind: "error", rcode: 1 });
    expect(parseQuery(Buffer.alloc(5))).toEqual({ kind: "drop" });
  });

  it("marks a label that holds a dot, so that it is not read as three", () => {
    const dotted = Buffer.from("\x12web.service.muster\x00", "latin1");
    expect(parseQuery(query(dotted))).toMatchObject({ kind: "query", query: { name: null } });
  });
});
