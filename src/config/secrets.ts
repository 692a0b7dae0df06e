// The files a configuration names for its secrets (security.token-file, the
// TLS PEM files), read into what the daemons take. Read on each call: a
// daemon reads them again on SIGHUP, and `config check` reads them to prove
// the daemon will be able to.
import { readFileSync } from 'node:fs';
import type { TlsMaterial } from '../security/tls.js';
import { ConfigError, type TabulaConfig, type TlsConfig } from './schema.js';

function readSecretFile(path: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ConfigError(key, [`cannot read ${path}: ${(e as Error).message}`]);
  }
}

/** The shared token: security.token, or the first line of security.token-file. */
export function resolveToken(cfg: TabulaConfig): string | undefined {
  if (cfg.security.token !== undefined) return cfg.security.token;
  if (cfg.security.tokenFile === undefined) return undefined;
  const t = readSecretFile(cfg.security.tokenFile, 'security.token-file').toString('utf8').split('\n')[0]!.trim();
  if (t === '') throw new ConfigError('security.token-file', [`${cfg.security.tokenFile} is empty`]);
  return t;
}

/** The PEM contents of the TLS files (read now: SIGHUP reads them again). */
export function resolveTls(tls: TlsConfig | undefined): TlsMaterial | undefined {
  if (!tls) return undefined;
  const read = (path: string | undefined, key: string): Buffer | undefined => (path === undefined ? undefined : readSecretFile(path, key));
  return { cert: read(tls.cert, 'security.tls.cert'), key: read(tls.key, 'security.tls.key'), ca: read(tls.ca, 'security.tls.ca') };
}
