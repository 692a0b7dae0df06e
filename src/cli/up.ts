// `tabula up`: the all-in-one appliance (src/daemon/appliance.ts). Prints the iSCSI
// URL on stdout once the LUN is served, then runs until SIGINT/SIGTERM.
// Without --config it uses the embedded defaults (./data, loopback); with
// it, the file means what it means to the all-in-one systemd service.
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { COMMON_FLAGS, commandLoader, type FlagSpec } from '../config/flags.js';
import { parseSize } from '../util/size.js';
import { APPLIANCE_DEFAULTS } from '../daemon/appliance-defaults.js';
import { daemonOptions, oneToken } from './daemon-flags.js';

export const UP_FLAGS: readonly FlagSpec[] = [
  { flag: 'data', key: 'data-dir', path: true },
  { flag: 'portal', key: 'agent.portals', list: true },
  { flag: 'controller-listen', key: 'controller.listen' },
  { flag: 'size', key: 'all-in-one.size' },
  { flag: 'controller-metrics-listen', key: 'controller.metrics-listen' },
  { flag: 'agent-metrics-listen', key: 'agent.metrics-listen' },
  ...COMMON_FLAGS,
];

export function upCommand(y: Argv): Argv {
  return y.command(
    'up',
    'run everything on this machine: controller, one agent and a thin vdisk disk0 served over iSCSI',
    (a) =>
      daemonOptions(
        a
          .option('data', { type: 'string', describe: `data directory (or TABULA_DATA; default ${APPLIANCE_DEFAULTS.data})` })
          .option('portal', { type: 'string', describe: `iSCSI portal HOST:PORT (or TABULA_PORTAL; default ${APPLIANCE_DEFAULTS.portal}; port 0 picks a free one)` })
          .option('controller-listen', {
            type: 'string',
            describe: `controller API HOST:PORT (or TABULA_CONTROLLER_LISTEN; default ${APPLIANCE_DEFAULTS.controllerListen}; port 0 picks a free one)`,
          })
          .option('size', { type: 'string', describe: 'size of disk0 when created, or to grow it to (default 1GiB)' })
          .option('controller-metrics-listen', { type: 'string', describe: "the controller's Prometheus /metrics on HOST:PORT, :PORT or PORT" })
          .option('agent-metrics-listen', { type: 'string', describe: "the agent's Prometheus /metrics on HOST:PORT, :PORT or PORT" }),
      ),
    async (args) => {
      if (args.size !== undefined) parseSize(args.size); // its own one-line error
      oneToken(args);
      const load = commandLoader({
        role: 'all-in-one',
        specs: UP_FLAGS,
        args,
        file: args.config,
        defaultsWithoutFile: {
          'data-dir': resolve(APPLIANCE_DEFAULTS.data),
          'controller.listen': APPLIANCE_DEFAULTS.controllerListen,
          'agent.portals': [APPLIANCE_DEFAULTS.portal],
        },
      });
      // The daemons load only for the command that runs one (CLI start-up).
      const { runDaemon } = await import('../daemon/run.js');
      await runDaemon({ role: 'all-in-one', load });
    },
  );
}
