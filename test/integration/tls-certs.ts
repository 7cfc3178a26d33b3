import { generateKeyPairSync, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import forge from "node-forge";

/**
 * Certificates for tests, made in process (Node's crypto cannot sign X.509 certificates and
 * openssl may be missing): a CA, and leaf certificates for 127.0.0.1 and localhost usable by
 * servers and clients alike.
 */

export interface TestCa {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface TestCert {
  readonly certPem: string;
  readonly keyPem: string;
  /** Hex, upper case, as Node's getPeerCertificate() shows it. */
  readonly serialNumber: string;
}

/** The file names an agent gets with --tls-ca, --tls-cert and --tls-key. */
export interface TlsFileSet {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

const dayMs = 24 * 3_600_000;

export function makeCa(name: string): TestCa {
  const { key, keyPem } = newKey();
  const subject = [{ name: "commonName", value: name }];
  const cert = newCertificate(forge.pki.setRsaPublicKey(key.n, key.e), subject, subject);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(key, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

/** A leaf certificate signed by `ca`, for 127.0.0.1 and localhost, server and client use. */
export function issueCert(ca: TestCa, name: string): TestCert {
  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const caKey = forge.pki.privateKeyFromPem(ca.keyPem);
  const { key, keyPem } = newKey();
  const cert = newCertificate(
    forge.pki.setRsaPublicKey(key.n, key.e),
    [{ name: "commonName", value: name }],
    caCert.subject.attributes,
  );
  cert.setExtensions([
    { name: "basicConstraints", cA: false },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: true, clientAuth: true },
    {
      name: "subjectAltName",
      altNames: [
        { type: 7, ip: "127.0.0.1" },
        { type: 2, value: "localhost" },
      ],
    },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return {
    certPem: forge.pki.certificateToPem(cert),
    keyPem,
    serialNumber: cert.serialNumber.toUpperCase(),
  };
}

/** Write `ca`'s certificate and `cert` with its key into `dir` as `<prefix>-ca.pem` etc. */
export async function writeTlsFiles(
  dir: string,
  prefix: string,
  ca: TestCa,
  cert: TestCert,
): Promise<TlsFileSet> {
  const files = {
    ca: join(dir, `${prefix}-ca.pem`),
    cert: join(dir, `${prefix}-cert.pem`),
    key: join(dir, `${prefix}-key.pem`),
  };
  await Promise.all([
    writeFile(files.ca, ca.certPem),
    writeFile(files.cert, cert.certPem),
    writeFile(files.key, cert.keyPem),
  ]);
  return files;
}

function newKey(): { key: forge.pki.rsa.PrivateKey; keyPem: string } {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: "pkcs1", format: "pem" }).toString();
  return { key: forge.pki.privateKeyFromPem(keyPem), keyPem };
}

function newCertificate(
  publicKey: forge.pki.PublicKey,
  subject: forge.pki.CertificateField[],
  issuer: forge.pki.CertificateField[],
): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // Positive (first bit clear) and unique, so that a reloaded certificate shows a new serial.
  cert.serialNumber = `01${randomBytes(8).toString("hex")}`;
  cert.validity.notBefore = new Date(Date.now() - dayMs);
  cert.validity.notAfter = new Date(Date.now() + 30 * dayMs);
  cert.setSubject(subject);
  cert.setIssuer(issuer);
  return cert;
}
