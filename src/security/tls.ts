// TLS credentials for the controller API that can take new certificate
// files while running (SIGHUP): new connections use the new files, open
// ones keep theirs. Mutual TLS is on when a CA for the peer is given.
import * as grpc from '@grpc/grpc-js';
import { createSecureContext, type SecureContextOptions } from 'node:tls';

/** PEM contents. Server: cert+key, ca = CA of client certificates (mutual). Client: ca of the server, cert+key its own. */
export interface TlsMaterial {
  cert?: Buffer;
  key?: Buffer;
  ca?: Buffer;
}

/** Throws (naming `what`) unless the material makes a TLS context: PEM that parses, a key that matches its certificate. */
export function checkTlsMaterial(m: TlsMaterial, what: string): void {
  if ((m.cert === undefined) !== (m.key === undefined)) throw new Error(`${what}: give both a certificate and its key`);
  try {
    createSecureContext({ cert: m.cert, key: m.key, ca: m.ca });
  } catch (e) {
    throw new Error(`${what}: ${(e as Error).message}`);
  }
}

/** What a daemon's reload did with new security settings. */
export interface ReloadOutcome {
  /** What took effect, e.g. "token". */
  applied: string[];
  /** What changed but takes a restart, each saying why. */
  needsRestart: string[];
}

export function sameMaterial(a: TlsMaterial | undefined, b: TlsMaterial | undefined): boolean {
  const eq = (x?: Buffer, y?: Buffer): boolean => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  if (a === undefined || b === undefined) return a === b;
  return eq(a.cert, b.cert) && eq(a.key, b.key) && eq(a.ca, b.ca);
}

function contextOf(m: TlsMaterial): SecureContextOptions {
  return { cert: m.cert, key: m.key, ca: m.ca };
}

/**
 * Server credentials whose certificate, key and client CA can be replaced.
 * grpc-js gives every server credential a way to push a new secure context
 * to its listeners (setSecureContext on the http2 server); this class is
 * the smallest one that uses it.
 */
export class ReloadableServerCredentials extends grpc.ServerCredentials {
  /** Client certificates are required (a CA was given at start). */
  readonly mutual: boolean;
  #material: TlsMaterial;

  constructor(m: TlsMaterial) {
    if (m.cert === undefined || m.key === undefined) throw new Error('TLS on the controller needs a certificate and its key');
    checkTlsMaterial(m, 'controller TLS');
    const mutual = m.ca !== undefined;
    super({ requestCert: mutual, rejectUnauthorized: mutual }, contextOf(m));
    this.mutual = mutual;
    this.#material = m;
  }

  get material(): TlsMaterial {
    return this.#material;
  }

  /** New connections use `m`. Throws, keeping the old material, when it is unusable or would switch client certificates on or off. */
  reload(m: TlsMaterial): void {
    if (m.cert === undefined || m.key === undefined) throw new Error('controller TLS: a certificate and its key are required');
    if ((m.ca !== undefined) !== this.mutual) throw new Error(`controller TLS: turning client certificates ${this.mutual ? 'off' : 'on'} needs a restart`);
    checkTlsMaterial(m, 'controller TLS');
    this.#material = m;
    this.updateSecureContextOptions(contextOf(m));
  }

  _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

/** Hands the latest CA and identity to grpc-js (its experimental CertificateProvider interface). */
class MaterialProvider implements grpc.experimental.CertificateProvider {
  #m: TlsMaterial;
  readonly #ca = new Set<grpc.experimental.CaCertificateUpdateListener>();
  readonly #id = new Set<grpc.experimental.IdentityCertificateUpdateListener>();

  constructor(m: TlsMaterial) {
    this.#m = m;
  }

  update(m: TlsMaterial): void {
    this.#m = m;
    for (const l of this.#ca) l(this.#caUpdate());
    for (const l of this.#id) l(this.#idUpdate());
  }

  #caUpdate(): grpc.experimental.CaCertificateUpdate | null {
    return this.#m.ca ? { caCertificate: this.#m.ca } : null;
  }

  #idUpdate(): grpc.experimental.IdentityCertificateUpdate | null {
    return this.#m.cert && this.#m.key ? { certificate: this.#m.cert, privateKey: this.#m.key } : null;
  }

  addCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#ca.add(l);
    l(this.#caUpdate());
  }

  removeCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#ca.delete(l);
  }

  addIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#id.add(l);
    l(this.#idUpdate());
  }

  removeIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#id.delete(l);
  }
}

/** Channel credentials to a TLS controller whose files can be replaced for the next connection. */
export class ReloadableChannelCredentials {
  readonly credentials: grpc.ChannelCredentials;
  /** A client certificate is presented (fixed at start). */
  readonly withIdentity: boolean;
  readonly #provider: MaterialProvider;
  #material: TlsMaterial;

  constructor(m: TlsMaterial) {
    if (m.ca === undefined) throw new Error("TLS to the controller needs the CA of the controller's certificate");
    checkTlsMaterial(m, 'TLS to the controller');
    this.#provider = new MaterialProvider(m);
    this.#material = m;
    this.withIdentity = m.cert !== undefined;
    quietIpServerNameWarning();
    this.credentials = grpc.experimental.createCertificateProviderChannelCredentials(this.#provider, this.withIdentity ? this.#provider : null);
  }

  get material(): TlsMaterial {
    return this.#material;
  }

  reload(m: TlsMaterial): void {
    if (m.ca === undefined) throw new Error("TLS to the controller: the CA of the controller's certificate is required");
    if ((m.cert !== undefined) !== this.withIdentity) throw new Error(`TLS to the controller: ${this.withIdentity ? 'dropping' : 'adding'} a client certificate needs a restart`);
    checkTlsMaterial(m, 'TLS to the controller');
    this.#material = m;
    this.#provider.update(m);
  }
}

let quieted = false;

/**
 * grpc-js sets the TLS server name to the address it dials, an IP address
 * included, and Node warns about that (DEP0123) on stderr: one line too
 * many for a command whose stderr is its one-line verdict. Only that
 * warning is dropped; the certificate is still checked against the IP.
 */
function quietIpServerNameWarning(): void {
  if (quieted) return;
  quieted = true;
  const original = process.emitWarning as (...a: unknown[]) => void;
  process.emitWarning = function (...args: unknown[]): void {
    const code = typeof args[1] === 'object' && args[1] !== null ? (args[1] as { code?: unknown }).code : args[2];
    if (code === 'DEP0123') return;
    original.apply(process, args);
  } as typeof process.emitWarning;
}

/** Credentials for a one-shot client (admin commands): TLS when any material is given. */
export function clientCredentials(m: TlsMaterial | undefined): grpc.ChannelCredentials | undefined {
  if (m === undefined || (m.ca === undefined && m.cert === undefined && m.key === undefined)) return undefined;
  checkTlsMaterial(m, 'TLS to the controller');
  quietIpServerNameWarning();
  return grpc.credentials.createSsl(m.ca ?? null, m.key ?? null, m.cert ?? null);
}
