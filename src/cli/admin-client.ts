// What every admin command shares: the `--controller`, `--token` and `--json`
// options, one AdminService call per command, and gRPC failures turned into
// one line that names what is wrong (the controller's own message for a
// refused request; the address for one that cannot be reached).
import * as grpc from '@grpc/grpc-js';
import type { Argv } from 'yargs';
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

/** One line for a failed admin call to `address`. */
export function describeCallError(err: unknown, address: string): string {
  if (!isServiceError(err)) return (err as Error)?.message ?? String(err);
  const details = (err.details ?? '').replace(/\s+/g, ' ').trim();
  switch (err.code) {
    case grpc.status.UNAVAILABLE: {
      const errno = /\b(E[A-Z_]{3,})\b/.exec(details)?.[1];
      const why = errno ? (NETWORK_REASONS[errno] ?? errno) : details;
      return `controller unreachable at ${address}${why ? ` (${why})` : ''}`;
    }
    case grpc.status.DEADLINE_EXCEEDED:
      return `controller at ${address} did not answer in time`;
    case grpc.status.UNAUTHENTICATED:
      return `controller at ${address} refused the request: ${details || 'not authorized'} (give --token or TABULA_TOKEN)`;
    case grpc.status.UNIMPLEMENTED:
      return `controller at ${address} does not offer this operation (${details || 'unimplemented'}); is it a tabula controller of this version?`;
    default:
      return details || `controller at ${address} failed the request (gRPC status ${err.code})`;
  }
}

/** The admin API of the controller named by the command's options. */
export class AdminSession {
  readonly address: string;
  readonly #client: AdminClient;

  constructor(args: Pick<AdminArgs, 'controller' | 'token'>, deadlineMs = 60_000) {
    const { host, port } = parseHostPort(args.controller, 7360);
    this.address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    this.#client = new AdminClient(this.address, { token: args.token ?? process.env.TABULA_TOKEN, deadlineMs });
  }

  async call<M extends AdminMethod>(method: M, request: Partial<AdminRequest<M>>): Promise<AdminReply<M>> {
    try {
      return await this.#client.call(method, request);
    } catch (err) {
      throw new CliError(describeCallError(err, this.address));
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
