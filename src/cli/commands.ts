// The table-driven system's commands, registered by main.ts. (`tabula agent`
// itself lives in agent.ts; its admin subcommands come from agents.ts.)
import type { Argv } from 'yargs';
import { checkCommand } from './check.js';
import { containerCommand } from './container.js';
import { controllerCommand } from './controller.js';
import { exportCommand } from './export.js';
import { faultCommand } from './fault.js';
import { segmentCommand } from './segment.js';
import { upCommand } from './up.js';
import { vdiskCommand } from './vdisk.js';

export { agentSubcommands } from './agents.js';

export function systemCommands(y: Argv): Argv {
  for (const register of [upCommand, controllerCommand, containerCommand, vdiskCommand, exportCommand, faultCommand, segmentCommand, checkCommand]) {
    register(y);
  }
  return y;
}
