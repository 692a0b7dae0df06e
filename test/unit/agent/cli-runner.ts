// Runs `tabula agent` from source (tsx) the way src/cli/main.ts does, without
// main's package.json lookup, which only resolves from the compiled dist/.
import yargs from 'yargs';
import { agentCommand } from '../../../src/cli/agent.js';

const y = yargs(process.argv.slice(2)).scriptName('tabula');
agentCommand(y);
await y
  .strict()
  .demandCommand(1)
  .fail((msg, err) => {
    process.stderr.write(`tabula: ${msg ?? err?.message ?? 'error'}\n`);
    process.exit(msg ? 2 : 1);
  })
  .parseAsync();
