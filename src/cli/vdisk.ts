// `tabula vdisk create|ls|show|rm|resize|table|snapshot|clone`, the
// migration verbs (`migrate`, `migrate-status`, `migrate-cancel`) and the
// mirror verbs (`set-copies`, `repair`) over the admin API.
import type { Argv } from 'yargs';
import type { ExportInfo, VdiskInfo } from '../wire/proto-types.js';
import { formatSize, parseSize } from '../util/size.js';
import { CliError, adminOptions, quietLogs, withAdmin } from './admin-client.js';
import { migrationLine, migrationRows, requireDone, waitMigrations } from './migration-progress.js';
import { healthLine, healthText, waitRebuild } from './mirror-progress.js';
import { formatColumns, formatFields, print, printJson, sizeWithShare, tableJson } from './output.js';

const BLOCK_SIZES = [512, 4096];
const VERBS = 'create, ls, show, rm, resize, table, snapshot, clone, migrate, migrate-status, migrate-cancel, set-copies, repair';

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
  // HEALTH only once some vdisk is mirrored (or not healthy), COPIES once some vdisk is mirrored: one-copy listings stay as they were.
  const health = list.some((v) => v.health != null && (v.health.copies > 1 || healthText(v.health) !== 'healthy'));
  const copies = list.some((v) => (v.copies ?? 1) > 1);
  const head = ['NAME', 'KIND', 'PROVISIONED', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'TYPE', 'BLOCK', 'SEGMENT', 'VERSION', ...(health ? ['HEALTH'] : []), 'EXPORTS'];
  if (copies) head.splice(7, 0, 'COPIES');
  return formatColumns(
    head,
    list.map((v) => [
      v.name,
      kindText(v),
      formatSize(v.size),
      sizeWithShare(v.allocatedBytes, v.size),
      formatSize(v.sharedBytes),
      formatSize(v.exclusiveBytes),
      v.thin ? 'thin' : 'thick',
      ...(copies ? [v.copies ?? 1] : []),
      v.blockSize,
      formatSize(v.segmentSize),
      v.version,
      ...(health ? [healthText(v.health)] : []),
      exportsText(v.exports),
    ]),
  );
}

/** `vdisk`, `snapshot of disk0`, `clone of snap1`. */
function kindText(v: VdiskInfo): string {
  if (v.kind === 'snapshot') return v.parent ? `snapshot of ${v.parent}` : 'snapshot';
  return v.parent ? `clone of ${v.parent}` : 'vdisk';
}

export function vdiskDetail(v: VdiskInfo): string {
  return formatFields([
    ['name', v.name],
    ['id', v.id],
    ['kind', `${kindText(v)}${v.kind === 'snapshot' ? ' (read-only)' : ''}`],
    ['provisioned', `${formatSize(v.size)} (${v.size} bytes)`],
    ['allocated', `${sizeWithShare(v.allocatedBytes, v.size)}, ${v.segmentsAllocated} of ${v.segmentCount} segments`],
    ['shared', `${formatSize(v.sharedBytes)} (with snapshots and clones)`],
    ['exclusive', formatSize(v.exclusiveBytes)],
    ['type', v.thin ? 'thin' : 'thick'],
    ['copies', v.copies ?? 1],
    ['block size', v.blockSize],
    ['segment size', formatSize(v.segmentSize)],
    ['table version', v.version],
    ['segment states', statesText(v.states) || '-'],
    ['created', v.created],
    ['exports', exportsText(v.exports)],
    ['migration', v.migration ? migrationLine(v.migration) : '-'],
    ['health', healthLine(v.health)],
  ]);
}

export function vdiskCommand(y: Argv): Argv {
  return y.command('vdisk', `virtual disks: ${VERBS}`, (c) => {
    c.command(
      'create <name>',
      'create a vdisk (thin unless --thick; mirrored with --copies)',
      (a) =>
        adminOptions(
          a
            .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name' })
            .option('size', { type: 'string', demandOption: true, describe: 'size with a unit (e.g. 10GiB)' })
            .option('block-size', { type: 'string', describe: 'logical block size: 512 (default) or 4096' })
            .option('segment-size', { type: 'string', describe: 'segment size, a power of two (default 1MiB)' })
            .option('thick', { type: 'boolean', default: false, describe: 'allocate every segment now' })
            .option('copies', {
              type: 'number',
              default: 1,
              describe: 'copies of each segment, in distinct failure domains (1-3); a thick vdisk needs that many domains with room now',
            }),
        ),
      async (args) => {
        quietLogs();
        const size = parseSize(args.size);
        const blockSize = parseBlockSize(args['block-size']);
        const segmentSize = args['segment-size'] === undefined ? undefined : parseSize(args['segment-size']);
        const copies = args.copies;
        if (!Number.isInteger(copies) || copies < 1 || copies > 3) throw new CliError(`bad --copies ${String(copies)}: must be 1, 2 or 3`);
        const v = await withAdmin(args, (s) =>
          s.call('CreateVdisk', { name: args.name, size, blockSize, segmentSize, thick: args.thick, ...(copies === 1 ? {} : { copies }) }),
        );
        if (args.json) printJson(v);
        else {
          const mirrored = (v.copies ?? 1) > 1 ? `, ${v.copies} copies` : '';
          print(
            `vdisk ${v.name} created: ${formatSize(v.size)} ${v.thin ? 'thin' : 'thick'}${mirrored}, ${v.segmentCount} segments of ${formatSize(v.segmentSize)}, block size ${v.blockSize}`,
          );
        }
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
        'resize <name> [size]',
        'grow a vdisk online (exporting agents raise CAPACITY DATA HAS CHANGED); shrink an unexported one with --force',
        (a) =>
          adminOptions(
            a
              .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .positional('size', { type: 'string', describe: 'new size with a unit (or --size)' })
              .option('size', { type: 'string', describe: 'new size with a unit' })
              .option('force', { type: 'boolean', default: false, describe: 'allow shrinking (discards the segments past the new end; the vdisk must not be exported)' }),
          ),
        async (args) => {
          quietLogs();
          const given = args.size;
          if (given === undefined) throw new CliError(`vdisk resize ${args.name}: give the new size (e.g. tabula vdisk resize ${args.name} 20GiB)`);
          const size = parseSize(given);
          const v = await withAdmin(args, async (s) => {
            const cur = await s.call('ShowVdisk', { name: args.name });
            if (size < cur.size && !args.force) {
              throw new CliError(
                `vdisk ${cur.name}: ${formatSize(size)} is smaller than its ${formatSize(cur.size)}; shrinking is not supported without --force (it discards data, and the vdisk must not be exported)`,
              );
            }
            return s.call('ResizeVdisk', { name: args.name, size, force: args.force });
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
    shareCommands(c);
    migrateCommands(c);
    mirrorCommands(c);
    return c.demandCommand(1, `name a vdisk command: ${VERBS}`);
  });
}

/** `snapshot` and `clone`: new tables sharing the source's segments. */
function shareCommands(c: Argv): void {
  c.command(
    'snapshot <name> <snapshot>',
    'read-only point-in-time copy of a vdisk (no data copied; returns once every exporting agent has the frozen table)',
    (a) =>
      adminOptions(
        a
          .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
          .positional('snapshot', { type: 'string', demandOption: true, describe: 'name of the new snapshot' }),
      ),
    async (args) => {
      const v = await withAdmin(args, (s) => s.call('SnapshotVdisk', { vdisk: args.name, name: args.snapshot }));
      if (args.json) printJson(v);
      else print(`snapshot ${v.name} of vdisk ${v.parent || args.name} created: ${formatSize(v.size)}, shares ${formatSize(v.sharedBytes)}`);
    },
  ).command(
    'clone <source> <name>',
    'writable copy of a snapshot or vdisk, sharing its segments (copy-on-write)',
    (a) =>
      adminOptions(
        a
          .positional('source', { type: 'string', demandOption: true, describe: 'snapshot or vdisk, name or id' })
          .positional('name', { type: 'string', demandOption: true, describe: 'name of the new vdisk' }),
      ),
    async (args) => {
      const v = await withAdmin(args, (s) => s.call('CloneVdisk', { source: args.source, name: args.name }));
      if (args.json) printJson(v);
      else print(`vdisk ${v.name} cloned from ${v.parent || args.source}: ${formatSize(v.size)}, shares ${formatSize(v.sharedBytes)}`);
    },
  );
}

/** `migrate`, `migrate-status` (alias `migration`), `migrate-cancel`. */
function migrateCommands(c: Argv): void {
  c.command(
    'migrate <name>',
    'move a vdisk online to another container, segment by segment; --wait follows it',
    (a) =>
      adminOptions(
        a
          .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
          .option('to', { type: 'string', demandOption: true, describe: 'target container UUID or unique prefix' })
          .option('wait', { type: 'boolean', default: false, describe: 'follow the progress until the migration ends (exit 1 unless it is done)' }),
      ),
    async (args) => {
      const list = await withAdmin(args, async (s) => {
        const m = await s.call('MigrateVdisk', { vdisk: args.name, toContainer: args.to });
        if (!args.wait) return [m];
        if (!args.json) print(`migration of vdisk ${m.vdiskName} started: ${m.segmentsTotal} segments to move`);
        return waitMigrations(s, [m.vdiskId], { out: args.json ? undefined : process.stdout });
      });
      if (args.json) printJson(list[0]);
      else if (!args.wait) print(`migration started: ${migrationLine(list[0]!)}`);
      if (args.wait) requireDone(list);
    },
  )
    .command(
      ['migrate-status [name]', 'migration [name]'],
      'progress of a vdisk\'s latest migration (percent, MB/s, ETA), or of every migration',
      (a) =>
        adminOptions(
          a
            .positional('name', { type: 'string', describe: 'vdisk name or id; all migrations when omitted' })
            .option('wait', { type: 'boolean', default: false, describe: 'follow until it ends (exit 1 unless it is done)' }),
        ),
      async (args) => {
        if (args.name === undefined) {
          if (args.wait) throw new CliError('migrate-status --wait needs a vdisk name');
          const r = await withAdmin(args, (s) => s.call('ListMigrations', {}));
          if (args.json) printJson(r.migrations);
          else print(r.migrations.length === 0 ? 'no migrations' : migrationRows(r.migrations));
          return;
        }
        const name = args.name;
        const list = await withAdmin(args, async (s) => {
          if (!args.wait) return [await s.call('GetMigration', { vdisk: name })];
          return waitMigrations(s, [name], { out: args.json ? undefined : process.stdout });
        });
        if (args.json) printJson(list[0]);
        else if (!args.wait) print(migrationLine(list[0]!));
        if (args.wait) requireDone(list);
      },
    )
    .command(
      'migrate-cancel <name>',
      'stop a running migration after the segments in progress (moved segments stay moved)',
      (a) => adminOptions(a.positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })),
      async (args) => {
        const m = await withAdmin(args, (s) => s.call('CancelMigration', { vdisk: args.name }));
        if (args.json) printJson(m);
        else print(migrationLine(m));
      },
    );
}

/** `set-copies` and `repair`: mirrored vdisks' copies, rebuilt online. */
function mirrorCommands(c: Argv): void {
  c.command(
    'set-copies <name> <copies>',
    'change the copies of a vdisk online: more rebuilds every allocated segment with new legs in other failure domains, fewer removes the last legs; --wait follows the rebuild',
    (a) =>
      adminOptions(
        a
          .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
          .positional('copies', { type: 'number', demandOption: true, describe: '1, 2 or 3' })
          .option('wait', { type: 'boolean', default: false, describe: 'follow the rebuild until it ends (exit 1 unless the vdisk is healthy)' }),
      ),
    async (args) => {
      const copies = args.copies;
      if (!Number.isInteger(copies) || copies < 1 || copies > 3) throw new CliError(`bad copies ${String(copies)}: give 1, 2 or 3`);
      const v = await withAdmin(args, async (s) => {
        const r = await s.call('SetVdiskCopies', { name: args.name, copies });
        if (!args.wait) return r;
        if (!args.json) print(`vdisk ${r.name} now has ${copies} cop${copies === 1 ? 'y' : 'ies'}: ${healthLine(r.health)}`);
        return waitRebuild(s, r.id, { out: args.json ? undefined : process.stdout });
      });
      if (args.json) printJson(v);
      else if (!args.wait) print(`vdisk ${v.name} now has ${copies} cop${copies === 1 ? 'y' : 'ies'}: ${healthLine(v.health)}`);
    },
  ).command(
    'repair <name>',
    'restore redundancy now: drop stale legs (without waiting for the rebuild delay) and rebuild degraded segments; --wait follows it',
    (a) =>
      adminOptions(
        a
          .positional('name', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
          .option('wait', { type: 'boolean', default: false, describe: 'follow the rebuild until it ends (exit 1 unless the vdisk is healthy)' }),
      ),
    async (args) => {
      const v = await withAdmin(args, async (s) => {
        const r = await s.call('RepairVdisk', { name: args.name });
        if (!args.wait) return r;
        return waitRebuild(s, r.id, { out: args.json ? undefined : process.stdout });
      });
      if (args.json) printJson(v);
      else if (!args.wait) print(`vdisk ${v.name}: ${healthLine(v.health)}`);
    },
  );
}
