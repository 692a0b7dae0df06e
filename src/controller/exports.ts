// Exports: which agents serve which vdisk, as the agents see it. An agent
// gets its export set, and a whole table of every vdisk it newly serves,
// when it registers, when the admin changes its exports, and when it asks
// (TableRequest); each such table must be acked in time or the agent is
// fenced for that vdisk (TableChanges.fence).

import type { Export, TableRequest, WirePortGroup } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { ControllerDb } from './db.js';
import type { AgentLink } from './agent-link.js';
import type { AgentRegistry } from './agent-registry.js';
import type { TableChanges } from './table-changes.js';

export class Exports {
  readonly #db: ControllerDb;
  readonly #agents: AgentRegistry;
  readonly #tables: TableChanges;
  readonly #ackTimeoutMs: number;
  /** An agent installed a vdisk's current table: faults that waited for it may go on. */
  readonly #settled: (vdiskId: string) => void;
  /** A vdisk's ALUA port groups now (port-groups.ts); none until set. */
  portGroups: (vdiskId: string) => WirePortGroup[] = () => [];
  /** Exports were added or removed: the port groups of their vdisks differ. */
  groupsMayChange: () => void = () => undefined;

  constructor(db: ControllerDb, agents: AgentRegistry, tables: TableChanges, ackTimeoutMs: number, settled: (vdiskId: string) => void) {
    this.#db = db;
    this.#agents = agents;
    this.#tables = tables;
    this.#ackTimeoutMs = ackTimeoutMs;
    this.#settled = settled;
  }

  /** The export list an agent gets. */
  exportsFor(agent: string): Export[] {
    const db = this.#db;
    const ownPortGroup = db.agent(agent)?.number ?? 0;
    return db.exportsOfAgent(agent).flatMap((e) => {
      const v = db.vdisk(e.vdiskId);
      if (!v) return [];
      return [
        {
          vdiskId: v.id,
          vdiskName: v.name,
          targetIqn: e.targetIqn,
          lun: e.lun,
          blockSize: v.blockSize,
          size: v.size,
          segmentSize: v.segmentSize,
          readOnly: e.readOnly,
          allowedInitiators: e.allowedInitiators,
          portGroups: this.portGroups(v.id),
          ownPortGroup,
        },
      ];
    });
  }

  /** Sends an agent its export set again (its port groups changed), if it is connected. */
  sendExportSet(agent: string): void {
    this.#agents.link(agent)?.send({ body: 'exportSet', exportSet: { exports: this.exportsFor(agent) } });
  }

  /**
   * Sends an agent its export set and a full table of every vdisk it newly
   * serves; forgets vdisks no longer exported. Returns the vdisks sent.
   */
  syncExports(link: AgentLink, haveVersions: ReadonlyMap<string, number> = new Map()): string[] {
    const name = link.name as string;
    const exports = this.exportsFor(name);
    link.send({ body: 'exportSet', exportSet: { exports } });
    const want = new Set(exports.map((e) => e.vdiskId));
    for (const id of [...link.tables.keys()]) if (!want.has(id)) link.drop(id);
    const sent: string[] = [];
    for (const e of exports) {
      if (link.held(e.vdiskId) !== undefined) continue;
      const t = this.#tables.table(e.vdiskId);
      if (haveVersions.get(e.vdiskId) === t.version) {
        // The agent kept this very version while away: nothing to send.
        link.noteSent(e.vdiskId, t.version, true);
        this.#tables.applyAck(link, e.vdiskId, t.version);
        // Faults that waited for this agent to come back may go on now.
        this.#settled(e.vdiskId);
        continue;
      }
      this.#tables.sendFullTable(link, e.vdiskId);
      sent.push(e.vdiskId);
    }
    return sent;
  }

  /** syncExports, then waits for the acks of the tables sent (fencing on timeout). */
  resync(link: AgentLink, haveVersions?: ReadonlyMap<string, number>): void {
    this.#awaitInitial(link, this.syncExports(link, haveVersions));
  }

  /** Export set changed for an agent (admin): resync it if online. */
  exportsChanged(agent: string): void {
    // A change waiting for this agent may not need to any more (export removed).
    this.#tables.wakeLaggardWaits();
    void this.#clearStrayOwners();
    const link = this.#agents.link(agent);
    if (link) this.resync(link);
    this.groupsMayChange();
  }

  /**
   * Segments owned by an agent that no longer exports the vdisk go back to
   * no owner (a table change like any), so the owners always name exporters.
   */
  async #clearStrayOwners(): Promise<void> {
    const db = this.#db;
    const byVdisk = new Map<string, { seg: number; owner: number }[]>();
    for (const o of db.strayOwners()) byVdisk.set(o.vdiskId, [...(byVdisk.get(o.vdiskId) ?? []), o]);
    for (const [vdiskId, owned] of byVdisk) {
      try {
        await this.#tables.changeTable(vdiskId, (c) => {
          // Only those still owned as they were (a fault may have moved one meanwhile).
          for (const o of owned) if (db.segmentOwner(vdiskId, o.seg) === o.owner) c.setOwner(o.seg, 0);
        });
      } catch (err) {
        log.warn(`clearing write owners of vdisk ${vdiskId}: ${(err as Error).message}`);
      }
    }
  }

  /** An agent's TableRequest: the whole table of a vdisk exported to it. */
  onTableRequest(link: AgentLink, r: TableRequest): void {
    const name = link.name as string;
    if (!this.#db.export(r.vdiskId, name)) {
      log.error(`agent ${name} requested the table of vdisk ${r.vdiskId}, which is not exported to it`);
      link.sendError(`table request: vdisk ${r.vdiskId} is not exported to agent ${name}`);
      return;
    }
    log.info(`agent ${name} requests vdisk ${r.vdiskId} table (has version ${r.haveVersion}${r.reason ? `: ${r.reason}` : ''})`);
    this.#tables.sendFullTable(link, r.vdiskId);
    this.#awaitInitial(link, [r.vdiskId]);
  }

  /** Waits for acks of full tables just sent; fences on timeout. */
  #awaitInitial(link: AgentLink, vdiskIds: readonly string[]): void {
    for (const id of vdiskIds) {
      const version = link.held(id)?.sent ?? 0;
      void link.waitAck(id, version, this.#ackTimeoutMs).then((ok) => {
        if (!ok && !link.closed && link.held(id) !== undefined) this.#tables.fence(link, id, `no ack of full table version ${version}`);
        // Faults that waited for this agent to come back may go on now.
        else if (ok) this.#settled(id);
      });
    }
  }
}
