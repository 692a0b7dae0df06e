// The `tabula` command line (yargs). Each subcommand lives in its own module.
import yargs from 'yargs';
import { readFileSync } from 'node:fs';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName('tabula')
    .version(version())
    .strict()
    .demandCommand(1, 'name a command (see tabula --help)')
    .fail((msg, err) => {
      process.stderr.write(`tabula: ${msg ?? err?.message ?? 'error'}\n`);
      process.exit(2);
    })
    .help()
    .parseAsync();
}
