import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";

/**
 * Reading TLS files (PEM) for the agent and the CLI: every failure names the flag and the
 * file, so an operator knows which one to fix. No grpc-js here: the CLI loads this too.
 */

/** Where the PEM files are; cert and key go together (a client may have neither). */
export interface TlsFiles {
  readonly caFile: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

export interface TlsIdentity {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** The certificate's serial number (hex), for logs. */
  readonly serialNumber: string;
}

export interface TlsMaterial {
  readonly ca: Buffer;
  readonly identity: TlsIdentity | null;
}

export class TlsFileError extends Error {}

export function readTlsMaterial(files: TlsFiles): TlsMaterial {
  const ca = readCaFile("--tls-ca", files.caFile);
  if (files.certFile === undefined && files.keyFile === undefined) return { ca, identity: null };
  if (files.certFile === undefined || files.keyFile === undefined)
    throw new TlsFileError("--tls-cert and --tls-key go together");
  const identity = readIdentity(files.certFile, files.keyFile);
  try {
    createSecureContext({ ca, cert: identity.cert, key: identity.key });
  } catch (error) {
    throw new TlsFileError(`--tls-cert ${files.certFile}: ${reason(error)}`);
  }
  return { ca, identity };
}

/** CA certificates (PEM) given with `flag`: at least one, and all of them parsable. */
export function readCaFile(flag: string, file: string): Buffer {
  const ca = readPem(flag, file);
  const caCertificates = ca.toString("latin1").split("-----BEGIN CERTIFICATE-----").length - 1;
  try {
    if (caCertificates === 0) throw new Error("no PEM certificate in it");
    createSecureContext({ ca });
  } catch (error) {
    throw new TlsFileError(`${flag} ${file}: ${reason(error)}`);
  }
  return ca;
}

/** The PEM certificates in `pem`, in order. */
function certificatesIn(pem: Buffer): X509Certificate[] {
  const blocks = pem
    .toString("latin1")
    .match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  return (blocks ?? []).map((block) => new X509Certificate(block));
}

/**
 * Whether the first certificate of `certPem` is signed by a certificate of `caPem`, directly
 * or through the intermediates that follow it in `certPem`.
 */
export function chainsTo(certPem: Buffer, caPem: Buffer): boolean {
  const chain = certificatesIn(certPem);
  const authorities = certificatesIn(caPem);
  const signs = (issuer: X509Certificate, subject: X509Certificate) =>
    subject.checkIssued(issuer) && subject.verify(issuer.publicKey);
  let current = chain[0];
  for (let depth = 0; current !== undefined && depth <= chain.length; depth++) {
    const subject = current;
    if (authorities.some((authority) => signs(authority, subject))) return true;
    current = chain.find((candidate) => candidate !== subject && signs(candidate, subject));
  }
  return false;
}

function readIdentity(certFile: string, keyFile: string): TlsIdentity {
  const cert = readPem("--tls-cert", certFile);
  const key = readPem("--tls-key", keyFile);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    throw new TlsFileError(`--tls-cert ${certFile}: not a PEM certificate (${reason(error)})`);
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new TlsFileError(`--tls-key ${keyFile}: not a PEM private key (${reason(error)})`);
  }
  if (!certificate.checkPrivateKey(privateKey))
    throw new TlsFileError(`--tls-key ${keyFile} is not the key of --tls-cert ${certFile}`);
  return { cert, key, serialNumber: certificate.serialNumber };
}

function readPem(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new TlsFileError(`${flag} ${file}: cannot read it (${reason(error)})`);
  }
}

function reason(error: unknown): string {
  const { code, message } = error as { code?: unknown; message?: unknown };
  return typeof code === "string" && !code.startsWith("ERR_") ? code : String(message);
}
