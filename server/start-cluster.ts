import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * `npm start`: three `muster agent` processes on 127.0.0.1 with data under ./data,
 * logs in ./data/<node>.log. Ctrl-C stops them (each hands over leadership and flushes).
 */

const cli = fileURLToPath(new URL("./cli.ts", import.meta.url));
const nodes = [
  { id: "n1", http: 7700, grpc: 7701, raft: 7702, dns: 7753 },
  { id: "n2", http: 7710, grpc: 7711, raft: 7712, dns: 7754 },
  { id: "n3", http: 7720, grpc: 7721, raft: 7722, dns: 7755 },
];
const peers = nodes.map((node) => `${node.id}=127.0.0.1:${node.raft}`).join(",");
mkdirSync("data", { recursive: true });

const children: ChildProcess[] = nodes.map((node) => {
  const log = createWriteStream(`data/${node.id}.log`, { flags: "a" });
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      cli,
      "agent",
      `--node-id=${node.id}`,
      `--data-dir=data/${node.id}`,
      `--http=127.0.0.1:${node.http}`,
      `--grpc=127.0.0.1:${node.grpc}`,
      `--raft=127.0.0.1:${node.raft}`,
      `--dns=127.0.0.1:${node.dns}`,
      `--peers=${peers}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout?.pipe(log);
  child.stderr?.on("data", (chunk: Buffer) => process.stderr.write(`${node.id}: ${chunk}`));
  child.on("exit", (code, signal) => {
    console.log(`${node.id} exited (${signal ?? `code ${code}`})`);
    // The other two keep a quorum: a node killed on purpose shows a failover, not an outage.
    if (!stopping && !children.some(running)) process.exit(1);
  });
  return child;
});

console.log("muster: three agents on 127.0.0.1 (data and logs in ./data)");
for (const node of nodes) {
  console.log(
    `  ${node.id}: http 127.0.0.1:${node.http}  grpc 127.0.0.1:${node.grpc}  raft 127.0.0.1:${node.raft}  dns 127.0.0.1:${node.dns}`,
  );
}
console.log("Try: curl -s 127.0.0.1:7700/v1/cluster/members   (Ctrl-C stops the cluster)");

let stopping = false;
function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}
function stop(): void {
  stopping = true;
  for (const child of children) if (running(child)) child.kill("SIGTERM");
  setTimeout(() => process.exit(0), 6000).unref();
  Promise.all(
    children.map((child) => (running(child) ? new Promise((r) => child.once("exit", r)) : null)),
  ).then(() => process.exit(0));
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
// Agents take SIGHUP as "reload certificates": a closed terminal must still stop the cluster.
process.on("SIGHUP", stop);
