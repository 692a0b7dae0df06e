// `tabula controller`: the controller daemon for real deployments.
import type { Argv } from 'yargs';
import { log } from '../util/log.js';
import { parseHostPort } from '../util/size.js';
import { CliError } from './admin-client.js';
import { runUntilSignal } from './signals.js';

function positiveMs(v: number | undefined, option: string): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isFinite(v) || v <= 0 || v > 3600) throw new CliError(`bad ${option} ${String(v)}: give seconds, more than 0 and at most 3600`);
  return Math.round(v * 1000);
}

export function controllerCommand(y: Argv): Argv {
  return y.command(
    'controller',
    'run the controller daemon: the database of tables, and the agent and admin APIs',
    (a) =>
      a
        .option('db', { type: 'string', demandOption: true, describe: 'SQLite database file (created when missing)' })
        .option('listen', { type: 'string', default: '127.0.0.1:7360', describe: 'HOST:PORT for agents and admins; beyond loopback needs --token' })
        .option('token', { type: 'string', describe: 'shared secret every agent and admin must present (or TABULA_TOKEN)' })
        .option('ack-timeout', { type: 'number', describe: 'seconds an agent has to ack a table version before it is fenced (default 3)' })
        .option('hold-timeout', { type: 'number', describe: 'seconds agents hold a faulted I/O before NOT READY (default 10)' }),
    async (args) => {
      parseHostPort(args.listen, 7360);
      const { startController } = await import('../controller/daemon.js');
      const ctl = await startController({
        dbPath: args.db,
        listen: args.listen,
        token: args.token ?? process.env.TABULA_TOKEN,
        ackTimeoutMs: positiveMs(args['ack-timeout'], '--ack-timeout'),
        holdTimeoutMs: positiveMs(args['hold-timeout'], '--hold-timeout'),
      });
      process.stdout.write(`controller listening on ${ctl.address}\n`);
      await runUntilSignal(async (signal) => {
        log.info('stopping controller', { signal });
        await ctl.close();
      });
    },
  );
}
