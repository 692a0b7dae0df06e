// `tabula agent ls`: the agents the controller knows, online or not (from
// their streams and heartbeats), their number and host, their portals and
// the containers they reach (those they report unreachable marked so).
// Registered under the `agent` word that the agent daemon command owns.
import type { Argv } from 'yargs';
import type { AgentInfo } from '../wire/proto-types.js';
import { adminOptions, withAdmin } from './admin-client.js';
import { formatColumns, print, printJson } from './output.js';

export function agentRows(list: readonly AgentInfo[]): string {
  return formatColumns(
    ['NAME', 'NUMBER', 'HOST', 'STATUS', 'LAST SEEN', 'PORTALS', 'CONTAINERS'],
    list.map((a) => {
      const down = new Set((a.unreachable ?? []).map((u) => u.split(':')[0]));
      return [
        a.name,
        a.number ? String(a.number) : '-',
        a.host || '-',
        a.online ? 'online' : 'offline',
        a.lastSeen || '-',
        a.portals.length > 0 ? a.portals.join(',') : '-',
        a.containers.length > 0 ? a.containers.map((c) => `${c.slice(0, 8)}${down.has(c) ? '(unreachable)' : ''}`).join(',') : '-',
      ];
    }),
  );
}

/** Admin subcommands of `tabula agent` (pass to agentCommand's `sub`). */
export function agentSubcommands(y: Argv): Argv {
  return y.command(
    'ls',
    'list agents: number, host, online/offline, portals, containers (reachable or not)',
    (a) => adminOptions(a),
    async (args) => {
      const r = await withAdmin(args, (s) => s.call('ListAgents', {}));
      if (args.json) printJson(r.agents);
      else print(r.agents.length === 0 ? 'no agents' : agentRows(r.agents));
    },
  );
}
