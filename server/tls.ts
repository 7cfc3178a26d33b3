import type { ServerOptions as HttpsServerOptions } from "node:https";
import * as grpc from "@grpc/grpc-js";
import type { TlsSettings } from "./config.js";
import { readTlsMaterial, type TlsIdentity, type TlsMaterial } from "./tls-files.js";

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/** A node's TLS material with its identity, as the agent requires. */
export interface NodeTlsMaterial extends TlsMaterial {
  readonly identity: TlsIdentity;
}

/**
 * The agent's TLS certificates, read again on SIGHUP. Every listener (the HTTPS server, the
 * gRPC servers and channels through grpc-js's certificate provider API, the HTTP client)
 * gets each new set, so new connections use it without a restart.
 */
export class TlsCredentials implements grpc.experimental.CertificateProvider {
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly changeListeners: ((material: NodeTlsMaterial) => void)[] = [];

  private constructor(
    readonly settings: TlsSettings,
    private material: NodeTlsMaterial,
  ) {}

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
    this.material = readNodeMaterial(this.settings);
    for (const listener of this.caListeners) listener({ caCertificate: this.material.ca });
    for (const listener of this.identityListeners) listener(this.identityUpdate());
    for (const listener of this.changeListeners) listener(this.material);
    return this.material;
  }

  onChange(listener: (material: NodeTlsMaterial) => void): void {
    this.changeListeners.push(listener);
  }

  /** The HTTPS server's options; `setSecureContext` takes the same, less the client checks. */
  httpsServerOptions(): HttpsServerOptions {
    const verify = this.settings.verifyClients;
    return {
      ...secureContextOptions(this.material),
      requestCert: verify,
      rejectUnauthorized: verify,
    };
  }

  /** The gRPC API: clients need a certificate from the CA only with --tls-verify-clients. */
  apiServerCredentials(): grpc.ServerCredentials {
    return grpc.experimental.createCertificateProviderServerCredentials(
      this,
      this,
      this.settings.verifyClients,
    );
  }

  /** Raft peers always authenticate each other: both ends show a certificate from the CA. */
  peerServerCredentials(): grpc.ServerCredentials {
    return grpc.experimental.createCertificateProviderServerCredentials(this, this, true);
  }

  peerChannelCredentials(): grpc.ChannelCredentials {
    return grpc.experimental.createCertificateProviderChannelCredentials(this, this);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    // grpc-js adds its server watcher only after this returns: answer on the next turn.
    queueMicrotask(() => {
      if (this.caListeners.has(listener)) listener({ caCertificate: this.material.ca });
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
    return { certificate: this.material.identity.cert, privateKey: this.material.identity.key };
  }
}

export function secureContextOptions(material: NodeTlsMaterial): {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
} {
  return { ca: material.ca, cert: material.identity.cert, key: material.identity.key };
}

function readNodeMaterial(settings: TlsSettings): NodeTlsMaterial {
  const material = readTlsMaterial(settings);
  // The configuration guarantees cert and key together; a node always has an identity.
  if (material.identity === null) throw new Error("TLS settings without a certificate");
  return { ca: material.ca, identity: material.identity };
}
