// `tabula restore FILE --db PATH`: puts a backup in place as the database of
// a stopped controller. Checks FILE (a Tabula database this version can
// run), refuses while a controller has PATH open, keeps the database it
// replaces next to it.
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { CliError, quietLogs } from './admin-client.js';
import { describeSummary } from './database-summary.js';
import { print, printJson } from './output.js';

interface RestoreArgs {
  file: string;
  db: string;
  force: boolean;
  json: boolean;
}

export function restoreCommand(y: Argv): Argv {
  return y.command<RestoreArgs>(
    'restore <file>',
    'restore a backup as the database of a stopped controller',
    (a) =>
      a
        .positional('file', { type: 'string', demandOption: true, describe: 'backup made by tabula backup' })
        .option('db', { type: 'string', demandOption: true, describe: 'controller database to restore into (the controller must be stopped)' })
        .option('force', { type: 'boolean', default: false, describe: 'replace an existing database (kept as PATH.before-restore-TIME)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' }) as unknown as Argv<RestoreArgs>,
    async (args) => {
      quietLogs();
      const { restoreDatabase, DatabaseFileError } = await import('../controller/backup.js');
      let r;
      try {
        r = await restoreDatabase(resolve(args.file), resolve(args.db), { force: args.force });
      } catch (err) {
        if (err instanceof DatabaseFileError) throw new CliError(err.message);
        throw err;
      }
      if (args.json) printJson({ ...r.summary, from: resolve(args.file), previous: r.previous });
      else {
        print(`restored ${resolve(args.file)} into ${r.summary.path}: ${describeSummary(r.summary)}`);
        if (r.previous !== null) print(`the database it replaced is kept as ${r.previous}`);
      }
    },
  );
}
