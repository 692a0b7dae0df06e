// ALUA across agents (docs/architecture.md, "Target ports and ALUA"): every
// agent exporting a vdisk is one target port group of that vdisk's logical
// unit, and REPORT TARGET PORT GROUPS on any path lists them all with their
// states. The controller works the states out here and sends them in each
// agent's ExportSet (Export.port_groups); when any group of a vdisk changes
// state, every connected exporter of the vdisk gets a new ExportSet, and the
// agents raise ASYMMETRIC ACCESS STATE CHANGED on their nexuses.
//
// The state of one agent's group (groupState, a pure function):
//   fenced for the vdisk                          unavailable
//   away, and its lease has surely run out,       unavailable
//     or it went away after announcing a drain
//   draining (SIGTERM: Heartbeat.draining)        transitioning
//   connected, no table of the vdisk installed    transitioning
//     on this connection yet, and none kept from
//     before (a restarted agent loading it)
//   otherwise (also away within its lease: it     the export's preference:
//     may well still be serving)                  active/optimized or active/non-optimized

import { log } from '../util/log.js';
import { agentPortIds } from '../wire/port-identity.js';
import { AluaState, type WirePortGroup } from '../wire/proto-types.js';
import type { AgentRegistry } from './agent-registry.js';
import type { AluaPreference, ControllerDb } from './db.js';

/** What the controller knows of one exporter of a vdisk, as groupState needs it. */
export interface ExporterFacts {
  agent: string;
  /** The agent's number (its group id); null for one never registered since numbers exist: it has no group. */
  number: number | null;
  /** Portals it registered (its target ports). */
  portals: number;
  alua: AluaPreference;
  fenced: boolean;
  connected: boolean;
  /** Away (not connected) and surely no longer serving: its lease ran out, or it announced a drain before it went. */
  gone: boolean;
  draining: boolean;
  /**
   * Connected, but it has not installed a table of this vdisk on this
   * connection yet and did not keep one from before: an agent back with the
   * table it went on serving from (Register.tables) is not, since it serves
   * at once (I/O the newer version changes waits for that version).
   */
  syncing: boolean;
}

export function groupState(f: ExporterFacts): AluaState {
  if (f.fenced) return AluaState.Unavailable;
  if (!f.connected) return f.gone ? AluaState.Unavailable : preferred(f.alua);
  if (f.draining || f.syncing) return AluaState.Transitioning;
  return preferred(f.alua);
}

function preferred(alua: AluaPreference): AluaState {
  return alua === 'non-optimized' ? AluaState.ActiveNonOptimized : AluaState.ActiveOptimized;
}

/** A vdisk's port groups from its exporters, by group id. */
export function portGroupsOf(exporters: readonly ExporterFacts[]): WirePortGroup[] {
  return exporters
    .filter((f): f is ExporterFacts & { number: number } => f.number !== null)
    .map((f) => ({ id: f.number, state: groupState(f), relativePortIds: agentPortIds(f.number, f.portals), agent: f.agent }))
    .sort((a, b) => a.id - b.id);
}

const STATE_NAMES: Readonly<Record<number, string>> = {
  [AluaState.ActiveOptimized]: 'active/optimized',
  [AluaState.ActiveNonOptimized]: 'active/non-optimized',
  [AluaState.Standby]: 'standby',
  [AluaState.Unavailable]: 'unavailable',
  [AluaState.Transitioning]: 'transitioning',
};

export function aluaStateName(s: AluaState): string {
  return STATE_NAMES[s] ?? `state ${s as number}`;
}

/** A comparable form of a vdisk's groups: ids, states and ports. */
function groupsKey(groups: readonly WirePortGroup[]): string {
  return groups.map((g) => `${g.id}:${g.state}:${g.relativePortIds.join(',')}`).join(' ');
}

/**
 * Keeps every exporter's view of its vdisks' port groups current: recheck()
 * after anything that may change a state (an agent registers, acks its
 * first table, drains, goes away, its lease runs out, is fenced; exports
 * change) re-sends ExportSet to the exporters of each vdisk whose groups
 * changed.
 */
export class PortGroups {
  readonly #db: ControllerDb;
  readonly #agents: AgentRegistry;
  /** Sends an agent its ExportSet (which carries the groups). */
  readonly #send: (agent: string) => void;
  /** The groups of each vdisk as last sent to its exporters. */
  readonly #sent = new Map<string, string>();
  /** Vdisks whose last groups include one neither active/optimized nor active/non-optimized. */
  readonly #inactive = new Set<string>();
  /** Wakes a recheck when an away agent's lease has surely run out. */
  readonly #leaseTimers = new Map<string, NodeJS.Timeout>();
  #closed = false;

  constructor(db: ControllerDb, agents: AgentRegistry, send: (agent: string) => void) {
    this.#db = db;
    this.#agents = agents;
    this.#send = send;
  }

  /** The vdisk's port groups now. */
  groups(vdiskId: string): WirePortGroup[] {
    return portGroupsOf(this.#db.exportsOfVdisk(vdiskId).map((e) => this.#facts(vdiskId, e.agent, e.alua, e.fenced)));
  }

  #facts(vdiskId: string, agent: string, alua: AluaPreference, fencedInDb: boolean): ExporterFacts {
    const row = this.#db.agent(agent);
    const link = this.#agents.link(agent);
    const held = link?.held(vdiskId);
    const registry = this.#agents;
    const leaseOver = registry.leaseMs > 0 && performance.now() >= registry.leaseEnd(agent);
    return {
      agent,
      number: row?.number ?? null,
      portals: row?.portals.length ?? 0,
      alua,
      // Connected: the link knows (the database's flag is cleared behind the ack that lifts it).
      fenced: link === undefined ? fencedInDb : held?.fenced === true,
      connected: link !== undefined,
      gone: link === undefined && (registry.stopped(agent) || leaseOver),
      draining: registry.draining(agent),
      syncing: link !== undefined && (held === undefined || held.acked === 0) && !link.keptTables.has(vdiskId),
    };
  }

  /**
   * Looks at the groups of the vdisks `agent` exports (every vdisk when
   * undefined) and sends a new ExportSet to every connected exporter of
   * each one whose groups changed.
   */
  recheck(agent?: string): void {
    if (this.#closed) return;
    const vdisks = new Set((agent === undefined ? this.#db.exports() : this.#db.exportsOfAgent(agent)).map((e) => e.vdiskId));
    if (agent === undefined) {
      // Exports removed: their vdisks' last groups are of no use any more.
      for (const id of [...this.#sent.keys()]) if (!vdisks.has(id)) this.#forget(id);
    }
    this.#recheck(vdisks);
  }

  /** recheck for one vdisk. */
  recheckVdisk(vdiskId: string): void {
    if (!this.#closed) this.#recheck([vdiskId]);
  }

  /**
   * A change of the vdisk was acked (or an agent installed its table): a
   * group that was transitioning or unavailable may be active again. A
   * no-op for a vdisk whose groups are all active, which is every change of
   * a healthy vdisk.
   */
  settled(vdiskId: string): void {
    if (this.#inactive.has(vdiskId)) this.recheckVdisk(vdiskId);
  }

  #recheck(vdisks: Iterable<string>): void {
    const notify = new Set<string>();
    for (const id of vdisks) {
      const exporters = this.#db.exportsOfVdisk(id);
      const groups = portGroupsOf(exporters.map((e) => this.#facts(id, e.agent, e.alua, e.fenced)));
      const key = groupsKey(groups);
      const before = this.#sent.get(id);
      if (before === key) continue;
      this.#sent.set(id, key);
      if (groups.some((g) => g.state !== AluaState.ActiveOptimized && g.state !== AluaState.ActiveNonOptimized)) this.#inactive.add(id);
      else this.#inactive.delete(id);
      if (before !== undefined) {
        log.info(`port groups of vdisk ${id} changed`, { groups: groups.map((g) => `${g.agent}(${g.id}): ${aluaStateName(g.state)}`) });
      }
      for (const e of exporters) if (this.#agents.link(e.agent) !== undefined) notify.add(e.agent);
    }
    for (const a of notify) this.#send(a);
  }

  #forget(vdiskId: string): void {
    this.#sent.delete(vdiskId);
    this.#inactive.delete(vdiskId);
  }

  /** An agent went away: its groups change now (a drained agent) or once its lease has surely run out. */
  agentAway(agent: string): void {
    this.recheck(agent);
    const registry = this.#agents;
    if (this.#closed || registry.leaseMs <= 0) return;
    clearTimeout(this.#leaseTimers.get(agent));
    const timer = setTimeout(
      () => {
        this.#leaseTimers.delete(agent);
        this.recheck(agent);
      },
      Math.max(0, registry.leaseEnd(agent) - performance.now()) + 1,
    );
    timer.unref();
    this.#leaseTimers.set(agent, timer);
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#leaseTimers.values()) clearTimeout(t);
    this.#leaseTimers.clear();
  }
}
