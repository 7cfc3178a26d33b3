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
  const command = new Command("agent").exitOverride();
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
  delete process.env.MUSTER_TLS_VERIFY_CLIENTS;
});

describe("TLS flags", () => {
  it("are off by default", () => {
    expect(configOf([]).tls).toBe(null);
  });

  it("turn TLS on with cert, key and CA; client checks only when asked", () => {
    const tlsArgs = [`--tls-cert=${files.cert}`, `--tls-key=${files.key}`, `--tls-ca=${files.ca}`];
    expect(configOf(tlsArgs).tls).toEqual({
      certFile: files.cert,
      keyFile: files.key,
      caFile: files.ca,
      verifyClients: false,
    });
    expect(configOf([...tlsArgs, "--tls-verify-clients"]).tls?.verifyClients).toBe(true);
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
    expect(() => configOf(["--tls-verify-clients"])).toThrow(/--tls-verify-clients needs/);
  });

  it("read MUSTER_TLS_VERIFY_CLIENTS as true or false, and refuse anything else", () => {
    const tlsArgs = [`--tls-cert=${files.cert}`, `--tls-key=${files.key}`, `--tls-ca=${files.ca}`];
    process.env.MUSTER_TLS_VERIFY_CLIENTS = "false";
    expect(configOf(tlsArgs).tls?.verifyClients).toBe(false);
    process.env.MUSTER_TLS_VERIFY_CLIENTS = "true";
    expect(configOf(tlsArgs).tls?.verifyClients).toBe(true);
    process.env.MUSTER_TLS_VERIFY_CLIENTS = "maybe";
    expect(() => configOf(tlsArgs)).toThrow(/MUSTER_TLS_VERIFY_CLIENTS must be true or false/);
  });

  it("come from the --config file too", async () => {
    const file = join(dir, "config.json");
    await writeFile(
      file,
      JSON.stringify({
        tlsCert: files.cert,
        tlsKey: files.key,
        tlsCa: files.ca,
        tlsVerifyClients: true,
      }),
    );
    expect(configOf([`--config=${file}`]).tls).toMatchObject({
      caFile: files.ca,
      verifyClients: true,
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

  it("are read again on reload, and a bad new file leaves the current ones in place", async () => {
    const own = await writeTlsFiles(dir, "reload", ca, issueCert(ca, "reload"));
    const credentials = TlsCredentials.load({
      certFile: own.cert,
      keyFile: own.key,
      caFile: own.ca,
      verifyClients: false,
    });
    const first = credentials.current.identity.serialNumber;
    const seen: string[] = [];
    credentials.onChange((material) => seen.push(material.identity.serialNumber));
    const renewed = issueCert(ca, "reload");
    await writeTlsFiles(dir, "reload", ca, renewed);
    expect(credentials.reload().identity.serialNumber).toBe(renewed.serialNumber);
    expect(renewed.serialNumber).not.toBe(first);
    await writeFile(own.cert, "garbage\n");
    expect(() => credentials.reload()).toThrow(/--tls-cert/);
    expect(credentials.current.identity.serialNumber).toBe(renewed.serialNumber);
    expect(seen).toEqual([renewed.serialNumber]);
  });
});
