// `tabula up`: the all-in-one appliance (see appliance.ts). Prints the iSCSI
// URL on stdout once the LUN is served, then runs until SIGINT/SIGTERM.
import type { Argv } from 'yargs';
import { log } from '../util/log.js';
import { parseSize } from '../util/size.js';
import { APPLIANCE_DEFAULTS } from './appliance-defaults.js';
import { runUntilSignal } from './signals.js';

export function upCommand(y: Argv): Argv {
  return y.command(
    'up',
    'run everything on this machine: controller, one agent and a thin vdisk disk0 served over iSCSI',
    (a) =>
      a
        .option('data', { type: 'string', default: process.env.TABULA_DATA ?? APPLIANCE_DEFAULTS.data, describe: 'data directory (or TABULA_DATA)' })
        .option('portal', {
          type: 'string',
          default: process.env.TABULA_PORTAL ?? APPLIANCE_DEFAULTS.portal,
          describe: 'iSCSI portal HOST:PORT (or TABULA_PORTAL; port 0 picks a free one)',
        })
        .option('controller-listen', {
          type: 'string',
          default: process.env.TABULA_CONTROLLER_LISTEN ?? APPLIANCE_DEFAULTS.controllerListen,
          describe: 'controller API HOST:PORT (or TABULA_CONTROLLER_LISTEN; port 0 picks a free one)',
        })
        .option('size', { type: 'string', describe: 'size of disk0 when created, or to grow it to (default 1GiB)' })
        .option('token', { type: 'string', describe: 'shared secret for the controller API (or TABULA_TOKEN)' }),
    async (args) => {
      const size = args.size === undefined ? undefined : parseSize(args.size);
      // Loaded here so that admin commands do not pay for the daemons' modules.
      const { startAppliance } = await import('./appliance.js');
      const app = await startAppliance({
        data: args.data,
        portal: args.portal,
        controllerListen: args['controller-listen'],
        size,
        token: args.token ?? process.env.TABULA_TOKEN,
      });
      log.info(`tabula up: controller on ${app.controller.address}, data in ${app.dataDir}`);
      process.stdout.write(`${app.url}\n`);
      await runUntilSignal(async (signal) => {
        log.info('stopping tabula up', { signal });
        await app.close();
      });
    },
  );
}
