import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { MusterClient } from "../../client-sdk/src/index.js";
import type { AgentCluster } from "./agents.js";

const fixture = fileURLToPath(new URL("./fixtures/sdk-instance.mjs", import.meta.url));

export interface InstanceProcess {
  readonly id: string;
  readonly child: ChildProcess;
  /** Lines the instance printed. */
  readonly lines: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function endpoints(cluster: AgentCluster): string[] {
  return [...cluster.agents.values()].map((agent) => agent.http);
}

export function client(cluster: AgentCluster): MusterClient {
  return new MusterClient({ endpoints: endpoints(cluster), timeoutMs: 3000, deadlineMs: 15_000 });
}

/** Start an instance process that registers itself; resolves once it is registered. */
export async function startInstance(
  cluster: AgentCluster,
  service: string,
  id: string,
  env: Record<string, string> = {},
): Promise<InstanceProcess> {
  const child = spawn(process.execPath, [fixture], {
    env: {
      ...process.env,
      MUSTER_ENDPOINTS: endpoints(cluster).join(","),
      MUSTER_TEST_SERVICE: service,
      MUSTER_TEST_ID: id,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  let stderr = "";
  child.stderr?.on("data", (chunk) => {
    stderr += String(chunk);
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id} did not register in 30 s`)), 30_000);
    child.stdout?.setEncoding("utf8");
    let buffer = "";
    child.stdout?.on("data", (chunk: string) => {
      buffer += chunk;
      const parts = buffer.split("\n");
      buffer = parts.pop() ?? "";
      for (const line of parts) {
        lines.push(line);
        if (line.startsWith("ready")) {
          clearTimeout(timer);
          resolve();
        }
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${id} exited before registering: ${stderr}`));
    });
  });
  return { id, child, lines, exited };
}

/** Stop every instance process still running. */
export async function stopAll(instances: readonly InstanceProcess[]): Promise<void> {
  for (const instance of instances) {
    if (instance.child.exitCode === null && instance.child.signalCode === null) {
      instance.child.kill("SIGKILL");
      await instance.exited;
    }
  }
}
