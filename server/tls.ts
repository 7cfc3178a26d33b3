import type { ServerOptions as HttpsServerOptions } from "node:https";
import { createSecureContext } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import type { TlsSettings } from "./config.js";
import {
  chainsTo,
  readCaFile,
  readTlsMaterial,
  TlsFileError,
  type TlsIdentity,
  type TlsMaterial,
} from "./tls-files.js";

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/** A node's TLS material with its identity, as the agent requires. */
export interface NodeTlsMaterial extends TlsMaterial {
  readonly identity: TlsIdentity;
  /** --tls-client-ca's certificates; null: API clients need no certificate. */
  readonly clientCa: Buffer | null;
}

/**
 * The agent's TLS certificates, read again on SIGHUP. Every listener (the HTTPS server, the
 * gRPC servers and channels through grpc-js's certificate provider API, the HTTP client)
 * gets each new set, so new connections use it without a restart.
 */
export class TlsCredentials {
  /** Raft, both ways: the cluster's CA only, so a client CA's certificate never talks Raft. */
  private readonly peerCertificates: CertificateSource;
  /** The gRPC API: the cluster's CA and the client CA. */
  private readonly apiCertificates: CertificateSource;
  private readonly changeListeners: ((material: NodeTlsMaterial) => void)[] = [];

  private constructor(
    readonly settings: TlsSettings,
    private material: NodeTlsMaterial,
  ) {
    this.peerCertificates = new CertificateSource(material.ca, material.identity);
    this.apiCertificates = new CertificateSource(apiCa(material), material.identity);
  }

  /** Throws TlsFileError, naming the flag and file, when a file cannot be read or parsed. */
  static load(settings: TlsSettings): TlsCredentials {
    return new TlsCredentials(settings, readNodeMaterial(settings));
  }

  get current(): NodeTlsMaterial {
    return this.material;
  }

  /**
   * Read the files again and hand the new set to every listener. A bad file throws
   * TlsFileError and leaves the current set in place.
   */
  reload(): NodeTlsMaterial {
    const material = readNodeMaterial(this.settings);
    // Checked whole before anything switches: listeners then cannot fail half way.
    try {
      createSecureContext(httpsSecureContextOptions(material));
    } catch (error) {
      throw new TlsFileError(`the new certificates do not make a TLS context: ${String(error)}`);
    }
    this.material = material;
    this.peerCertificates.publish(this.material.ca, this.material.identity);
    this.apiCertificates.publish(apiCa(this.material), this.material.identity);
    for (const listener of this.changeListeners) listener(this.material);
    return this.material;
  }

  onChange(listener: (material: NodeTlsMaterial) => void): void {
    this.changeListeners.push(listener);
  }

  /** The HTTPS server's options; `setSecureContext` takes the same, less the client checks. */
  httpsServerOptions(): HttpsServerOptions {
    const verify = this.settings.clientCaFile !== null;
    return {
      ...httpsSecureContextOptions(this.material),
      requestCert: verify,
      rejectUnauthorized: verify,
    };
  }

  /** The gRPC API: clients need a certificate only with --tls-client-ca. */
  apiServerCredentials(): grpc.ServerCredentials {
    // One source for both arguments: grpc-js 1.14 swaps them between its factory and constructor.
    return grpc.experimental.createCertificateProviderServerCredentials(
      this.apiCertificates,
      this.apiCertificates,
      this.settings.clientCaFile !== null,
    );
  }

  /** Raft peers always authenticate each other: both ends show a certificate from the CA. */
  peerServerCredentials(): grpc.ServerCredentials {
    return grpc.experimental.createCertificateProviderServerCredentials(
      this.peerCertificates,
      this.peerCertificates,
      true,
    );
  }

  peerChannelCredentials(): grpc.ChannelCredentials {
    return grpc.experimental.createCertificateProviderChannelCredentials(
      this.peerCertificates,
      this.peerCertificates,
    );
  }
}

/** The HTTPS server's certificates: the CAs its clients are checked against, and its identity. */
export function httpsSecureContextOptions(material: NodeTlsMaterial): {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
} {
  return { ca: apiCa(material), cert: material.identity.cert, key: material.identity.key };
}

/** API clients may be members (cluster CA) or clients (client CA). */
function apiCa(material: NodeTlsMaterial): Buffer {
  return material.clientCa === null
    ? material.ca
    : Buffer.concat([material.ca, Buffer.from("\n"), material.clientCa]);
}

/** One CA set and identity for grpc-js's certificate provider API, published anew on reload. */
class CertificateSource implements grpc.experimental.CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  constructor(
    private ca: Buffer,
    private identity: TlsIdentity,
  ) {}

  publish(ca: Buffer, identity: TlsIdentity): void {
    this.ca = ca;
    this.identity = identity;
    for (const listener of this.caListeners) listener({ caCertificate: this.ca });
    for (const listener of this.identityListeners) listener(this.identityUpdate());
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    // grpc-js adds its server watcher only after this returns: answer on the next turn.
    queueMicrotask(() => {
      if (this.caListeners.has(listener)) listener({ caCertificate: this.ca });
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => {
      if (this.identityListeners.has(listener)) listener(this.identityUpdate());
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  private identityUpdate(): grpc.experimental.IdentityCertificateUpdate {
    return { certificate: this.identity.cert, privateKey: this.identity.key };
  }
}

function readNodeMaterial(settings: TlsSettings): NodeTlsMaterial {
  const material = readTlsMaterial(settings);
  // The configuration guarantees cert and key together; a node always has an identity.
  if (material.identity === null) throw new Error("TLS settings without a certificate");
  // Peers check this node's certificate against the same CA: one it did not sign would
  // cut the node off from the cluster at the next connection.
  if (!chainsTo(material.identity.cert, material.ca))
    throw new TlsFileError(
      `--tls-cert ${settings.certFile} is not signed by the CA of --tls-ca ${settings.caFile}`,
    );
  const clientCa =
    settings.clientCaFile === null ? null : readCaFile("--tls-client-ca", settings.clientCaFile);
  return { ca: material.ca, identity: material.identity, clientCa };
}
