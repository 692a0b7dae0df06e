// The flags every daemon command (`tabula controller`, `agent`, `up`) takes
// besides its own: the configuration file, the token and the log level; and
// the agent's `--iscsi-*` initiator flags.
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import type { FlagSpec } from '../config/flags.js';
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

// ---- the agent's iSCSI initiator (agent.iscsi): how it reaches iscsi:// containers ----

/** Each `--iscsi-*` flag and the agent.iscsi key it sets. */
export const ISCSI_FLAGS: readonly FlagSpec[] = [
  { flag: 'iscsi-initiator-name', key: 'agent.iscsi.initiator-name' },
  { flag: 'iscsi-mutual-chap-user', key: 'agent.iscsi.mutual-chap-user' },
  { flag: 'iscsi-mutual-chap-secret', key: 'agent.iscsi.mutual-chap-secret' },
  { flag: 'iscsi-digest', key: 'agent.iscsi.digest' },
  { flag: 'iscsi-queue-depth', key: 'agent.iscsi.queue-depth' },
  { flag: 'iscsi-sessions', key: 'agent.iscsi.sessions' },
  { flag: 'iscsi-command-timeout', key: 'agent.iscsi.command-timeout' },
];

/** The `--iscsi-*` options of `tabula agent`. */
export function iscsiClientFlags<T>(a: Argv<T>): Argv<T> {
  return a
    .option('iscsi-initiator-name', { type: 'string', describe: 'initiator name for iscsi:// containers (default iqn.2024-01.io.tabula:agent.<host name>)' })
    .option('iscsi-mutual-chap-user', { type: 'string', describe: 'mutual CHAP: the user name storage targets must answer with' })
    .option('iscsi-mutual-chap-secret', { type: 'string', describe: 'mutual CHAP: their secret (or --iscsi-mutual-chap-secret-file, or TABULA_ISCSI_MUTUAL_CHAP_SECRET)' })
    .option('iscsi-mutual-chap-secret-file', { type: 'string', describe: 'mutual CHAP: file holding that secret (first line)' })
    .option('iscsi-digest', { type: 'string', describe: 'header and data digests: none, crc32c or prefer (default none)' })
    .option('iscsi-queue-depth', { type: 'number', describe: 'commands in flight per session (default 32)' })
    .option('iscsi-sessions', { type: 'number', describe: 'sessions per storage target (default 1)' })
    .option('iscsi-command-timeout', { type: 'number', describe: 'seconds before an unanswered command is aborted and retried (default 5, below --hold-timeout)' }) as unknown as Argv<T>;
}

/** Fills --iscsi-mutual-chap-secret from its -file flag or TABULA_ISCSI_MUTUAL_CHAP_SECRET. */
export function iscsiSecretFile(args: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): void {
  const flag = 'iscsi-mutual-chap-secret';
  const file = args[`${flag}-file`];
  if (typeof file === 'string') {
    if (args[flag] !== undefined) throw new CliError(`give --${flag} or --${flag}-file, not both`);
    let line: string;
    try {
      line = readFileSync(file, 'utf8').split(/\r?\n/)[0] ?? '';
    } catch (err) {
      throw new CliError(`--${flag}-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (line === '') throw new CliError(`--${flag}-file ${file}: the first line is empty`);
    args[flag] = line;
  } else if (args[flag] === undefined && env.TABULA_ISCSI_MUTUAL_CHAP_SECRET) {
    args[flag] = env.TABULA_ISCSI_MUTUAL_CHAP_SECRET;
  }
}
