// `tabula fault ls`: the faults agents reported and what the controller answered, newest first.
import type { Argv } from 'yargs';
import type { FaultInfo } from '../wire/proto-types.js';
import { CliError, adminOptions, withAdmin } from './admin-client.js';
import { formatColumns, print, printJson } from './output.js';

export function faultRows(list: readonly FaultInfo[]): string {
  return formatColumns(
    ['ID', 'TIME', 'AGENT', 'VDISK', 'SEG', 'OP', 'LBA', 'BLOCKS', 'STATE', 'VERSION', 'OUTCOME', 'DETAIL'],
    list.map((f) => [f.id, f.time, f.agent, f.vdiskName || f.vdiskId, f.segment, f.op, f.lba, f.blocks, f.state, f.tableVersion, f.outcome, f.detail || '-']),
  );
}

export function faultCommand(y: Argv): Argv {
  return y.command('fault', 'faults reported by agents: ls', (c) =>
    c
      .command(
        'ls',
        'list faults, newest first',
        (a) =>
          adminOptions(
            a
              .option('vdisk', { type: 'string', describe: 'only this vdisk' })
              .option('limit', { type: 'number', describe: 'at most this many (default 100, at most 10000)' }),
          ),
        async (args) => {
          const limit = args.limit;
          if (limit !== undefined && (!Number.isInteger(limit) || limit < 1 || limit > 10_000)) {
            throw new CliError(`bad --limit ${String(limit)}: must be a whole number 1-10000`);
          }
          const r = await withAdmin(args, (s) => s.call('ListFaults', { vdisk: args.vdisk ?? '', limit: limit ?? 0 }));
          if (args.json) printJson(r.faults);
          else print(r.faults.length === 0 ? 'no faults' : faultRows(r.faults));
        },
      )
      .demandCommand(1, 'name a fault command: ls'),
  );
}
