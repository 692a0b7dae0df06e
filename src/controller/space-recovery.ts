// Recovery of suspect space at controller start (docs/architecture.md, the
// durability contract). A thin allocation is committed lazily, so a power
// loss can take it back after an agent wrote through it; it was taken from a
// durable reservation (allocator.ts), so every location that may hold such
// data lies in a reservation row of an earlier run that nothing references
// now. Those locations are suspect:
//
// - out of the free map at once (Allocator.holdSuspect), before anything
//   allocates;
// - held until no agent can still write them: every agent that may hold
//   tables of the lost run (the exports in the DB: an allocation is pushed
//   only to exporters, and adding or removing an export is a durable
//   commit) has registered again and acked a full table of each vdisk it
//   exports (the DB's version, reconciled: above any version it came back
//   holding from the lost run), or that export is gone;
// - then, in one durable commit, marked to be scrubbed and their rows
//   dropped: the Scrubber zeroes them and frees them.
//
// Reserved locations that are referenced are not suspect (the DB holds their
// allocation); their rows are dropped with the rest. A start after a clean
// shutdown finds no rows (Allocator.close ends them) and does nothing.

import { log } from '../util/log.js';
import type { AgentLink } from './agent-link.js';
import type { Allocator } from './allocator.js';
import type { ControllerDb, Location } from './db.js';

/** What space recovery needs of the controller. */
export interface SpaceRecoveryHost {
  readonly db: ControllerDb;
  readonly allocator: Pick<Allocator, 'inheritedReservations' | 'forgetInherited' | 'holdSuspect' | 'releaseSuspect'>;
  readonly agents: { link(agent: string): AgentLink | undefined };
  readonly scrubber: { add(locs: readonly Location[]): void };
}

export interface SpaceRecoveryOptions {
  /** How often the agents' state is looked at while suspect space waits (default 1000 ms); events (check) look sooner. */
  recheckMs?: number;
}

export class SpaceRecovery {
  readonly #host: SpaceRecoveryHost;
  readonly #recheckMs: number;
  /** Rows of earlier runs, dropped once released. */
  #rowIds: number[] = [];
  #suspects: Location[] = [];
  /** Exports (agent -> vdisks) that must be reconciled before the suspects may be scrubbed. */
  readonly #waiting = new Map<string, Set<string>>();
  /** Each vdisk's version in the DB at start: an agent holding a later one holds a table of the lost run. */
  readonly #startVersions = new Map<string, number>();
  /** Per agent, vdisk: the version it must have acked (above the lost one it registered with). */
  readonly #mustAck = new Map<string, Map<string, number>>();
  #timer: NodeJS.Timeout | null = null;
  #done = false;

  /** Finds suspect space and holds it out of the free map; call before anything allocates. */
  constructor(host: SpaceRecoveryHost, opts: SpaceRecoveryOptions = {}) {
    this.#host = host;
    this.#recheckMs = opts.recheckMs ?? 1000;
    const db = host.db;
    // Read by the allocator when it was made, before it reserved anything itself.
    const rows = host.allocator.inheritedReservations();
    if (rows.length === 0) {
      this.#done = true;
      return;
    }
    this.#rowIds = rows.map((r) => r.id);
    this.#suspects = host.allocator.holdSuspect(rows);
    if (this.#suspects.length === 0) {
      // Everything reserved was allocated durably: nothing an agent may have written unrecorded.
      log.info(`space recovery: ${rows.length} reserved ranges from the last run, all allocated; none suspect`);
      this.#release();
      return;
    }
    for (const v of db.vdisks()) this.#startVersions.set(v.id, v.version);
    for (const e of db.exports()) {
      let vdisks = this.#waiting.get(e.agent);
      if (vdisks === undefined) this.#waiting.set(e.agent, (vdisks = new Set()));
      vdisks.add(e.vdiskId);
    }
    const containers = new Set(this.#suspects.map((l) => l.containerId)).size;
    log.info(
      `space recovery: ${this.#suspects.length} reserved but unreferenced segments on ${containers} container${containers === 1 ? '' : 's'} ` +
        `(a lazy allocation may have been lost with an agent's writes) held until ${this.#waiting.size === 0 ? 'the start' : `agents ${[...this.#waiting.keys()].join(', ')} have reconciled`}, then scrubbed`,
    );
  }

  /** Suspect locations still held (0 once released). */
  get pending(): number {
    return this.#done ? 0 : this.#suspects.length;
  }

  /** Agents that must still reconcile before the suspect space is scrubbed. */
  get waitingFor(): string[] {
    return [...this.#waiting.keys()];
  }

  /** Starts looking (periodically and on check) for the agents to have reconciled. */
  start(): void {
    if (this.#done) return;
    this.check();
    if (this.#done || this.#timer !== null) return;
    this.#timer = setInterval(() => this.check(), this.#recheckMs);
    this.#timer.unref();
  }

  /**
   * An agent registered holding `have` (vdisk -> version): a version newer
   * than the DB's at start is one of the lost run, and that table is gone
   * from the agent only once it acks a later version (the controller
   * reconciles it above, agent-registry.ts), not on a version number equal
   * by chance.
   */
  registered(agent: string, have: ReadonlyMap<string, number>): void {
    const vdisks = this.#waiting.get(agent);
    if (vdisks !== undefined) {
      const must = new Map<string, number>();
      for (const id of vdisks) {
        const h = have.get(id) ?? 0;
        if (h > (this.#startVersions.get(id) ?? 0)) must.set(id, h + 1);
      }
      this.#mustAck.set(agent, must);
    }
    this.check();
  }

  /** Looks again (an agent registered, a full table was acked, an export went away). */
  check(): void {
    if (this.#done || !this.#host.db.open) return;
    const db = this.#host.db;
    for (const [agent, vdisks] of this.#waiting) {
      const link = this.#host.agents.link(agent);
      const must = this.#mustAck.get(agent);
      for (const vdiskId of vdisks) {
        if (db.export(vdiskId, agent) === undefined || reconciled(link, vdiskId, must?.get(vdiskId) ?? 0)) vdisks.delete(vdiskId);
      }
      if (vdisks.size === 0) this.#waiting.delete(agent);
    }
    if (this.#waiting.size === 0) this.#release();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #release(): void {
    let marked: Location[];
    try {
      marked = this.#host.db.releaseSpaceReservations(this.#rowIds, this.#suspects);
    } catch (e) {
      // Held still; the next check tries again (and a restart starts over).
      log.error(`space recovery: recording the suspect space for scrubbing failed: ${(e as Error).message}`);
      return;
    }
    this.#done = true;
    this.stop();
    this.#host.allocator.releaseSuspect(this.#suspects);
    this.#host.allocator.forgetInherited();
    if (this.#suspects.length > 0) log.info(`space recovery: no agent can write the ${this.#suspects.length} suspect segments any more; ${marked.length} queued for scrubbing`);
    this.#host.scrubber.add(marked);
    this.#suspects = [];
    this.#rowIds = [];
  }
}

/**
 * The agent holds the controller's table of the vdisk: it acked a full table
 * sent on this link (or kept the DB's very version, which counts as one),
 * at least `mustAck`, and is not fenced. A table of the lost run is gone
 * from it then.
 */
function reconciled(link: AgentLink | undefined, vdiskId: string, mustAck: number): boolean {
  const held = link?.held(vdiskId);
  return held !== undefined && !held.fenced && held.fullAt > 0 && held.acked >= held.fullAt && held.acked >= mustAck;
}
