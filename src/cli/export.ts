// `tabula export add|ls|rm`: which agents serve a vdisk, under which target and LUN.
import type { Argv } from 'yargs';
import type { ExportInfo } from '../wire/proto-types.js';
import { CliError, adminOptions, withAdmin } from './admin-client.js';
import { formatColumns, print, printJson } from './output.js';

export function exportRows(list: readonly ExportInfo[]): string {
  return formatColumns(
    ['VDISK', 'AGENT', 'TARGET', 'LUN', 'MODE', 'ACKED', 'FENCED', 'INITIATORS', 'ALUA', 'ALUA STATE'],
    list.map((e) => [
      e.vdiskName,
      e.agent,
      e.targetIqn,
      e.lun,
      e.readOnly ? 'ro' : 'rw',
      e.ackedVersion,
      e.fenced,
      initiatorsCell(e.allowedInitiators),
      e.alua || 'optimized',
      e.aluaState || '-',
    ]),
  );
}

/** "any" for an export open to every initiator. */
export function initiatorsCell(names: readonly string[] | undefined): string {
  return names === undefined || names.length === 0 ? 'any' : names.join(',');
}

const ALUA_CHOICES = ['optimized', 'non-optimized'];

function parseLun(v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < 0 || v > 16383) throw new CliError(`bad --lun ${String(v)}: must be a whole number 0-16383`);
  return v;
}

export function exportCommand(y: Argv): Argv {
  return y.command('export', 'exports of vdisks on agents: add, ls, rm', (c) =>
    c
      .command(
        'add <vdisk>',
        'serve a vdisk as a LUN on an agent',
        (a) =>
          adminOptions(
            a
              .positional('vdisk', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .option('agent', { type: 'string', demandOption: true, describe: 'agent name' })
              .option('iqn', { type: 'string', describe: 'target name (default iqn.2026-11.org.tabula:<vdisk>)' })
              .option('lun', { type: 'number', describe: 'LUN number (default 0)' })
              .option('read-only', { type: 'boolean', default: false, describe: 'refuse writes' })
              .option('alua', {
                type: 'string',
                default: 'optimized',
                describe: 'access state this path reports while the agent serves it (REPORT TARGET PORT GROUPS): optimized or non-optimized',
              })
              .option('initiator', {
                type: 'string',
                array: true,
                describe: 'initiator IQN allowed to log in to the target and see this LUN (repeatable; default: any)',
              }),
          ),
        async (args) => {
          const lun = parseLun(args.lun);
          if (!ALUA_CHOICES.includes(args.alua)) throw new CliError(`bad --alua ${args.alua}: use ${ALUA_CHOICES.join(' or ')}`);
          const { info, online } = await withAdmin(args, async (s) => {
            const info = await s.call('AddExport', {
              vdisk: args.vdisk,
              agent: args.agent,
              targetIqn: args.iqn ?? '',
              lun,
              readOnly: args['read-only'],
              allowedInitiators: args.initiator ?? [],
              alua: args.alua,
            });
            const agents = await s.call('ListAgents', {});
            return { info, online: agents.agents.some((a) => a.name === args.agent && a.online) };
          });
          // Recorded either way: an offline agent picks the export up when it reconnects.
          if (!online) process.stderr.write(`tabula: note: agent ${args.agent} is offline; it serves the export once it reconnects\n`);
          if (args.json) printJson({ ...info, agentOnline: online });
          else {
            print(
              `vdisk ${info.vdiskName} exported on ${info.agent} as ${info.targetIqn} LUN ${info.lun}, initiators: ${initiatorsCell(info.allowedInitiators)}, ALUA ${info.alua || 'optimized'}`,
            );
          }
        },
      )
      .command(
        'ls',
        'list exports',
        (a) =>
          adminOptions(
            a
              .option('vdisk', { type: 'string', describe: 'only this vdisk' })
              .option('agent', { type: 'string', describe: 'only this agent' }),
          ),
        async (args) => {
          const r = await withAdmin(args, (s) => s.call('ListExports', { vdisk: args.vdisk ?? '', agent: args.agent ?? '' }));
          if (args.json) printJson(r.exports);
          else print(r.exports.length === 0 ? 'no exports' : exportRows(r.exports));
        },
      )
      .command(
        'rm <vdisk>',
        'stop serving a vdisk on an agent',
        (a) =>
          adminOptions(
            a
              .positional('vdisk', { type: 'string', demandOption: true, describe: 'vdisk name or id' })
              .option('agent', { type: 'string', demandOption: true, describe: 'agent name' }),
          ),
        async (args) => {
          await withAdmin(args, (s) => s.call('RemoveExport', { vdisk: args.vdisk, agent: args.agent }));
          if (args.json) printJson({ removed: { vdisk: args.vdisk, agent: args.agent } });
          else print(`export of ${args.vdisk} on ${args.agent} removed`);
        },
      )
      .demandCommand(1, 'name an export command: add, ls, rm'),
  );
}
