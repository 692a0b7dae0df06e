// `tabula agent`: the agent daemon for real deployments. Serves the vdisks the
// controller exports on this agent through its iSCSI portals, from the
// containers its globs find; keeps serving while the controller is away.
// Flags, TABULA_* environment and `--config FILE` are one configuration
// (src/config); SIGHUP reloads what can change while running.
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { COMMON_FLAGS, commandLoader, type FlagSpec } from '../config/flags.js';
import { parseHostPort } from '../util/size.js';
import { ISCSI_FLAGS, daemonOptions, iscsiClientFlags, iscsiSecretFile, oneToken } from './daemon-flags.js';

// ---- iSCSI CHAP (agent-local: every target the agent serves, and discovery) ----
// The flags are security.chap in the configuration; the secrets may also come
// from a file (first line) or TABULA_CHAP_SECRET / TABULA_MUTUAL_SECRET, read
// here into the flag they stand for. The configuration checks the rest
// (both parts given, 12 characters at least).

export const CHAP_FLAGS: readonly FlagSpec[] = [
  { flag: 'chap-user', key: 'security.chap.user' },
  { flag: 'chap-secret', key: 'security.chap.secret' },
  { flag: 'mutual-user', key: 'security.chap.mutual-user' },
  { flag: 'mutual-secret', key: 'security.chap.mutual-secret' },
  { flag: 'allow-initiator', key: 'security.allowed-initiators', list: true },
];

function chapOptions(a: Argv): Argv {
  return a
    .option('chap-user', { type: 'string', describe: 'CHAP: user name initiators must log in with (every target and discovery)' })
    .option('chap-secret', { type: 'string', describe: 'CHAP: their secret (or --chap-secret-file, or TABULA_CHAP_SECRET)' })
    .option('chap-secret-file', { type: 'string', describe: 'CHAP: file holding the secret (first line)' })
    .option('mutual-user', { type: 'string', describe: 'mutual CHAP: user name the agent answers with' })
    .option('mutual-secret', { type: 'string', describe: "mutual CHAP: the agent's secret (or --mutual-secret-file, or TABULA_MUTUAL_SECRET)" })
    .option('mutual-secret-file', { type: 'string', describe: "mutual CHAP: file holding the agent's secret (first line)" })
    .option('allow-initiator', {
      type: 'string',
      array: true,
      describe: 'initiator IQN allowed on every target of this node (repeatable; default: any; exports may narrow further)',
    });
}

/** Fills --chap-secret / --mutual-secret from their -file flags or the environment. */
export function chapSecrets(args: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): void {
  for (const [flag, envName] of [
    ['chap-secret', 'TABULA_CHAP_SECRET'],
    ['mutual-secret', 'TABULA_MUTUAL_SECRET'],
  ] as const) {
    const file = args[`${flag}-file`];
    if (typeof file === 'string') {
      if (args[flag] !== undefined) throw new Error(`give --${flag} or --${flag}-file, not both`);
      let line: string;
      try {
        line = readFileSync(file, 'utf8').split(/\r?\n/)[0] ?? '';
      } catch (err) {
        throw new Error(`--${flag}-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      if (line === '') throw new Error(`--${flag}-file ${file}: the first line is empty`);
      args[flag] = line;
    } else if (args[flag] === undefined && env[envName]) {
      args[flag] = env[envName];
    }
  }
}

interface AgentArgs {
  config?: string;
  controller?: string;
  name?: string;
  portal?: string[];
  containers?: string[];
  'hold-timeout'?: number;
  'host-id'?: string;
  'rescan-interval'?: number;
  token?: string;
  'token-file'?: string;
  'controller-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'metrics-listen'?: string;
  'log-level'?: string;
}

/** Each flag and the configuration key it sets. */
export const AGENT_FLAGS: readonly FlagSpec[] = [
  { flag: 'controller', key: 'controller.address' },
  { flag: 'name', key: 'agent.name' },
  { flag: 'portal', key: 'agent.portals', list: true },
  { flag: 'containers', key: 'agent.containers', list: true, path: true },
  { flag: 'hold-timeout', key: 'agent.hold-timeout' },
  { flag: 'host-id', key: 'agent.host-id' },
  { flag: 'rescan-interval', key: 'agent.rescan-interval' },
  { flag: 'metrics-listen', key: 'agent.metrics-listen' },
  { flag: 'controller-ca', key: 'security.tls.ca', path: true },
  { flag: 'tls-cert', key: 'security.tls.cert', path: true },
  { flag: 'tls-key', key: 'security.tls.key', path: true },
  ...CHAP_FLAGS,
  ...ISCSI_FLAGS,
  ...COMMON_FLAGS,
];

/**
 * Registers `tabula agent`. `sub` lets admin subcommands (`tabula agent ls`)
 * live under the same word; the daemon's options are therefore checked in
 * its handler rather than demanded by yargs.
 */
export function agentCommand(y: Argv, sub?: (a: Argv) => Argv): Argv {
  return y.command<AgentArgs>(
    'agent',
    'run the agent daemon: serve exported vdisks over iSCSI from local containers',
    (a) => {
      const b = daemonOptions(
        a
          .option('controller', { type: 'string', describe: 'controller address HOST:PORT (or TABULA_CONTROLLER)' })
          .option('name', { type: 'string', describe: 'agent name, unique per agent ([A-Za-z0-9._-]{1,64})' })
          .option('portal', { type: 'string', array: true, describe: 'iSCSI portal HOST:PORT to listen on (repeatable)' })
          .option('containers', { type: 'string', array: true, describe: 'container locators: globs of files or block devices, iscsi:// URLs' })
          .option('host-id', { type: 'string', describe: 'the host this agent runs on (default: /etc/machine-id, else the host name)' })
          .option('rescan-interval', { type: 'number', describe: 'seconds between container rescans, 0 = off (default 60; also on SIGHUP and container add)' })
          .option('hold-timeout', { type: 'number', describe: "seconds a faulted I/O is held before NOT READY (default: the controller's, 10)" })
          .option('controller-ca', { type: 'string', describe: "CA of the controller's certificate: connect with TLS" })
          .option('tls-cert', { type: 'string', describe: 'client certificate for a controller that requires one (mutual TLS)' })
          .option('tls-key', { type: 'string', describe: 'its private key' })
          .option('metrics-listen', { type: 'string', describe: 'Prometheus /metrics on HOST:PORT, :PORT or PORT (loopback)' }),
      );
      const c = chapOptions(iscsiClientFlags(b));
      return (sub ? sub(c) : c) as unknown as Argv<AgentArgs>;
    },
    async (args) => {
      const hold = args['hold-timeout'];
      oneToken(args);
      chapSecrets(args as unknown as Record<string, unknown>);
      iscsiSecretFile(args as unknown as Record<string, unknown>);
      const load = commandLoader({
        role: 'agent',
        specs: AGENT_FLAGS,
        args: args as unknown as Record<string, unknown>,
        file: args.config,
        requiredWithoutFile: {
          'controller.address': 'missing --controller HOST:PORT',
          'agent.name': 'missing --name NAME',
          'agent.portals': 'missing --portal HOST:PORT',
          'agent.containers': 'missing --containers GLOB...',
        },
      });
      // One-line errors for bad values, before anything starts.
      if (args.controller !== undefined) parseHostPort(args.controller, 7360);
      for (const p of args.portal ?? []) parseHostPort(p, 3260);
      if (hold !== undefined && (!Number.isFinite(hold) || hold <= 0 || hold > 3600)) {
        throw new Error(`--hold-timeout ${hold} out of range: give seconds, more than 0 and at most 3600`);
      }
      // The daemons load only for the command that runs one (CLI start-up).
      const { runDaemon } = await import('../daemon/run.js');
      await runDaemon({ role: 'agent', load });
    },
  );
}
