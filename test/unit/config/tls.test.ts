import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { agentOptions, resolveConfig } from "../../../server/config.js";
import { TlsCredentials } from "../../../server/tls.js";
import { readTlsMaterial } from "../../../server/tls-files.js";
import {
  issueCert,
  makeCa,
  type TestCa,
  type TlsFileSet,
  writeTlsFiles,
} from "../../integration/tls-certs.js";

const base = ["--node-id=n1", "--peers=n1=127.0.0.1:7702"];

function configOf(args: readonly string[]) {
  // Errors are asserted on, not printed.
  const command = new Command("agent").exitOverride().configureOutput({ writeErr: () => {} });
  for (const option of agentOptions()) command.addOption(option);
  command.parse([...base, ...args], { from: "user" });
  return resolveConfig(command);
}

let dir: string;
let ca: TestCa;
let files: TlsFileSet;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "muster-tls-unit-"));
  ca = makeCa("unit CA");
  files = await writeTlsFiles(dir, "n1", ca, issueCert(ca, "n1"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  delete process.env.MUSTER_TLS_CLIENT_CA;
});

describe("TLS flags", () => {
  it("are off by default", () => {
    expect(configOf([]).tls).toBe(null);
  });

  it("turn TLS on with cert, key and CA; client checks only with a client CA", () => {
    const tlsArgs = [`--tls-cert=${files.cert}`, `--tls-key=${files.key}`, `--tls-ca=${files.ca}`];
    expect(configOf(tlsArgs).tls).toEqual({
      certFile: files.cert,
      keyFile: files.key,
      caFile: files.ca,
      clientCaFile: null,
    });
    expect(configOf([...tlsArgs, "--tls-client-ca=clients.pem"]).tls?.clientCaFile).toBe(
      "clients.pem",
    );
    process.env.MUSTER_TLS_CLIENT_CA = "from-env.pem";
    expect(configOf(tlsArgs).tls?.clientCaFile).toBe("from-env.pem");
  });

  it("name the missing flag", () => {
    expect(() => configOf([`--tls-cert=${files.cert}`, `--tls-ca=${files.ca}`])).toThrow(
      /--tls-key/,
    );
    expect(() => configOf([`--tls-key=${files.key}`, `--tls-ca=${files.ca}`])).toThrow(
      /--tls-cert/,
    );
    expect(() => configOf([`--tls-cert=${files.cert}`, `--tls-key=${files.key}`])).toThrow(
      /--tls-ca .*is required/,
    );
    expect(() => configOf([`--tls-client-ca=${files.ca}`])).toThrow(/--tls-client-ca needs TLS on/);
  });

  it("come from the --config file too", async () => {
    const file = join(dir, "config.json");
    await writeFile(
      file,
      JSON.stringify({
        tlsCert: files.cert,
        tlsKey: files.key,
        tlsCa: files.ca,
        tlsClientCa: "clients.pem",
      }),
    );
    expect(configOf([`--config=${file}`]).tls).toMatchObject({
      caFile: files.ca,
      clientCaFile: "clients.pem",
    });
  });
});

describe("TLS files", () => {
  it("are read and checked, every failure naming the flag and the file", async () => {
    expect(
      readTlsMaterial({ caFile: files.ca, certFile: files.cert, keyFile: files.key }),
    ).toMatchObject({ identity: { serialNumber: expect.stringMatching(/^[0-9A-F]+$/) } });
    const missing = join(dir, "missing.pem");
    expect(() => readTlsMaterial({ caFile: missing })).toThrow(
      `--tls-ca ${missing}: cannot read it (ENOENT)`,
    );
    const garbage = join(dir, "garbage.pem");
    await writeFile(garbage, "garbage\n");
    expect(() => readTlsMaterial({ caFile: garbage })).toThrow(
      `--tls-ca ${garbage}: no PEM certificate`,
    );
    expect(() =>
      readTlsMaterial({ caFile: files.ca, certFile: garbage, keyFile: files.key }),
    ).toThrow(`--tls-cert ${garbage}: not a PEM certificate`);
    expect(() =>
      readTlsMaterial({ caFile: files.ca, certFile: files.cert, keyFile: garbage }),
    ).toThrow(`--tls-key ${garbage}: not a PEM private key`);
    const other = await writeTlsFiles(dir, "other", ca, issueCert(ca, "other"));
    expect(() =>
      readTlsMaterial({ caFile: files.ca, certFile: files.cert, keyFile: other.key }),
    ).toThrow(`--tls-key ${other.key} is not the key of --tls-cert ${files.cert}`);
  });

  it("include --tls-client-ca's, a missing or garbage one naming the flag and the file", async () => {
    const clientCa = makeCa("unit client CA");
    const clientCaFile = join(dir, "clients-ca.pem");
    await writeFile(clientCaFile, clientCa.certPem);
    const settings = { certFile: files.cert, keyFile: files.key, caFile: files.ca };
    expect(TlsCredentials.load({ ...settings, clientCaFile }).current.clientCa?.toString()).toBe(
      clientCa.certPem,
    );
    const missing = join(dir, "missing-clients.pem");
    expect(() => TlsCredentials.load({ ...settings, clientCaFile: missing })).toThrow(
      `--tls-client-ca ${missing}: cannot read it (ENOENT)`,
    );
    const garbage = join(dir, "garbage-clients.pem");
    await writeFile(garbage, "garbage\n");
    expect(() => TlsCredentials.load({ ...settings, clientCaFile: garbage })).toThrow(
      `--tls-client-ca ${garbage}: no PEM certificate`,
    );
  });

  it("are read again on reload, and a bad new file leaves the current ones in place", async () => {
    const own = await writeTlsFiles(dir, "reload", ca, issueCert(ca, "reload"));
    const clientCaFile = join(dir, "reload-clients-ca.pem");
    await writeFile(clientCaFile, makeCa("old client CA").certPem);
    const credentials = TlsCredentials.load({
      certFile: own.cert,
      keyFile: own.key,
      caFile: own.ca,
      clientCaFile,
    });
    const first = credentials.current.identity.serialNumber;
    const seen: string[] = [];
    credentials.onChange((material) => seen.push(material.identity.serialNumber));
    const renewed = issueCert(ca, "reload");
    await writeTlsFiles(dir, "reload", ca, renewed);
    const newClientCa = makeCa("new client CA");
    await writeFile(clientCaFile, newClientCa.certPem);
    expect(credentials.reload().identity.serialNumber).toBe(renewed.serialNumber);
    expect(renewed.serialNumber).not.toBe(first);
    expect(credentials.current.clientCa?.toString()).toBe(newClientCa.certPem);
    await writeFile(own.cert, "garbage\n");
    expect(() => credentials.reload()).toThrow(/--tls-cert/);
    await writeTlsFiles(dir, "reload", ca, renewed);
    await writeFile(clientCaFile, "garbage\n");
    expect(() => credentials.reload()).toThrow(/--tls-client-ca/);
    expect(credentials.current.identity.serialNumber).toBe(renewed.serialNumber);
    expect(credentials.current.clientCa?.toString()).toBe(newClientCa.certPem);
    // A certificate the cluster's CA did not sign would cut the node off: refused.
    const other = makeCa("another CA");
    const stranger = issueCert(other, "reload");
    await writeFile(own.cert, stranger.certPem);
    await writeFile(own.key, stranger.keyPem);
    expect(() => credentials.reload()).toThrow(/not signed by the CA of --tls-ca/);
    expect(credentials.current.identity.serialNumber).toBe(renewed.serialNumber);
    expect(seen).toEqual([renewed.serialNumber]);
  });

  it("refuse at start a node certificate the cluster's CA did not sign", async () => {
    const other = makeCa("another CA");
    const stranger = await writeTlsFiles(dir, "stranger", other, issueCert(other, "n1"));
    expect(() =>
      TlsCredentials.load({
        certFile: stranger.cert,
        keyFile: stranger.key,
        caFile: files.ca,
        clientCaFile: null,
      }),
    ).toThrow(`--tls-cert ${stranger.cert} is not signed by the CA of --tls-ca ${files.ca}`);
  });
});
