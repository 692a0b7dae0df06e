// The `tabula` command line (yargs). Each subcommand lives in its own module.
import yargs from 'yargs';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { targetCommand } from './target.js';
import { agentCommand } from './agent.js';
import { agentSubcommands, systemCommands } from './commands.js';
import { configCommand } from './config.js';
import { certsCommand } from './certs.js';
import { backupCommands } from './backup.js';

/** The package version, from the nearest package.json above this module (works from src/ and dist/). */
function version(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version;
    const up = dirname(dir);
    if (up === dir) return 'unknown';
    dir = up;
  }
}

export async function main(argv: string[]): Promise<void> {
  const y = yargs(argv).scriptName('tabula');
  targetCommand(y);
  systemCommands(y);
  agentCommand(y, agentSubcommands);
  configCommand(y);
  certsCommand(y);
  backupCommands(y);
  await y
    .version(version())
    .strict()
    .demandCommand(1, 'name a command (see tabula --help)')
    .fail((msg, err) => {
      // One line on stderr naming what is wrong; usage errors exit 2, runtime errors 1.
      process.stderr.write(`tabula: ${msg ?? err?.message ?? 'error'}\n`);
      process.exit(msg ? 2 : 1);
    })
    .help()
    .parseAsync();
}
