import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { Agent, fetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MusterClient } from "../../client-sdk/src/index.js";
import { AgentCluster, eventually, sleep } from "./agents.js";
import {
  issueCert,
  makeCa,
  type TestCa,
  type TestCert,
  type TlsFileSet,
  writeTlsFiles,
} from "./tls-certs.js";

const cli = fileURLToPath(new URL("../../server/cli.ts", import.meta.url));
const ids = ["n1", "n2", "n3"];
let dir: string;
let ca: TestCa;
let member: TestCert;
let shared: TlsFileSet;
/** n1's own files, which the reload test overwrites. */
let n1Files: TlsFileSet;
let n1Cert: TestCert;
let cluster: AgentCluster;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "muster-tls-"));
  ca = makeCa("muster test CA");
  member = issueCert(ca, "member");
  n1Cert = issueCert(ca, "n1");
  shared = await writeTlsFiles(dir, "member", ca, member);
  n1Files = await writeTlsFiles(dir, "n1", ca, n1Cert);
  cluster = await AgentCluster.create({ tls: shared });
  for (const id of ids) await cluster.define(id);
  for (const id of ids) {
    const own = id === "n1" ? [`--tls-cert=${n1Files.cert}`, `--tls-key=${n1Files.key}`] : [];
    cluster.start(id, [cluster.peersArg(ids), ...own]);
  }
  await cluster.leader();
});
afterAll(async () => {
  await cluster?.destroy();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** An HTTPS client that trusts `trusted` and shows `cert` when given. */
function httpsClient(trusted: TestCa, cert?: TestCert): Agent {
  return new Agent({
    connect: {
      ca: trusted.certPem,
      ...(cert === undefined ? {} : { cert: cert.certPem, key: cert.keyPem }),
    },
  });
}

async function getJson(
  url: string,
  dispatcher: Agent | undefined,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url, { dispatcher, signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** A TLS connection to `address` trusting the test CA, showing `clientCert` when given. */
function tlsConnect(
  address: string,
  clientCert: TestCert | undefined,
  protocols: string[],
  onSecure: (socket: TLSSocket) => void,
): TLSSocket {
  const [host, port] = address.split(":") as [string, string];
  const socket: TLSSocket = connect(
    {
      host,
      port: Number(port),
      ca: ca.certPem,
      ALPNProtocols: protocols,
      ...(clientCert === undefined ? {} : { cert: clientCert.certPem, key: clientCert.keyPem }),
    },
    () => onSecure(socket),
  );
  socket.setTimeout(5000, () => socket.destroy(new Error(`no answer from ${address}`)));
  return socket;
}

/** The serial number of the certificate a TLS server at `address` shows to a new connection. */
function servedSerial(address: string, clientCert?: TestCert): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(address, clientCert, ["h2", "http/1.1"], (secure) => {
      resolve(secure.getPeerCertificate().serialNumber);
      secure.end();
    });
    socket.on("error", reject);
  });
}

const serving = "0801";

/** grpc.health.v1.Health/Check of the whole server, as raw protobuf: SERVING is 08 01. */
function healthCheck(address: string, credentials: grpc.ChannelCredentials): Promise<Buffer> {
  const client = new grpc.Client(address, credentials);
  return new Promise<Buffer>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (request: Buffer) => request,
      (bytes: Buffer) => bytes,
      Buffer.alloc(0),
      { deadline: Date.now() + 5000 },
      (error, answer) => (error === null && answer !== undefined ? resolve(answer) : reject(error)),
    );
  }).finally(() => client.close());
}

/** `muster ARGS` run to completion, with the environment cleared of MUSTER_TLS_*. */
function muster(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("MUSTER_TLS_")),
  );
  const run = spawnSync(process.execPath, ["--import", "tsx", cli, ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env,
  });
  return { status: run.status, stdout: run.stdout, stderr: run.stderr };
}

async function register(id: string, instance: string): Promise<number> {
  const answer = await cluster.request(id, "PUT", `/v1/services/web/instances/${instance}`, {
    address: "10.0.0.1",
    port: 80,
    ttl: "1h",
  });
  return answer.status;
}

describe("TLS", () => {
  it("elects a leader over mutual TLS, serves HTTPS with the CA and forwards writes from followers", async () => {
    const leader = await cluster.leader();
    const follower = ids.find((id) => id !== leader) as string;
    expect(await register(follower, "forwarded")).toBe(200);
    const reader = ids.find((id) => id !== leader && id !== follower) as string;
    // A client with only the CA: client certificates are not asked for by default.
    const client = httpsClient(ca);
    try {
      const lookup = await getJson(
        `https://${cluster.get(reader).http}/v1/services/web?consistency=linearizable`,
        client,
      );
      expect(lookup.status).toBe(200);
      expect((lookup.body.instances as { id: string }[]).map((i) => i.id)).toContain("forwarded");
    } finally {
      await client.close();
    }
  });

  it("refuses plain HTTP on the HTTP port", async () => {
    await expect(
      fetch(`http://${cluster.get("n2").http}/healthz`, { signal: AbortSignal.timeout(5000) }),
    ).rejects.toThrow();
    // A client that does not trust the cluster's CA does not get through either.
    const stranger = httpsClient(makeCa("another CA"));
    try {
      await expect(
        getJson(`https://${cluster.get("n2").http}/healthz`, stranger),
      ).rejects.toThrow();
    } finally {
      await stranger.close();
    }
  });

  it("lets the CLI list members and services over HTTPS with --tls-ca", () => {
    const http = ["--http", `https://${cluster.get("n2").http}`];
    const members = muster("members", ...http, "--tls-ca", shared.ca);
    expect(members.status, members.stderr).toBe(0);
    expect(members.stdout).toMatch(/^n1 +(leader|follower) /m);
    const services = muster("services", "web", "--json", ...http, "--tls-ca", shared.ca);
    expect(services.status, services.stderr).toBe(0);
    expect(JSON.parse(services.stdout).service).toBe("web");
    const plain = muster("members", "--http", cluster.get("n2").http);
    expect(plain.status).toBe(1);
    // https:// without --tls-ca speaks HTTPS checked against the system's CAs, which do not
    // know this cluster's.
    const systemCas = muster("members", ...http);
    expect(systemCas.status).toBe(1);
    expect(systemCas.stderr).toMatch(/CERT|certificate/i);
  });

  it("the SDK registers and discovers over HTTPS with the CA", async () => {
    const client = new MusterClient({
      endpoints: ids.map((id) => `https://${cluster.get(id).http}`),
      tls: { ca: ca.certPem },
      timeoutMs: 3000,
      deadlineMs: 15_000,
    });
    try {
      const registration = await client.register({
        service: "tls-sdk",
        id: "s1",
        address: "10.0.0.7",
        port: 87,
        ttl: "10s",
        drainDelay: "100ms",
        handleSignals: false,
      });
      const view = client.discover("tls-sdk");
      await view.ready();
      expect(view.instances.map((instance) => instance.id)).toEqual(["s1"]);
      await registration.close();
    } finally {
      await client.close();
    }
    const untrusting = new MusterClient({
      endpoints: [`https://${cluster.get("n1").http}`],
      timeoutMs: 1000,
      deadlineMs: 2000,
    });
    try {
      await expect(untrusting.call("GET", "/v1/services")).rejects.toThrow();
    } finally {
      await untrusting.close();
    }
  });

  it("serves gRPC over TLS with the CA and refuses an insecure client", async () => {
    const secure = grpc.credentials.createSsl(Buffer.from(ca.certPem));
    const answer = await healthCheck(cluster.get("n3").grpc, secure);
    expect(answer.toString("hex")).toBe(serving);
    await expect(
      healthCheck(cluster.get("n3").grpc, grpc.credentials.createInsecure()),
    ).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  it("reloads certificates on SIGHUP for new connections, and keeps them when a new file is bad", async () => {
    const n1 = cluster.get("n1");
    expect(await servedSerial(n1.http)).toBe(n1Cert.serialNumber);
    const renewed = issueCert(ca, "n1");
    await writeTlsFiles(dir, "n1", ca, renewed);
    n1.process?.kill("SIGHUP");
    await eventually(
      "n1 to serve its new certificate over HTTPS",
      async () => ((await servedSerial(n1.http)) === renewed.serialNumber ? true : undefined),
      10_000,
    );
    expect(await servedSerial(n1.grpc)).toBe(renewed.serialNumber);
    expect(await servedSerial(n1.raft, member)).toBe(renewed.serialNumber);
    expect(await register("n1", "after-reload")).toBe(200);
    expect(await register("n2", "after-reload-2")).toBe(200);

    await writeFile(n1Files.cert, "not a certificate\n");
    n1.process?.kill("SIGHUP");
    await sleep(1000);
    expect(n1.process?.exitCode).toBe(null);
    expect(await servedSerial(n1.http)).toBe(renewed.serialNumber);
    expect(await register("n1", "after-bad-reload")).toBe(200);
    await cluster.converged(30_000);
  });

  it("keeps out a peer whose certificate comes from another CA, and keeps its leader", async () => {
    const otherCa = makeCa("rogue CA");
    const rogueFiles = await writeTlsFiles(dir, "rogue", otherCa, issueCert(otherCa, "rogue"));
    const rogueArgs = [
      `--tls-ca=${rogueFiles.ca}`,
      `--tls-cert=${rogueFiles.cert}`,
      `--tls-key=${rogueFiles.key}`,
    ];

    // Joining goes over HTTPS, where neither side trusts the other: the joiner gives up.
    const joiner = await cluster.define("joiner");
    cluster.start("joiner", [`--join=${cluster.get("n1").http}`, ...rogueArgs]);
    const exitCode = await new Promise<number | null>((resolve) =>
      joiner.process?.once("exit", (code) => resolve(code)),
    );
    joiner.process = null;
    expect(exitCode).not.toBe(0);

    // A rogue takes a stopped member's id and Raft address (so the cluster sends to it).
    const leader = await cluster.leader();
    const victim = ids.find((id) => id !== leader) as string;
    await cluster.kill(victim, "SIGTERM");
    const before = await cluster.request(leader, "GET", "/v1/cluster/leader");
    await cluster.define("rogue");
    cluster.start("rogue", [
      `--node-id=${victim}`,
      `--raft=${cluster.get(victim).raft}`,
      cluster.peersArg(ids),
      ...rogueArgs,
    ]);
    const rogueClient = httpsClient(otherCa);
    try {
      const rogueHttp = `https://${cluster.get("rogue").http}`;
      await eventually(
        "the rogue to answer",
        async () =>
          (await getJson(`${rogueHttp}/healthz`, rogueClient)).status === 200 ? true : undefined,
        60_000,
      );
      for (let round = 0; round < 15; round++) {
        await sleep(200);
        const now = await cluster.request(leader, "GET", "/v1/cluster/leader");
        expect(now.body).toEqual(before.body);
      }
      expect(await register(leader, "with-rogue-around")).toBe(200);
      // The rogue never heard from the leader: not one message got through.
      const rogueLeader = await getJson(`${rogueHttp}/v1/cluster/leader`, rogueClient);
      expect(rogueLeader.body.leader).toBe(null);
      const metrics = await fetch(`${rogueHttp}/metrics`, {
        dispatcher: rogueClient,
        signal: AbortSignal.timeout(5000),
      });
      const text = await metrics.text();
      expect(text).toMatch(/^muster_raft_messages_received_total 0$/m);
      // Its own connections to the members fail their handshakes and are tried again.
      expect(text).toMatch(/^muster_raft_reconnects_total [1-9]/m);
    } finally {
      await rogueClient.close();
      await cluster.kill("rogue", "SIGKILL");
    }
  });
});

const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/** Length 0, type 4 (SETTINGS), no flags, stream 0. */
const emptySettingsFrame = Buffer.from("000000040000000000", "hex");

/**
 * What a TLS server at `address` does with a client showing `clientCert`: "served" once it
 * answers the HTTP/2 preface, "closed" when it hangs up without a word, else the error's
 * code. With TLS 1.3 the client's handshake completes before the server checks the client's
 * certificate, and Node's server then closes a connection it refuses without an alert.
 */
function http2Greeting(address: string, clientCert: TestCert): Promise<string> {
  return new Promise((resolve, reject) => {
    // The client preface and an empty SETTINGS frame: a server that accepted us answers.
    const socket = tlsConnect(address, clientCert, ["h2"], (secure) =>
      secure.write(Buffer.concat([Buffer.from(http2Preface), emptySettingsFrame])),
    );
    socket.once("data", () => {
      resolve("served");
      socket.destroy();
    });
    socket.once("error", (error: NodeJS.ErrnoException) =>
      error.code === undefined ? reject(error) : resolve(error.code),
    );
    socket.once("close", () => resolve("closed"));
  });
}

describe("TLS with --tls-client-ca", () => {
  let strict: AgentCluster;
  let clientCa: TestCa;
  /** An API client's certificate, from the client CA. */
  let apiClient: TestCert;
  let clientFiles: TlsFileSet;
  beforeAll(async () => {
    clientCa = makeCa("muster test client CA");
    apiClient = issueCert(clientCa, "api-client");
    clientFiles = await writeTlsFiles(dir, "api-client", clientCa, apiClient);
    strict = await AgentCluster.create({
      tls: shared,
      args: [`--tls-client-ca=${clientFiles.ca}`],
    });
    await strict.bootstrap(["v1"]);
    await strict.leader();
  });
  afterAll(async () => {
    await strict?.destroy();
  });

  it("serves HTTPS, gRPC and CLI clients with a certificate from the client CA, and refuses those without", async () => {
    const node = strict.get("v1");
    const withClientCert = httpsClient(ca, apiClient);
    const withMemberCert = httpsClient(ca, member);
    const withoutCert = httpsClient(ca);
    try {
      expect((await getJson(`https://${node.http}/v1/services`, withClientCert)).status).toBe(200);
      // Members call each other's APIs with their node certificates.
      expect((await getJson(`https://${node.http}/v1/services`, withMemberCert)).status).toBe(200);
      await expect(getJson(`https://${node.http}/v1/services`, withoutCert)).rejects.toThrow();
    } finally {
      await withClientCert.close();
      await withMemberCert.close();
      await withoutCert.close();
    }
    const caOnly = grpc.credentials.createSsl(Buffer.from(ca.certPem));
    await expect(healthCheck(node.grpc, caOnly)).rejects.toMatchObject({
      code: grpc.status.UNAVAILABLE,
    });
    const mutual = grpc.credentials.createSsl(
      Buffer.from(ca.certPem),
      Buffer.from(apiClient.keyPem),
      Buffer.from(apiClient.certPem),
    );
    const cliWithCert = muster(
      "services",
      "--http",
      node.http,
      "--tls-ca",
      shared.ca,
      "--tls-cert",
      clientFiles.cert,
      "--tls-key",
      clientFiles.key,
    );
    expect(cliWithCert.status, cliWithCert.stderr).toBe(0);
    expect(muster("services", "--http", node.http, "--tls-ca", shared.ca).status).toBe(1);
    // Health turns SERVING within a refresh (250 ms) of the node knowing its leader.
    await eventually("gRPC health over mutual TLS", async () =>
      (await healthCheck(node.grpc, mutual)).toString("hex") === serving ? true : undefined,
    );
  });

  it("refuses a certificate from the client CA on the Raft port, where a member's is served", async () => {
    const raft = strict.get("v1").raft;
    expect(await http2Greeting(raft, member)).toBe("served");
    expect(await http2Greeting(raft, apiClient)).toBe("closed");
    // The API ports, by contrast, take it.
    expect(await http2Greeting(strict.get("v1").grpc, apiClient)).toBe("served");
  });
});
