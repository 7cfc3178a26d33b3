import { createSocket } from "node:dgram";
import { connect, isIPv6 } from "node:net";
import { Packet } from "dns2";

export type DnsResponse = InstanceType<typeof Packet>;

export interface QueryOptions {
  /** "auto": UDP, then TCP when the answer came back truncated. */
  readonly transport: "udp" | "tcp" | "auto";
  readonly edns: boolean;
  readonly timeoutMs: number;
}

/** One question to one server (host:port), the way a stub resolver asks it. */
export async function queryDns(
  server: string,
  name: string,
  type: number,
  options: QueryOptions,
): Promise<DnsResponse> {
  const packet = new Packet();
  packet.header.id = Math.floor(Math.random() * 0x10000);
  packet.header.rd = 1;
  packet.questions.push(new Packet.Question(name, type, Packet.CLASS.IN));
  if (options.edns) packet.additionals.push(Packet.Resource.EDNS([], { udpPayloadSize: 4096 }));
  const message = packet.toBuffer();
  const at = server.lastIndexOf(":");
  const host = server.slice(0, at);
  const port = Number(server.slice(at + 1));
  if (options.transport === "tcp") return overTcp(host, port, message, options.timeoutMs);
  const answer = await overUdp(host, port, message, options.timeoutMs);
  if (options.transport === "auto" && answer.header.tc === 1) {
    return overTcp(host, port, message, options.timeoutMs);
  }
  return answer;
}

async function overUdp(host: string, port: number, message: Buffer, timeoutMs: number) {
  const socket = createSocket(isIPv6(host) ? "udp6" : "udp4");
  try {
    const answer = new Promise<Buffer>((resolve, reject) => {
      socket.once("message", resolve);
      socket.once("error", reject);
      setTimeout(
        () => reject(new Error(`no answer over UDP within ${timeoutMs} ms`)),
        timeoutMs,
      ).unref();
    });
    socket.send(message, port, host);
    return Packet.parse(await answer);
  } finally {
    socket.close();
  }
}

async function overTcp(host: string, port: number, message: Buffer, timeoutMs: number) {
  const socket = connect(port, host);
  try {
    const answer = new Promise<Buffer>((resolve, reject) => {
      let buffered = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        const length = buffered.length >= 2 ? buffered.readUInt16BE(0) : -1;
        if (length >= 0 && buffered.length >= 2 + length) resolve(buffered.subarray(2, 2 + length));
      });
      socket.once("error", reject);
      setTimeout(
        () => reject(new Error(`no answer over TCP within ${timeoutMs} ms`)),
        timeoutMs,
      ).unref();
    });
    const frame = Buffer.alloc(2 + message.length);
    frame.writeUInt16BE(message.length, 0);
    message.copy(frame, 2);
    socket.write(frame);
    return Packet.parse(await answer);
  } finally {
    socket.destroy();
  }
}

const rcodeNames = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

/** A response in dig's presentation format, one record per line. */
export function formatResponse(response: DnsResponse): string {
  const header = response.header;
  const lines = [
    `;; status: ${rcodeNames[header.rcode] ?? header.rcode}, flags:${header.aa ? " aa" : ""}${header.tc ? " tc" : ""}, answers: ${response.answers.length}`,
  ];
  const sections: [string, DnsResponse["answers"]][] = [
    ["ANSWER", response.answers],
    ["AUTHORITY", response.authorities],
    ["ADDITIONAL", response.additionals.filter((record) => record.type !== Packet.TYPE.EDNS)],
  ];
  for (const [title, records] of sections) {
    if (records.length === 0) continue;
    lines.push(`;; ${title}`);
    for (const record of records)
      lines.push(formatRecord(record as unknown as Record<string, unknown>));
  }
  return lines.join("\n");
}

function formatRecord(record: Record<string, unknown>): string {
  const type = Packet.typeName(Number(record.type));
  const data = (() => {
    switch (type) {
      case "A":
      case "AAAA":
        return String(record.address);
      case "CNAME":
        return `${String(record.domain)}.`;
      case "SRV":
        return `${record.priority} ${record.weight} ${record.port} ${String(record.target)}.`;
      case "SOA":
        return `${String(record.primary)}. ${String(record.admin)}. ${record.serial} ${record.refresh} ${record.retry} ${record.expiration} ${record.minimum}`;
      default:
        return "";
    }
  })();
  return `${String(record.name)}.\t${record.ttl}\tIN\t${type}\t${data}`;
}
