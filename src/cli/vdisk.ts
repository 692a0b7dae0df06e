// `tabula vdisk create|ls|show|rm|resize|table` over the admin API, and the
// names of the operations issue 4 brings (snapshot, clone, migrate), which
// answer that they are not there yet rather than "unknown command".
import type { Argv } from 'yargs';
import type { ExportInfo, VdiskInfo } from '../wire/proto-types.js';
import { formatSize, parseSize } from '../util/size.js';
import { CliError, adminOptions, quietLogs, withAdmin } from './admin-client.js';
import { formatColumns, formatFields, print, printJson, sizeWithShare, tableJson } from './output.js';

const BLOCK_SIZES = [512, 4096];

function parseBlockSize(v: string | number | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'number' ? v : parseSize(v);
  if (!BLOCK_SIZES.includes(n)) throw new CliError(`bad --block-size ${String(v)}: must be 512 or 4096`);
  return n;
}

function exportsText(list: readonly ExportInfo[]): string {
  return list.length === 0 ? '-' : list.map((e) => `${e.agent}:${e.targetIqn}/${e.lun}`).join(', ');
}

function statesText(states: Record<string, number>): string {
  return Object.entries(states)
    .filter(([, n]) => n > 0)
    .map(([s, n]) => `${s}=${n}`)
    .join(' ');
}

export function vdiskRows(list: readonly VdiskInfo[]): string {
  return formatColumns(
    ['NAME', 'PROVISIONED', 'ALLOCATED', 'TYPE', 'BLOCK', 'SEGMENT', 'VERSION', 'EXPORTS'],
    list.map((v) => [
      v.name,
      formatSize(v.size),
      sizeWithShare(v.allocatedBytes, v.size),
      v.thin ? 'thin' : 'thick',
      v.blockSize,
      formatSize(v.segmentSize),
      v.version,
      exportsText(v.exports),
    ]),
  );
}

export function vdiskDetail(v: VdiskInfo): string {
  return formatFields([
    ['name', v.name],
    ['id', v.id],
    ['provisioned', `${formatSize(v.size)} (${v.size} bytes)`],
    ['allocated', `${sizeWithShare(v.allocatedBytes, v.size)}, ${v.segmentsAllocated} of ${v.segmentCount} segments`],
    ['type', v.thin ? 'thin' : 'thick'],
    ['block size', v.blockSize],
    ['segment size', formatSize(v.segmentSize)],
    ['table version', v.version],
    ['segment states', statesText(v.states) || '-'],
    ['created', v.created],
    ['exports', exportsText(v.exports)],
  ]);
}

function notYet(y: Argv, name: string, what: string): Argv {
  return y.command(
    `${name} <name> [args..]`,
    `${what} (not implemented yet)`,
    (a) => adminOptions(a).strict(false),
    async () => {
      throw new CliError(`vdisk ${name} is not implemented yet (planned in issue 4)`);
    },
  );
}

export function vdiskCommand(y: Argv): Argv {
  return y.command('vdisk', 'virtual disks: create, ls, show, rm, resize, table', (c) => {
    c.command(
      'create <name>',
      'create a vdisk (thin unless --thick)',
      (a) =>
        adminOptions(
          a
            .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name' })
            .option('size', { type: 'string', demandOption: true, describe: 'size with a unit (e.g. 10GiB)' })
            .option('block-size', { type: 'string', describe: 'logical block size: 512 (default) or 4096' })
            .option('segment-size', { type: 'string', describe: 'segment size, a power of two (default 1MiB)' })
            .option('thick', { type: 'boolean', default: false, describe: 'allocate every segment now' }),
        ),
      async (args) => {
        quietLogs();
        const size = parseSize(args.size);
        const blockSize = parseBlockSize(args['block-size']);
        const segmentSize = args['segment-size'] === undefined ? undefined : parseSize(args['segment-size']);
        const v = await withAdmin(args, (s) => s.call('CreateVdisk', { name: args.name, size, blockSize, segmentSize, thick: args.thick }));
        if (args.json) printJson(v);
        else print(`vdisk ${v.name} created: ${formatSize(v.size)} ${v.thin ? 'thin' : 'thick'}, ${v.segmentCount} segments of ${formatSize(v.segmentSize)}, block size ${v.blockSize}`);
      },
    )
      .command(
        'ls',
        'list vdisks: provisioned vs allocated',
        (a) => adminOptions(a),
        async (args) => {
          const r = await withAdmin(args, (s) => s.call('ListVdisks', {}));
          if (args.json) printJson(r.vdisks);
          else print(r.vdisks.length === 0 ? 'no vdisks' : vdiskRows(r.vdisks));
        },
      )
      .command(
        'show <name>',
        'show one vdisk',
        (a) => adminOptions(a.positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })),
        async (args) => {
          const v = await withAdmin(args, (s) => s.call('ShowVdisk', { name: args.name }));
          if (args.json) printJson(v);
          else print(vdiskDetail(v));
        },
      )
      .command(
        'rm <name>',
        'remove a vdisk that is not exported (frees its segments)',
        (a) => adminOptions(a.positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })),
        async (args) => {
          await withAdmin(args, (s) => s.call('RemoveVdisk', { name: args.name }));
          if (args.json) printJson({ removed: args.name });
          else print(`vdisk ${args.name} removed`);
        },
      )
      .command(
        'resize <name>',
        'grow a vdisk (new segments are zero, or allocated when thick)',
        (a) =>
          adminOptions(
            a
              .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .option('size', { type: 'string', demandOption: true, describe: 'new size with a unit' })
              .option('force', { type: 'boolean', default: false, describe: 'accepted for scripts; shrinking is refused regardless' }),
          ),
        async (args) => {
          quietLogs();
          const size = parseSize(args.size);
          const v = await withAdmin(args, async (s) => {
            const cur = await s.call('ShowVdisk', { name: args.name });
            if (size < cur.size) {
              throw new CliError(`vdisk ${cur.name}: ${formatSize(size)} is smaller than its ${formatSize(cur.size)}; shrinking is not supported${args.force ? ' (not even with --force)' : ''}`);
            }
            return s.call('ResizeVdisk', { name: args.name, size });
          });
          if (args.json) printJson(v);
          else print(`vdisk ${v.name} is now ${formatSize(v.size)} (${v.segmentCount} segments), table version ${v.version}`);
        },
      )
      .command(
        'table <name>',
        'print the mapping table as extents: FIRST-LAST STATE [c=CONTAINER off=OFFSET]',
        (a) =>
          adminOptions(
            a
              .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .option('full-ids', { type: 'boolean', default: false, describe: 'whole container UUIDs' }),
          ),
        async (args) => {
          const t = await withAdmin(args, (s) => s.call('GetTable', { name: args.name, fullIds: args['full-ids'] }));
          if (args.json) printJson(tableJson(t));
          else print(t.text);
        },
      );
    notYet(c, 'snapshot', 'snapshot a vdisk');
    notYet(c, 'clone', 'clone a vdisk');
    notYet(c, 'migrate', 'move a vdisk to other containers');
    return c.demandCommand(1, 'name a vdisk command: create, ls, show, rm, resize, table');
  });
}
