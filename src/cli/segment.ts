// `tabula segment set-state VDISK SEG --state STATE`: admin repair and fault
// injection. SEG is one segment number or an inclusive range FIRST-LAST.
import type { Argv } from 'yargs';
import { parseSegmentState, segmentStateName } from '../table/index.js';
import { CliError, adminOptions, withAdmin } from './admin-client.js';
import { print, printJson, tableJson } from './output.js';

/** `17` or `16-31` (inclusive) → first and count. */
export function parseSegmentRange(text: string): { first: number; count: number } {
  const m = /^\s*(\d+)\s*(?:-\s*(\d+))?\s*$/.exec(text);
  if (!m) throw new CliError(`bad segment '${text}': expected a segment number or a range FIRST-LAST`);
  const first = Number(m[1]);
  const last = m[2] === undefined ? first : Number(m[2]);
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || last < first || last > 0xffffffff) {
    throw new CliError(`bad segment range '${text}': FIRST-LAST needs FIRST <= LAST`);
  }
  return { first, count: last - first + 1 };
}

export function segmentCommand(y: Argv): Argv {
  return y.command('segment', 'segments of a vdisk table: set-state', (c) =>
    c
      .command(
        'set-state <vdisk> <seg>',
        'set segments to normal, zero, no-write, invalid or error',
        (a) =>
          adminOptions(
            a
              .positional('vdisk', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .positional('seg', { type: 'string', demandOption: true, describe: 'segment number or range FIRST-LAST' })
              .option('state', { type: 'string', demandOption: true, describe: 'normal | zero | no-write | invalid | error' }),
          ),
        async (args) => {
          const { first, count } = parseSegmentRange(args.seg);
          let state;
          try {
            state = parseSegmentState(args.state);
          } catch (err) {
            throw new CliError((err as Error).message);
          }
          const t = await withAdmin(args, (s) => s.call('SetSegmentState', { vdisk: args.vdisk, first, count, state }));
          const range = count === 1 ? `segment ${first}` : `segments ${first}-${first + count - 1}`;
          if (args.json) printJson(tableJson(t));
          else print(`vdisk ${args.vdisk} ${range} set to ${segmentStateName(state)}: table version ${t.version}`);
        },
      )
      .demandCommand(1, 'name a segment command: set-state'),
  );
}
