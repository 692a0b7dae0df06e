// What every admin command shares: the `--controller`, `--token`/`--token-file`,
// `--tls-ca`/`--tls-cert`/`--tls-key` and `--json` options, one AdminService
// call per command, and gRPC failures turned into
// one line that names what is wrong (the controller's own message for a
// refused request; the address for one that cannot be reached).
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { clientCredentials, type TlsMaterial } from '../security/tls.js';
import { AdminClient } from '../wire/grpc.js';
import type { AdminMethod, AdminReply, AdminRequest } from '../wire/proto-types.js';
import { parseHostPort } from '../util/size.js';
import { setLogLevel } from '../util/log.js';

export const DEFAULT_CONTROLLER = '127.0.0.1:7360';

/** A failure the CLI reports as its one line on stderr. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

export interface AdminArgs {
  controller: string;
  token?: string;
  'token-file'?: string;
  'tls-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  json: boolean;
}

/** Adds the options every admin command takes. */
export function adminOptions<T>(y: Argv<T>): Argv<T & AdminArgs> {
  return y
    .option('controller', {
      type: 'string',
      default: process.env.TABULA_CONTROLLER ?? DEFAULT_CONTROLLER,
      describe: 'controller address HOST:PORT (or TABULA_CONTROLLER)',
    })
    .option('token', { type: 'string', describe: 'shared secret the controller requires (or TABULA_TOKEN)' })
    .option('token-file', { type: 'string', describe: 'file whose first line is the token (or TABULA_TOKEN_FILE)' })
    .option('tls-ca', { type: 'string', describe: "CA of the controller's certificate: connect with TLS (or TABULA_TLS_CA)" })
    .option('tls-cert', { type: 'string', describe: 'client certificate for mutual TLS (or TABULA_TLS_CERT)' })
    .option('tls-key', { type: 'string', describe: 'its private key (or TABULA_TLS_KEY)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the reply as JSON' }) as unknown as Argv<T & AdminArgs>;
}

/** Short commands keep stderr for their one-line verdict unless asked otherwise. */
export function quietLogs(): void {
  if (!process.env.TABULA_LOG_LEVEL) setLogLevel('warn');
}

const NETWORK_REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'unknown host',
  EAI_AGAIN: 'host name lookup failed',
  ECONNRESET: 'connection reset',
};

function isServiceError(err: unknown): err is grpc.ServiceError {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'number' && 'details' in err;
}

/** What a TLS failure in a gRPC UNAVAILABLE status means, or null when it is not one. */
function tlsReason(details: string, tls: boolean): string | null {
  const alert = /alert (certificate required|bad certificate|unknown ca|certificate unknown|certificate expired|unsupported certificate)/i.exec(details)?.[1];
  if (alert) return `refused our client certificate (TLS alert: ${alert.toLowerCase()}; give --tls-cert and --tls-key signed by its CA)`;
  const verify = /(self[- ]signed certificate[^.;(]*|unable to verify[^.;(]*|certificate has expired|Hostname\/IP does not match[^.;(]*|ERR_TLS_CERT_ALTNAME_INVALID)/i.exec(details)?.[1];
  if (verify) return `presented a certificate we do not trust (${verify.trim()}; check --tls-ca and the certificate's --san)`;
  if (/Failed to connect|Connection dropped|Protocol error/i.test(details)) {
    // The TLS alert does not always reach us: a closed connection is all there is to go on.
    return tls
      ? 'closed the TLS connection (does it take our client certificate? check --tls-cert and --tls-key against its CA)'
      : 'dropped the connection (does it want TLS? give --tls-ca)';
  }
  return null;
}

/** One line for a failed admin call to `address` (`tls`: the call used TLS). */
export function describeCallError(err: unknown, address: string, tls = false): string {
  if (!isServiceError(err)) return (err as Error)?.message ?? String(err);
  const details = (err.details ?? '').replace(/\s+/g, ' ').trim();
  switch (err.code) {
    case grpc.status.UNAVAILABLE: {
      const why = tlsReason(details, tls);
      if (why) return `controller at ${address} ${why}`;
      const errno = /\b(E[A-Z_]{3,})\b/.exec(details)?.[1];
      const reason = errno ? (NETWORK_REASONS[errno] ?? errno) : details;
      return `controller unreachable at ${address}${reason ? ` (${reason})` : ''}`;
    }
    case grpc.status.DEADLINE_EXCEEDED:
      return `controller at ${address} did not answer in time`;
    case grpc.status.UNAUTHENTICATED:
      return `controller at ${address} refused the request: ${details || 'not authorized'} (give --token, --token-file or TABULA_TOKEN)`;
    case grpc.status.UNIMPLEMENTED:
      return `controller at ${address} does not offer this operation (${details || 'unimplemented'}); is it a tabula controller of this version?`;
    default:
      return details || `controller at ${address} failed the request (gRPC status ${err.code})`;
  }
}

function readOption(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new CliError(`${option} ${path}: ${(e as Error).message.replace(/^[A-Z]+: /, '')}`);
  }
}

/** The token: --token, --token-file, TABULA_TOKEN, TABULA_TOKEN_FILE (first given wins). */
export function adminToken(args: Pick<AdminArgs, 'token' | 'token-file'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (args.token !== undefined && args['token-file'] !== undefined) throw new CliError('give --token or --token-file, not both');
  if (args.token !== undefined) return args.token;
  const fromFile = (path: string, option: string): string => {
    const t = readOption(path, option).toString('utf8').split('\n')[0]!.trim();
    if (t === '') throw new CliError(`${option} ${path} is empty`);
    return t;
  };
  if (args['token-file'] !== undefined) return fromFile(args['token-file'], '--token-file');
  if (env.TABULA_TOKEN) return env.TABULA_TOKEN;
  if (env.TABULA_TOKEN_FILE) return fromFile(env.TABULA_TOKEN_FILE, 'TABULA_TOKEN_FILE');
  return undefined;
}

/** TLS files from the options (or TABULA_TLS_*), or undefined for a plain connection. */
export function adminTls(args: Pick<AdminArgs, 'tls-ca' | 'tls-cert' | 'tls-key'>, env: NodeJS.ProcessEnv = process.env): TlsMaterial | undefined {
  const pick = (option: 'tls-ca' | 'tls-cert' | 'tls-key', name: string): Buffer | undefined => {
    const p = args[option] ?? (env[name] || undefined);
    return p === undefined ? undefined : readOption(p, args[option] !== undefined ? `--${option}` : name);
  };
  const m: TlsMaterial = { ca: pick('tls-ca', 'TABULA_TLS_CA'), cert: pick('tls-cert', 'TABULA_TLS_CERT'), key: pick('tls-key', 'TABULA_TLS_KEY') };
  if (m.ca === undefined && m.cert === undefined && m.key === undefined) return undefined;
  if ((m.cert === undefined) !== (m.key === undefined)) throw new CliError('give --tls-cert and --tls-key together');
  return m;
}

/** The admin API of the controller named by the command's options. */
export class AdminSession {
  readonly address: string;
  readonly #client: AdminClient;
  readonly #tls: boolean;

  constructor(args: Pick<AdminArgs, 'controller' | 'token' | 'token-file' | 'tls-ca' | 'tls-cert' | 'tls-key'>, deadlineMs = 60_000) {
    const { host, port } = parseHostPort(args.controller, 7360);
    this.address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    let credentials: grpc.ChannelCredentials | undefined;
    try {
      credentials = clientCredentials(adminTls(args));
    } catch (e) {
      if (e instanceof CliError) throw e;
      throw new CliError((e as Error).message);
    }
    this.#tls = credentials !== undefined;
    this.#client = new AdminClient(this.address, { token: adminToken(args), credentials, deadlineMs });
  }

  async call<M extends AdminMethod>(method: M, request: Partial<AdminRequest<M>>): Promise<AdminReply<M>> {
    try {
      return await this.#client.call(method, request);
    } catch (err) {
      throw new CliError(describeCallError(err, this.address, this.#tls));
    }
  }

  close(): void {
    this.#client.close();
  }
}

/** Runs `fn` with a session to the controller, closed afterwards so the process can exit. */
export async function withAdmin<T>(args: AdminArgs, fn: (s: AdminSession) => Promise<T>): Promise<T> {
  quietLogs();
  const session = new AdminSession(args);
  try {
    return await fn(session);
  } finally {
    session.close();
  }
}
