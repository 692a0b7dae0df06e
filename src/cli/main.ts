// The `tabula` command line (yargs). Each subcommand lives in its own module.
import yargs from 'yargs';
import { readFileSync } from 'node:fs';
import { targetCommand } from './target.js';
import { agentCommand } from './agent.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<void> {
  const y = yargs(argv).scriptName('tabula');
  targetCommand(y);
  agentCommand(y);
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
