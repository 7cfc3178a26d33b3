import { connect } from "node:http2";
import { fileURLToPath } from "node:url";
import type * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { percentile } from "./stats.js";

const protoFile = fileURLToPath(new URL("../proto/muster/v1/muster.proto", import.meta.url));

/** Where the load goes, how hard, and for how long. */
export interface KeepAliveLoad {
  readonly address: string;
  readonly service: string;
  /** Instances `${service}-0` to `${service}-${instances - 1}`, heartbeated in turn. */
  readonly instances: number;
  /** KeepAlive streams, one HTTP/2 connection each. */
  readonly streams: number;
  /** Heartbeats each stream keeps unanswered. */
  readonly inFlight: number;
  readonly durationSeconds: number;
}

/** One length-prefixed gRPC message (uncompressed). */
function framed(message: Buffer): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

/**
 * Heartbeats pipelined on KeepAlive streams; answers come in order, so each one's latency is
 * known. Like wrk, the load tool spends as little of the shared cores as it can: it speaks
 * gRPC's framing over node:http2 itself (grpc-js's client cost it about as much CPU per
 * message as the leader spent answering), frames every request once up front, and checks
 * each answer by its first field (ok) without decoding the rest. An answer that is not ok, or a stream that does not end
 * with grpc-status 0, fails the run, as a non-2xx answer does for wrk.
 */
export async function keepAliveHeartbeats(
  load: KeepAliveLoad,
): Promise<{ perSecond: number; p50: number; p99: number }> {
  const definition = protoLoader.loadSync(protoFile, { longs: Number, enums: String });
  const method = (definition["muster.v1.Registry"] as grpc.ServiceDefinition).KeepAlive;
  if (method === undefined) throw new Error("no Registry.KeepAlive in the proto file");
  const requests = Array.from({ length: load.instances }, (_, n) =>
    framed(
      method.requestSerialize({ heartbeat: { service: load.service, id: `${load.service}-${n}` } }),
    ),
  );
  // KeepAliveResponse field 1 (ok), varint true.
  const isOk = (answer: Buffer) => answer[0] === 0x08 && answer[1] === 0x01;
  const latencies: number[] = [];
  const started = performance.now();
  const until = started + load.durationSeconds * 1000;
  await Promise.all(
    Array.from({ length: load.streams }, (_, s) => {
      const session = connect(`http://${load.address}`);
      const stream = session.request({
        ":method": "POST",
        ":path": method.path,
        "content-type": "application/grpc",
        te: "trailers",
      });
      const sentAt: number[] = [];
      let next = s * 61;
      const send = (count: number) => {
        const now = performance.now();
        for (let k = 0; k < count; k++) {
          sentAt.push(now);
          stream.write(requests[next++ % load.instances] as Buffer);
        }
      };
      return new Promise<void>((resolve, reject) => {
        let buffered: Buffer = Buffer.alloc(0);
        let status: string | undefined;
        stream.on("data", (chunk: Buffer) => {
          const now = performance.now();
          buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
          let answered = 0;
          while (buffered.length >= 5) {
            const length = buffered.readUInt32BE(1);
            if (buffered.length < 5 + length) break;
            const answer = buffered.subarray(5, 5 + length);
            buffered = buffered.subarray(5 + length);
            if (!isOk(answer)) {
              reject(
                new Error(
                  `heartbeat answered ${JSON.stringify(method.responseDeserialize(answer))}`,
                ),
              );
              stream.close();
              return;
            }
            latencies.push(now - (sentAt.shift() as number));
            answered++;
          }
          if (answered === 0) return;
          if (now < until) send(answered);
          else if (sentAt.length === 0) stream.end();
        });
        stream.on("trailers", (trailers) => {
          status = String(trailers["grpc-status"]);
        });
        stream.on("close", () =>
          status === "0"
            ? resolve()
            : reject(new Error(`KeepAlive stream ended with grpc-status ${status ?? "(none)"}`)),
        );
        stream.on("error", reject);
        send(load.inFlight);
      }).finally(() => session.close());
    }),
  );
  return {
    perSecond: latencies.length / ((performance.now() - started) / 1000),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
  };
}
