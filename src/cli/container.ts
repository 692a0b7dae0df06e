// `tabula container init|add|ls|rm|evacuate|set-domain`. `init` works on the local file
// or device alone; the others talk to the controller. `add` reads the label
// itself so the controller learns the container's id, size and geometry from
// the disk. Either takes an iSCSI locator of one LUN instead of a path
// (iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN): the label is then read or
// written through Tabula's initiator, set up from TABULA_ISCSI_*, and what is
// printed or registered is the locator without its secret.
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { clientOptionsFromEnv, initContainer, isIscsiLocator, readContainerLabel, readIscsiLabel, redactLocator, type FoundContainer } from '../container/index.js';
import type { ContainerInfo, RemoveContainerReply } from '../wire/proto-types.js';
import { formatSize, parseSize } from '../util/size.js';
import { adminOptions, quietLogs, withAdmin } from './admin-client.js';
import { migrationLine, requireDone, waitMigrations } from './migration-progress.js';
import { formatColumns, print, printJson } from './output.js';

/** Size of the data area the controller can allocate from. */
function capacity(c: ContainerInfo): number {
  return c.segmentsTotal * c.segmentSize;
}

/** The agents that reach it; those that report it unreachable marked so. */
function agentsCell(c: ContainerInfo): string {
  if (c.agents.length === 0) return '-';
  const down = new Set((c.unreachable ?? []).map((u) => u.split(':')[0]));
  return c.agents.map((a) => (down.has(a) ? `${a}(unreachable)` : a)).join(',');
}

/** Derived failure domains (domains.ts) carry one of these prefixes; a name an admin gave does not. */
const DERIVED_DOMAIN = /^(iscsi|host|container):/;

/**
 * The DOMAIN column is shown when domains tell something: the containers
 * span more than one, or an admin named one. One container in its derived
 * domain lists as it did before mirrors.
 */
function showDomains(list: readonly ContainerInfo[]): boolean {
  const domains = list.map((c) => c.domain ?? '');
  return new Set(domains).size > 1 || domains.some((d) => d !== '' && !DERIVED_DOMAIN.test(d));
}

export function containerRows(list: readonly ContainerInfo[]): string {
  const domains = showDomains(list);
  const head = ['ID', 'PATH', 'CAPACITY', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'FREE', 'STATE', 'AGENTS'];
  if (domains) head.splice(2, 0, 'DOMAIN');
  return formatColumns(
    head,
    list.map((c) => [
      c.id,
      c.path,
      ...(domains ? [c.domain || '-'] : []),
      formatSize(capacity(c)),
      formatSize(c.segmentsUsed * c.segmentSize),
      formatSize(c.sharedBytes),
      formatSize(c.exclusiveBytes),
      formatSize((c.segmentsTotal - c.segmentsUsed) * c.segmentSize),
      c.state,
      agentsCell(c),
    ]),
  );
}

const plural = (n: number, one: string, many: string): string => `${n} ${n === 1 ? one : many}`;

/** What `container rm --dead` took off the container. */
export function deadRemovalLine(id: string, r: RemoveContainerReply): string {
  if (r.vdisks.length === 0) return `container ${id} removed (dead): no vdisk had copies on it`;
  const stale = r.staleLegs > 0 ? ` and ${plural(r.staleLegs, 'stale copy', 'stale copies')}` : '';
  return (
    `container ${id} removed (dead): ${plural(r.legs, 'copy', 'copies')}${stale} dropped from vdisk${r.vdisks.length === 1 ? '' : 's'} ${r.vdisks.join(', ')}; ` +
    'being rebuilt elsewhere (vdisk show, vdisk repair --wait)'
  );
}

/** `container evacuate` of a failed container: nothing is migrated, its stale copies are rebuilt from the others. */
export function failedEvacuationLine(id: string, segments: number, vdisks: readonly string[]): string {
  if (segments === 0) return `container ${id} failed: none of its copies waits for a rebuild`;
  const are = segments === 1 ? 'is' : 'are';
  return `container ${id} failed: ${plural(segments, 'segment', 'segments')} of ${plural(vdisks.length, 'vdisk', 'vdisks')} (${vdisks.join(', ')}) ${are} being rebuilt elsewhere (vdisk show; vdisk repair --wait follows one)`;
}

/** The label of a path (made absolute) or of the LUN a locator names (its path the locator without the secret). */
async function labelOf(path: string): Promise<FoundContainer> {
  if (isIscsiLocator(path)) return readIscsiLabel(path, clientOptionsFromEnv());
  const found = await readContainerLabel(path);
  return { ...found, path: resolve(path) };
}

export function containerCommand(y: Argv): Argv {
  return y.command('container', 'storage containers: init, add, ls, rm, evacuate, set-domain', (c) =>
    c
      .command(
        'init <path>',
        'label a file, block device or iSCSI LUN as a container (creates a sparse file when PATH is new)',
        (a) =>
          a
            .positional('path', { type: 'string', demandOption: true, describe: 'file, block device or iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN' })
            .option('size', { type: 'string', describe: "size with a unit (e.g. 100GiB); needed to create a file; default a device's or LUN's capacity" })
            .option('segment-size', { type: 'string', describe: 'allocation unit recorded in the label (default 1MiB)' })
            .option('force', { type: 'boolean', default: false, describe: 'overwrite an existing container label (its data is abandoned)' })
            .option('json', { type: 'boolean', default: false, describe: 'print the label as JSON' }),
        async (args) => {
          quietLogs();
          const size = args.size === undefined ? undefined : parseSize(args.size);
          const segmentSize = args['segment-size'] === undefined ? undefined : parseSize(args['segment-size']);
          const iscsi = isIscsiLocator(args.path) ? clientOptionsFromEnv() : undefined;
          const r = await initContainer(args.path, { size, segmentSize, force: args.force, ...(iscsi ? { iscsi } : {}) });
          const l = r.label;
          const shown = redactLocator(args.path);
          if (args.json) {
            printJson({ id: l.id, path: shown, size: l.size, dataOffset: l.dataOffset, segmentSize: l.segmentSize, created: r.created, replaced: r.replaced ?? null });
            return;
          }
          const how = r.created ? 'created' : r.replaced !== undefined ? `relabelled (replaced ${r.replaced || 'a damaged label'})` : 'labelled';
          print(`container ${l.id} ${how} at ${shown}: ${formatSize(l.size)}, data from ${formatSize(l.dataOffset)}, segments of ${formatSize(l.segmentSize)}`);
        },
      )
      .command(
        'add <path>',
        'register a labelled container with the controller',
        (a) =>
          adminOptions(
            a
              .positional('path', { type: 'string', demandOption: true, describe: 'container file, block device or iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN' })
              .option('domain', {
                type: 'string',
                describe: "failure domain: copies of a mirrored vdisk's segments go to distinct domains (default: the storage node of an iSCSI LUN, else the host of the agent that reaches it)",
              }),
          ),
        async (args) => {
          quietLogs();
          const label = await labelOf(args.path);
          const info = await withAdmin(args, (s) =>
            s.call('AddContainer', {
              id: label.id,
              path: label.path,
              size: label.size,
              dataOffset: label.dataOffset,
              segmentSize: label.segmentSize,
              ...(args.domain === undefined ? {} : { domain: args.domain }),
            }),
          );
          if (args.json) printJson(info);
          else {
            const domain = args.domain === undefined ? '' : `, failure domain ${info.domain ?? args.domain}`;
            print(`container ${info.id} added: ${formatSize(capacity(info))} in ${info.segmentsTotal} segments of ${formatSize(info.segmentSize)}${domain}`);
          }
        },
      )
      .command(
        'ls',
        'list containers: capacity, allocated (shared + exclusive), free',
        (a) => adminOptions(a),
        async (args) => {
          const r = await withAdmin(args, (s) => s.call('ListContainers', {}));
          if (args.json) printJson(r.containers);
          else print(r.containers.length === 0 ? 'no containers' : containerRows(r.containers));
        },
      )
      .command(
        'rm <id>',
        'unregister an empty container (UUID or unique prefix); --dead: one gone for good, its copies rebuilt elsewhere',
        (a) =>
          adminOptions(
            a.positional('id', { type: 'string', demandOption: true, describe: 'container UUID or unique prefix' }).option('dead', {
              type: 'boolean',
              default: false,
              describe: "the container is gone for good: remove its copies (legs) from mirrored vdisks and rebuild them elsewhere (refused while it holds a segment's only copy)",
            }),
          ),
        async (args) => {
          const r = await withAdmin(args, (s) => s.call('RemoveContainer', { id: args.id, ...(args.dead ? { dead: true } : {}) }));
          if (args.json) printJson(args.dead ? { removed: args.id, dead: true, vdisks: r.vdisks, legs: r.legs, staleLegs: r.staleLegs } : { removed: args.id });
          else print(args.dead ? deadRemovalLine(args.id, r) : `container ${args.id} removed`);
        },
      )
      .command(
        'evacuate <id>',
        'stop allocating on a container and migrate every segment on it elsewhere, online; --wait follows it',
        (a) =>
          adminOptions(
            a
              .positional('id', { type: 'string', demandOption: true, describe: 'container UUID or unique prefix' })
              .option('wait', { type: 'boolean', default: false, describe: 'follow the migrations until they end (exit 1 unless all are done)' }),
          ),
        async (args) => {
          const { list, rebuilding } = await withAdmin(args, async (s) => {
            const r = await s.call('EvacuateContainer', { id: args.id });
            // A failed container cannot be read: its copies are rebuilt from the other legs, not migrated.
            if (r.failed === true) return { list: [], rebuilding: { segments: r.rebuildingSegments ?? 0, vdisks: r.rebuildingVdisks ?? [] } };
            if (!args.wait || r.migrations.length === 0) return { list: r.migrations, rebuilding: null };
            if (!args.json) print(`container ${args.id} draining: migrating ${r.migrations.length} vdisk${r.migrations.length === 1 ? '' : 's'} off it`);
            const done = await waitMigrations(
              s,
              r.migrations.map((m) => m.vdiskId),
              { out: args.json ? undefined : process.stdout },
            );
            return { list: done, rebuilding: null };
          });
          if (rebuilding !== null) {
            if (args.json) printJson({ failed: true, rebuildingSegments: rebuilding.segments, rebuildingVdisks: rebuilding.vdisks, migrations: [] });
            else print(failedEvacuationLine(args.id, rebuilding.segments, rebuilding.vdisks));
            return;
          }
          if (args.json) printJson(list);
          else if (list.length === 0) print(`container ${args.id} draining: no vdisk has segments on it`);
          else if (!args.wait) print([`container ${args.id} draining:`, ...list.map(migrationLine)].join('\n'));
          if (args.wait) requireDone(list);
        },
      )
      .command(
        'set-domain <id> <domain>',
        'set a container\'s failure domain ("" = derived again); segments placed already stay where they are',
        (a) =>
          adminOptions(
            a
              .positional('id', { type: 'string', demandOption: true, describe: 'container UUID or unique prefix' })
              .positional('domain', { type: 'string', demandOption: true, describe: 'failure domain name, or "" for the derived one' }),
          ),
        async (args) => {
          const info = await withAdmin(args, (s) => s.call('SetContainerDomain', { id: args.id, domain: args.domain }));
          if (args.json) printJson(info);
          else print(`container ${info.id} failure domain ${info.domain ?? args.domain}`);
        },
      )
      .demandCommand(1, 'name a container command: init, add, ls, rm, evacuate, set-domain'),
  );
}

