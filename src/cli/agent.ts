// `tabula agent`: the agent daemon for real deployments. Serves the vdisks the
// controller exports on this agent through its iSCSI portals, from the
// containers its globs find; keeps serving while the controller is away.
import type { Argv } from 'yargs';
import { formatAddress, startAgent } from '../agent/index.js';
import { log } from '../util/log.js';
import { parseHostPort } from '../util/size.js';
import { runUntilSignal } from './signals.js';

interface AgentArgs {
  controller?: string;
  name?: string;
  portal?: string[];
  containers?: string[];
  'hold-timeout'?: number;
  token?: string;
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined || (Array.isArray(v) && v.length === 0)) throw new Error(`missing ${what}`);
  return v;
}

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
      const b = a
        .option('controller', { type: 'string', describe: 'controller address HOST:PORT' })
        .option('name', { type: 'string', describe: 'agent name, unique per agent ([A-Za-z0-9._-]{1,64})' })
        .option('portal', { type: 'string', array: true, describe: 'iSCSI portal HOST:PORT to listen on (repeatable)' })
        .option('containers', { type: 'string', array: true, describe: 'globs of container files or block devices' })
        .option('hold-timeout', { type: 'number', describe: 'seconds a faulted I/O is held before NOT READY (default: the controller\'s, 10)' })
        .option('token', { type: 'string', describe: 'shared secret the controller requires (or TABULA_TOKEN)' });
      return (sub ? sub(b) : b) as unknown as Argv<AgentArgs>;
    },
    async (args) => {
      const controller = need(args.controller, '--controller HOST:PORT');
      parseHostPort(controller, 7360); // a one-line error for a bad address, before anything starts
      const name = need(args.name, '--name NAME');
      const portals = need(args.portal, '--portal HOST:PORT');
      const containers = need(args.containers, '--containers GLOB...');
      const hold = args['hold-timeout'];
      if (hold !== undefined && (!Number.isFinite(hold) || hold <= 0 || hold > 3600)) {
        throw new Error(`--hold-timeout ${hold} out of range: give seconds, more than 0 and at most 3600`);
      }
      const agent = await startAgent({
        controller,
        name,
        portals,
        containers,
        holdTimeoutMs: hold === undefined ? undefined : Math.round(hold * 1000),
        token: args.token ?? process.env.TABULA_TOKEN,
      });
      process.stdout.write(`agent ${agent.name} serving on ${agent.portals.map(formatAddress).join(', ')}\n`);
      await runUntilSignal(async (signal) => {
        log.info('stopping agent', { signal });
        await agent.close();
      });
    },
  );
}
