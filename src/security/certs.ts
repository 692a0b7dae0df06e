// A small private CA for the controller API: `tabula certs ca` makes the CA
// (key + self-signed certificate), `tabula certs issue` signs server and
// client certificates with it. Node's crypto makes keys but no X.509
// certificates, so @peculiar/x509 builds them over node's WebCrypto.
// Keys are ECDSA P-256 (small, fast, what TLS 1.3 stacks prefer); a CA of
// someone else's with an RSA or P-384 key can sign too.
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';
export const DEFAULT_CA_DAYS = 3650;
export const DEFAULT_CERT_DAYS = 825;

/** What a certificate may be used for: serverAuth, clientAuth or both. */
export type CertUsage = 'server' | 'client' | 'both';

/** A failure of `tabula certs`, one line naming the file or value at fault. */
export class CertError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CertError';
  }
}

const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
const DNS_RE = /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

/** Import and signing parameters in one (WebCrypto reads the fields it needs). */
interface SignAlgorithm {
  name: string;
  namedCurve?: string;
  hash: string;
}

export interface WrittenFiles {
  cert: string;
  key: string;
  subject: string;
  notAfter: Date;
  /** Subject alternative names, as written (`DNS:x`, `IP:1.2.3.4`). */
  sans: string[];
}

function checkName(name: string): void {
  if (!NAME_RE.test(name)) throw new CertError(`bad certificate name '${name}': use 1-64 of A-Z a-z 0-9 . _ -`);
}

function checkDays(days: number): void {
  if (!Number.isInteger(days) || days < 1 || days > 36500) throw new CertError(`bad validity ${days} days: give a whole number from 1 to 36500`);
}

/** Both files, or neither, may be written: refuses (naming the file) unless `force`. */
function checkWritable(paths: string[], force: boolean): void {
  if (force) return;
  for (const p of paths) if (existsSync(p)) throw new CertError(`${p} exists: refusing to overwrite it (give --force to replace it)`);
}

function writeKey(path: string, pem: string): void {
  // Created 0600 (not chmod after the fact): the key is never readable by others, even briefly.
  writeFileSync(path, pem, { mode: 0o600 });
  chmodSync(path, 0o600); // an overwritten file keeps its old mode otherwise
}

function writeCert(path: string, pem: string): void {
  writeFileSync(path, pem, { mode: 0o644 });
}

function pemKey(pkcs8: ArrayBuffer): string {
  const b64 = Buffer.from(pkcs8).toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64}-----END PRIVATE KEY-----\n`;
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // a positive INTEGER
  if (b[0] === 0) b[0] = 1; // and no leading zero byte to be stripped
  return b.toString('hex');
}

/** A signing algorithm matching a private key (the CA's). */
function signingAlgorithm(key: KeyObject, where: string): SignAlgorithm {
  const type = key.asymmetricKeyType;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    if (curve === 'secp384r1') return { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' };
    throw new CertError(`${where}: EC curve ${curve ?? 'unknown'} is not supported (P-256 or P-384)`);
  }
  if (type === 'rsa') return { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  throw new CertError(`${where}: ${type ?? 'unknown'} keys are not supported (EC P-256/P-384 or RSA)`);
}

/** SAN strings (host names or IP addresses) as x509 general names; each bad one named. */
export function parseSans(values: readonly string[]): { names: x509.JsonGeneralName[]; text: string[] } {
  const names: x509.JsonGeneralName[] = [];
  const text: string[] = [];
  for (const raw of values) {
    const v = raw.trim().replace(/^\[|\]$/g, '');
    if (isIP(v) !== 0) {
      names.push({ type: 'ip', value: v });
      text.push(`IP:${v}`);
    } else if (DNS_RE.test(v) && v.length <= 253) {
      names.push({ type: 'dns', value: v });
      text.push(`DNS:${v}`);
    } else {
      throw new CertError(`bad --san '${raw}': give a host name or an IP address`);
    }
  }
  return { names, text };
}

export interface CreateCaOptions {
  /** Directory for ca.crt and ca.key (created when missing). */
  out: string;
  /** Common name of the CA (default "Tabula CA"). */
  commonName?: string;
  days?: number;
  force?: boolean;
}

export async function createCa(opts: CreateCaOptions): Promise<WrittenFiles> {
  const days = opts.days ?? DEFAULT_CA_DAYS;
  checkDays(days);
  const cn = opts.commonName ?? 'Tabula CA';
  if (!/^[A-Za-z0-9 ._-]{1,64}$/.test(cn)) throw new CertError(`bad CA name '${cn}': use 1-64 of A-Z a-z 0-9 space . _ -`);
  const dir = resolve(opts.out);
  const cert = join(dir, CA_CERT_FILE);
  const key = join(dir, CA_KEY_FILE);
  checkWritable([cert, key], opts.force === true);
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const now = Date.now();
  const notAfter = new Date(now + days * DAY_MS);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${cn}`,
    // An hour back, so a peer whose clock lags a little still accepts it.
    notBefore: new Date(now - 3_600_000),
    notAfter,
    keys: keys as CryptoKeyPair,
    signingAlgorithm: EC_P256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as CryptoKey),
    ],
  });
  mkdirSync(dir, { recursive: true });
  writeKey(key, pemKey(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)));
  writeCert(cert, ca.toString('pem') + '\n');
  return { cert, key, subject: ca.subject, notAfter, sans: [] };
}

export interface IssueOptions {
  /** Directory holding ca.crt and ca.key. */
  ca: string;
  /** Common name; also the file names NAME.crt and NAME.key. */
  name: string;
  /** Directory for the certificate and key (created when missing). */
  out: string;
  /** Host names and IP addresses the certificate is valid for (servers). */
  sans?: readonly string[];
  usage?: CertUsage;
  days?: number;
  force?: boolean;
}

function readCaFile(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new CertError(`cannot read CA file ${path}: ${(e as Error).message} (make one with 'tabula certs ca --out DIR')`);
  }
}

/** Loopback names a server certificate covers when no --san is given. */
export const DEFAULT_SERVER_SANS = ['localhost', '127.0.0.1', '::1'] as const;

export async function issueCert(opts: IssueOptions): Promise<WrittenFiles> {
  checkName(opts.name);
  const usage = opts.usage ?? 'both';
  const days = opts.days ?? DEFAULT_CERT_DAYS;
  checkDays(days);
  const caDir = resolve(opts.ca);
  const caCertPath = join(caDir, CA_CERT_FILE);
  const caKeyPath = join(caDir, CA_KEY_FILE);
  let caCert: x509.X509Certificate;
  try {
    caCert = new x509.X509Certificate(readCaFile(caCertPath));
  } catch (e) {
    if (e instanceof CertError) throw e;
    throw new CertError(`${caCertPath} is not a PEM certificate: ${(e as Error).message}`);
  }
  let caKeyObject: KeyObject;
  try {
    caKeyObject = createPrivateKey(readCaFile(caKeyPath));
  } catch (e) {
    if (e instanceof CertError) throw e;
    throw new CertError(`${caKeyPath} is not a PEM private key: ${(e as Error).message}`);
  }
  const caSpki = Buffer.from(caCert.publicKey.rawData);
  if (!createPublicKey(caKeyObject).export({ type: 'spki', format: 'der' }).equals(caSpki)) {
    throw new CertError(`${caKeyPath} is not the key of ${caCertPath}`);
  }
  const alg = signingAlgorithm(caKeyObject, caKeyPath);
  const caKey = await webcrypto.subtle.importKey('pkcs8', caKeyObject.export({ type: 'pkcs8', format: 'der' }), alg, false, ['sign']);

  const given = opts.sans ?? [];
  const wantDefaults = given.length === 0 && usage !== 'client';
  const nameSan = DNS_RE.test(opts.name) ? [opts.name] : [];
  const sanList = [...new Set([...nameSan, ...given, ...(wantDefaults ? DEFAULT_SERVER_SANS : [])])];
  const sans = parseSans(sanList);

  const dir = resolve(opts.out);
  const cert = join(dir, `${opts.name}.crt`);
  const key = join(dir, `${opts.name}.key`);
  checkWritable([cert, key], opts.force === true);

  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const ekus: string[] = [];
  if (usage !== 'client') ekus.push(x509.ExtendedKeyUsage.serverAuth);
  if (usage !== 'server') ekus.push(x509.ExtendedKeyUsage.clientAuth);
  const now = Date.now();
  const notAfter = new Date(Math.min(now + days * DAY_MS, caCert.notAfter.getTime()));
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${opts.name}`,
    issuer: caCert.subject,
    notBefore: new Date(now - 3_600_000),
    notAfter,
    publicKey: keys.publicKey as CryptoKey,
    signingKey: caKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(ekus, false),
      ...(sans.names.length > 0 ? [new x509.SubjectAlternativeNameExtension(sans.names, false)] : []),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as CryptoKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  mkdirSync(dir, { recursive: true });
  writeKey(key, pemKey(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)));
  writeCert(cert, leaf.toString('pem') + '\n');
  return { cert, key, subject: leaf.subject, notAfter, sans: sans.text };
}
