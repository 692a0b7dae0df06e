// The systemd entry of a node: read /etc/tabula/tabula.yaml (or TABULA_CONFIG),
// prepare the disks, then run the daemon of the configured role until
// SIGTERM. One process does it all because every Node.js start costs seconds
// on a small appliance. The units name the role they run; a unit whose role is
// not the configured one refuses to start (ExecCondition in the unit checks
// first, this is the backstop).
import { log } from '../util/log.js';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { ConfigError, ROLES, type Role } from '../config/schema.js';
import { runDaemon } from './run.js';

export interface ServiceOptions {
  /** The role this unit runs; it must match the configuration's. */
  role: Role;
  file?: string;
}

/** Output line systemd's journal and the appliance test look for. */
export const READY_PREFIX = 'tabula: ready';

export async function runService(opts: ServiceOptions): Promise<void> {
  // The same path as `tabula controller|agent|up --config FILE`, plus disk preparation; SIGHUP reloads.
  const load = (): LoadedConfig => {
    const l = loadConfig({ file: opts.file });
    // Unlike a command, a unit does not make the file's role its own: a node runs the role its file names.
    if (l.config.role !== opts.role) {
      throw new ConfigError(l.file ?? 'configuration', [`role: the configuration says '${l.config.role}'; this service runs '${opts.role}'`]);
    }
    return l;
  };
  await runDaemon({
    role: opts.role,
    load,
    prepare: true,
    ready: ({ summary }) => {
      log.info(`${READY_PREFIX}: ${summary}`);
      // stdout goes to the console too (the unit's StandardOutput), for whoever watches the boot.
      process.stdout.write(`${READY_PREFIX}: ${summary}\n`);
    },
  });
}

/** `node systemd-main.js ROLE [CONFIG]`: exit 1 with a one-line reason on failure. */
export async function serviceMain(argv: string[]): Promise<void> {
  const [role, file] = argv;
  if (!(ROLES as readonly string[]).includes(role ?? '')) {
    process.stderr.write(`usage: systemd-main.js ${ROLES.join('|')} [CONFIG_FILE]\n`);
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
