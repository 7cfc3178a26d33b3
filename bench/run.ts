import { runDnsBench } from "./dns.js";
import { runGrpcBench } from "./grpc.js";
import { runLocksBench } from "./locks.js";
import { runRaftBench } from "./raft.js";
import { runRaftCoreBench } from "./raft-core.js";
import { runRegistryBench } from "./registry.js";

const benchmarks: Record<string, () => void | Promise<void>> = {
  "raft-core": runRaftCoreBench,
  raft: runRaftBench,
  registry: runRegistryBench,
  dns: runDnsBench,
  locks: runLocksBench,
  grpc: runGrpcBench,
};

const names = process.argv.slice(2);
const unknown = names.filter((name) => !(name in benchmarks));
if (unknown.length > 0) {
  console.error(
    `unknown benchmark ${unknown.join(", ")}; known: ${Object.keys(benchmarks).join(", ")}`,
  );
  process.exit(2);
}
for (const name of names.length > 0 ? names : Object.keys(benchmarks)) await benchmarks[name]?.();
