// `tabula backup FILE`: an online backup of the controller database, taken by
// the controller (SQLite backup API) and streamed here; FILE appears only
// once it is complete and checked (temp file, fsync, rename).
import { existsSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { AdminClient } from '../wire/grpc.js';
import { parseHostPort } from '../util/size.js';
import { CliError, adminOptions, describeCallError, quietLogs } from './admin-client.js';
import { describeSummary } from './database-summary.js';
import { print, printJson } from './output.js';
import { restoreCommand } from './restore.js';

/** Registers `tabula backup` and `tabula restore`. */
export function backupCommands(y: Argv): Argv {
  restoreCommand(y);
  return y.command(
    'backup <file>',
    'online backup of the controller database into FILE (the controller keeps serving)',
    (a) =>
      adminOptions(
        a
          .positional('file', { type: 'string', demandOption: true, describe: 'where to write the backup' })
          .option('force', { type: 'boolean', default: false, describe: 'replace FILE if it exists' }),
      ),
    async (args) => {
      quietLogs();
      const file = resolve(args.file);
      if (existsSync(file) && !args.force) throw new CliError(`${file} exists; give --force to replace it`);
      const { siblingTemp, inspectDatabase, fsyncDir } = await import('../controller/backup.js');
      const { host, port } = parseHostPort(args.controller, 7360);
      const address = `${host.includes(':') ? `[${host}]` : host}:${port}`;
      const client = new AdminClient(address, { token: args.token ?? process.env.TABULA_TOKEN });
      const tmp = siblingTemp(file, 'backup');
      let done = false;
      try {
        const fh = await open(tmp, 'wx');
        let written = 0;
        let total = -1;
        try {
          try {
            for await (const chunk of client.backup()) {
              const c = chunk as { data: Buffer; totalBytes: number };
              total = c.totalBytes;
              await fh.write(c.data, 0, c.data.length, written);
              written += c.data.length;
            }
          } catch (err) {
            throw new CliError(describeCallError(err, address));
          }
          if (total < 0 || written !== total) throw new CliError(`backup from ${address} ended after ${written} of ${total < 0 ? '?' : total} bytes`);
          await fh.sync();
        } finally {
          await fh.close();
        }
        let summary;
        try {
          summary = inspectDatabase(tmp);
        } catch (err) {
          throw new CliError(`the backup from ${address} does not check out: ${(err as Error).message}`);
        }
        await rename(tmp, file);
        fsyncDir(dirname(file));
        done = true;
        if (args.json) printJson({ ...summary, path: file, controller: address });
        else print(`backup of ${address} written to ${file}: ${describeSummary(summary)}`);
      } finally {
        client.close();
        if (!done) await rm(tmp, { force: true });
      }
    },
  );
}
