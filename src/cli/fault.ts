// `tabula fault ls`: the faults agents reported and what the controller answered, newest first.
// The controller keeps the newest ones (controller.retention, docs/deploy.md); filters run there.
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

const AGO_UNITS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `--since`: an ISO 8601 time, or how long ago (`90s`, `10m`, `2h`, `7d`), as an ISO time. */
export function parseSince(v: string, now = Date.now()): string {
  const ago = /^(\d+(?:\.\d+)?)([smhd])$/.exec(v.trim());
  if (ago) return new Date(now - Number(ago[1]) * (AGO_UNITS[ago[2] as string] as number)).toISOString();
  const t = /^\d{4}-\d{2}-\d{2}/.test(v) ? Date.parse(v) : Number.NaN;
  if (Number.isNaN(t)) throw new CliError(`bad --since ${v}: give an ISO time (2026-12-01T10:00:00Z) or how long ago (90s, 10m, 2h, 7d)`);
  return new Date(t).toISOString();
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
              .option('agent', { type: 'string', describe: 'only faults this agent reported' })
              .option('outcome', { type: 'string', describe: 'only this answer: retry, fail, done, wait, error, dropped, pending' })
              .option('since', { type: 'string', describe: 'only faults since an ISO time, or since how long ago (10m, 2h, 7d)' })
              .option('limit', { type: 'number', describe: 'at most this many (default 100, at most 10000)' }),
          ),
        async (args) => {
          const limit = args.limit;
          if (limit !== undefined && (!Number.isInteger(limit) || limit < 1 || limit > 10_000)) {
            throw new CliError(`bad --limit ${String(limit)}: must be a whole number 1-10000`);
          }
          const since = args.since === undefined ? '' : parseSince(args.since);
          const r = await withAdmin(args, (s) =>
            s.call('ListFaults', { vdisk: args.vdisk ?? '', limit: limit ?? 0, agent: args.agent ?? '', outcome: args.outcome ?? '', since }),
          );
          if (args.json) printJson(r.faults);
          else print(r.faults.length === 0 ? 'no faults' : faultRows(r.faults));
        },
      )
      .demandCommand(1, 'name a fault command: ls'),
  );
}
