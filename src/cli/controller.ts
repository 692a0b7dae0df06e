// `tabula controller`: the controller daemon for real deployments. Flags,
// TABULA_* environment and `--config FILE` (the appliance's YAML) are one
// configuration (src/config); SIGHUP reloads what can change while running.
import type { Argv } from 'yargs';
import { COMMON_FLAGS, commandLoader, type FlagSpec } from '../config/flags.js';
import { parseHostPort } from '../util/size.js';
import { CliError } from './admin-client.js';
import { daemonOptions, oneToken } from './daemon-flags.js';

/** Each flag and the configuration key it sets. */
export const CONTROLLER_FLAGS: readonly FlagSpec[] = [
  { flag: 'db', key: 'controller.db', path: true },
  { flag: 'listen', key: 'controller.listen' },
  { flag: 'ack-timeout', key: 'controller.ack-timeout' },
  { flag: 'hold-timeout', key: 'controller.hold-timeout' },
  { flag: 'command-timeout', key: 'controller.command-timeout' },
  { flag: 'rebuild-delay', key: 'controller.mirrors.rebuild-delay' },
  { flag: 'metrics-listen', key: 'controller.metrics-listen' },
  { flag: 'tls-cert', key: 'security.tls.cert', path: true },
  { flag: 'tls-key', key: 'security.tls.key', path: true },
  { flag: 'tls-ca', key: 'security.tls.ca', path: true },
  ...COMMON_FLAGS,
];

function checkSeconds(v: number | undefined, option: string): void {
  if (v === undefined) return;
  if (!Number.isFinite(v) || v <= 0 || v > 3600) throw new CliError(`bad ${option} ${String(v)}: give seconds, more than 0 and at most 3600`);
}

export function controllerCommand(y: Argv): Argv {
  return y.command(
    'controller',
    'run the controller daemon: the database of tables, and the agent and admin APIs',
    (a) =>
      daemonOptions(
        a
          .option('db', { type: 'string', describe: 'SQLite database file (created when missing); required without --config' })
          .option('listen', { type: 'string', describe: 'HOST:PORT for agents and admins (default 127.0.0.1:7360); beyond loopback needs a token or mutual TLS' })
          .option('tls-cert', { type: 'string', describe: "the controller's certificate (PEM); TLS on the API" })
          .option('tls-key', { type: 'string', describe: 'its private key (PEM)' })
          .option('tls-ca', { type: 'string', describe: 'CA that agent and admin certificates must chain to (mutual TLS)' })
          .option('metrics-listen', { type: 'string', describe: 'Prometheus /metrics on HOST:PORT, :PORT or PORT (loopback)' })
          .option('ack-timeout', { type: 'number', describe: 'seconds an agent has to ack a table version before it is fenced (default 3)' })
          .option('hold-timeout', { type: 'number', describe: 'seconds agents hold a faulted I/O before NOT READY (default 10)' })
          .option('command-timeout', { type: 'number', describe: 'seconds a copy or zero command may take, plus 64 ms per MiB (default 10)' })
          .option('rebuild-delay', {
            type: 'number',
            describe: "seconds a failed container's copies wait for it to come back (resync) before they are rebuilt elsewhere (default 600; 0 = at once)",
          }),
      ),
    async (args) => {
      checkSeconds(args['ack-timeout'], '--ack-timeout');
      checkSeconds(args['hold-timeout'], '--hold-timeout');
      checkSeconds(args['command-timeout'], '--command-timeout');
      oneToken(args);
      if (args.listen !== undefined) parseHostPort(args.listen, 7360);
      const load = commandLoader({
        role: 'controller',
        specs: CONTROLLER_FLAGS,
        args,
        file: args.config,
        defaultsWithoutFile: { 'controller.listen': '127.0.0.1:7360' },
        requiredWithoutFile: { 'controller.db': 'Missing required argument: db (or give --config FILE)' },
      });
      // The daemons load only for the command that runs one (CLI start-up).
      const { runDaemon } = await import('../daemon/run.js');
      await runDaemon({ role: 'controller', load });
    },
  );
}
