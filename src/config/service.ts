// The systemd entry of a node: read /etc/tabula/tabula.yaml (or TABULA_CONFIG),
// prepare the disks, then run the daemon of the configured role until
// SIGTERM. One process does it all because every Node.js start costs seconds
// on a small appliance. The units name the role they run; a unit whose role is
// not the configured one refuses to start (ExecCondition in the unit checks
// first, this is the backstop).
import { log, setLogLevel } from '../util/log.js';
import { runUntilSignal } from '../cli/signals.js';
import { loadConfig } from './load.js';
import { agentOptions, applianceOptions, controllerOptions, notApplied } from './daemon-options.js';
import { prepareNode } from './prepare.js';
import { ConfigError, ROLES, type Role } from './schema.js';

export interface ServiceOptions {
  /** The role this unit runs; it must match the configuration's. */
  role: Role;
  file?: string;
}

/** Output line systemd's journal and the appliance test look for. */
export const READY_PREFIX = 'tabula: ready';

export async function runService(opts: ServiceOptions): Promise<void> {
  const { config: cfg, file } = loadConfig({ file: opts.file });
  setLogLevel(cfg.logLevel);
  if (cfg.role !== opts.role) {
    throw new ConfigError(file ?? 'configuration', [`role: the configuration says '${cfg.role}'; this service runs '${opts.role}'`]);
  }
  for (const n of notApplied(cfg)) log.warn(`config: ${n}`);
  await prepareNode(cfg);

  let close: () => Promise<void>;
  let ready: string;
  if (cfg.role === 'controller') {
    const { startController } = await import('../controller/daemon.js');
    const ctl = await startController(controllerOptions(cfg));
    close = () => ctl.close();
    ready = `controller listening on ${ctl.address}`;
  } else if (cfg.role === 'agent') {
    const { startAgent, formatAddress } = await import('../agent/index.js');
    const o = agentOptions(cfg);
    let credentials;
    if (o.tls) {
      const grpc = await import('@grpc/grpc-js');
      credentials = grpc.credentials.createSsl(o.tls.ca ?? null, o.tls.key, o.tls.cert);
    }
    const agent = await startAgent({ ...o, credentials });
    close = () => agent.close();
    ready = `agent ${agent.name} serving on ${agent.portals.map(formatAddress).join(', ')}, controller ${o.controller}`;
  } else {
    const { startAppliance } = await import('../cli/appliance.js');
    const app = await startAppliance(applianceOptions(cfg));
    close = () => app.close();
    ready = `all-in-one serving ${app.url}, controller on ${app.controller.address}`;
  }
  log.info(`${READY_PREFIX}: ${ready}`);
  // stdout goes to the console too (the unit's StandardOutput), for whoever watches the boot.
  process.stdout.write(`${READY_PREFIX}: ${ready}\n`);
  await runUntilSignal(async (signal) => {
    log.info(`stopping ${cfg.role}`, { signal });
    await close();
  });
}

/** `node service-main.js ROLE [CONFIG]`: exit 1 with a one-line reason on failure. */
export async function serviceMain(argv: string[]): Promise<void> {
  const [role, file] = argv;
  if (!(ROLES as readonly string[]).includes(role ?? '')) {
    process.stderr.write(`usage: service-main.js ${ROLES.join('|')} [CONFIG_FILE]\n`);
    process.exit(2);
  }
  try {
    await runService({ role: role as Role, file });
    process.exit(0);
  } catch (e) {
    process.stderr.write(`tabula ${role}: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
