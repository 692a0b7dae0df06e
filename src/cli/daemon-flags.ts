// The flags every daemon command (`tabula controller`, `agent`, `up`) takes
// besides its own: the configuration file, the token and the log level.
import type { Argv } from 'yargs';
import { CliError } from './admin-client.js';

/** `--token` and `--token-file` name one setting. */
export function oneToken(args: { token?: string; 'token-file'?: string }): void {
  if (args.token !== undefined && args['token-file'] !== undefined) throw new CliError('give --token or --token-file, not both');
}

export interface DaemonArgs {
  config?: string;
  token?: string;
  'token-file'?: string;
  'log-level'?: string;
}

/** The options every daemon command takes: its configuration file, the token and the log level. */
export function daemonOptions<T>(a: Argv<T>): Argv<T & DaemonArgs> {
  return a
    .option('config', { type: 'string', describe: 'YAML configuration file (as /etc/tabula/tabula.yaml; or TABULA_CONFIG); flags and environment override it' })
    .option('token', { type: 'string', describe: 'shared secret every agent and admin must present (or TABULA_TOKEN)' })
    .option('token-file', { type: 'string', describe: 'file whose first line is the token (or TABULA_TOKEN_FILE); read again on SIGHUP' })
    .option('log-level', { type: 'string', describe: 'error, warn, info or debug (or TABULA_LOG_LEVEL)' }) as unknown as Argv<T & DaemonArgs>;
}
