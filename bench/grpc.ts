import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { AgentCluster } from "../test/integration/agents.js";
import { percentile } from "./stats.js";

/**
 * The same operations over gRPC and HTTP against the leader of three agents (default
 * timings, fsync on): registrations (writes through Raft) and lookups (default reads), each
 * with N clients looping for a fixed time. HTTP uses fetch with keep-alive, gRPC one channel.
 */

const ids = ["n1", "n2", "n3"];
const durationMs = 5000;
const protoFile = fileURLToPath(new URL("../proto/muster/v1/muster.proto", import.meta.url));

type Fields = Record<string, unknown>;
type Registry = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function unary(client: Registry, method: string, request: Fields): Promise<Fields> {
  return new Promise((resolve, reject) =>
    (
      client[method] as (r: Fields, cb: (e: grpc.ServiceError | null, v: Fields) => void) => void
    ).call(client, request, (error, value) => (error === null ? resolve(value) : reject(error))),
  );
}

async function loop(concurrency: number, operation: (worker: number, n: number) => Promise<void>) {
  const latencies: number[] = [];
  let failures = 0;
  const deadline = performance.now() + durationMs;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      for (let n = 0; performance.now() < deadline; n++) {
        const at = performance.now();
        try {
          await operation(worker, n);
          latencies.push(performance.now() - at);
        } catch {
          failures++;
        }
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return {
    rate: latencies.length / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    failures,
  };
}

function line(label: string, result: Awaited<ReturnType<typeof loop>>): string {
  const rate = Math.round(result.rate).toLocaleString("en-US");
  const failed = result.failures > 0 ? `, ${result.failures} failed` : "";
  return `  ${label.padEnd(34)} ${rate.padStart(7)}/s  p50 ${result.p50.toFixed(2)} ms  p99 ${result.p99.toFixed(2)} ms${failed}`;
}

export async function runGrpcBench(): Promise<void> {
  const cluster = await AgentCluster.create({ defaultTimings: true });
  const definition = protoLoader.loadSync(protoFile, { longs: Number, enums: String });
  const v1 = (
    grpc.loadPackageDefinition(definition) as unknown as {
      muster: {
        v1: { Registry: new (address: string, credentials: grpc.ChannelCredentials) => Registry };
      };
    }
  ).muster.v1;
  try {
    await cluster.bootstrap(ids);
    const leader = cluster.get(await cluster.leader());
    const registry = new v1.Registry(leader.grpc, grpc.credentials.createInsecure());
    const body = (worker: number, n: number) => ({
      address: "10.1.2.3",
      port: 8080,
      tags: ["bench"],
      version: `v${worker}-${n}-padding-to-about-100-bytes`,
    });
    for (let id = 0; id < 10; id++) {
      await unary(registry, "register", {
        service: "lookup",
        id: `l${id}`,
        ...body(0, id),
        ttl: "1h",
      });
    }
    console.log(
      `gRPC beside HTTP on the leader, three agents, fsync on, ${durationMs / 1000} s per figure`,
    );
    for (const concurrency of [16, 128]) {
      console.log(`${concurrency} clients:`);
      console.log(
        line(
          "registrations over gRPC",
          await loop(concurrency, (w, n) =>
            unary(registry, "register", {
              service: "g",
              id: `g${w}-${n % 500}`,
              ...body(w, n),
              ttl: "1h",
            }).then(() => undefined),
          ),
        ),
      );
      console.log(
        line(
          "registrations over HTTP",
          await loop(concurrency, async (w, n) => {
            const answer = await fetch(
              `http://${leader.http}/v1/services/h/instances/h${w}-${n % 500}`,
              {
                method: "PUT",
                headers: { "content-type": "application/json" },
                body: JSON.stringify({ ...body(w, n), ttl: "1h" }),
              },
            );
            await answer.arrayBuffer();
            if (answer.status !== 200) throw new Error(`HTTP ${answer.status}`);
          }),
        ),
      );
      console.log(
        line(
          "lookups over gRPC (10 instances)",
          await loop(concurrency, () =>
            unary(registry, "get", { service: "lookup" }).then(() => undefined),
          ),
        ),
      );
      console.log(
        line(
          "lookups over HTTP (10 instances)",
          await loop(concurrency, async () => {
            const answer = await fetch(`http://${leader.http}/v1/services/lookup`);
            await answer.arrayBuffer();
            if (answer.status !== 200) throw new Error(`HTTP ${answer.status}`);
          }),
        ),
      );
    }
    registry.close();
  } finally {
    await cluster.destroy();
  }
}
