// The SCSI state of each vdisk's logical unit, owned here for every agent
// exporting the vdisk (docs/architecture.md, "One logical unit on every
// path"): persistent reservations, the SPC-2 RESERVE holder, the mode pages'
// current values, and the unit attentions one path's action raises on the
// others.
//
// An agent sends an LuRequest for PERSISTENT RESERVE OUT, RESERVE, RELEASE,
// MODE SELECT, LOGICAL UNIT RESET, CLEAR TASK SET, and the loss of a nexus holding the
// SPC-2 reservation. Each is applied with the same pure step the in-process
// target uses (src/scsi/reservations.ts, applyLuRequest), serialized with
// the vdisk's table changes, and a change goes the way every table change
// goes: commit (the new LU state in the version's transaction), push to
// every holder (TableDelta with the state and the unit attention events),
// wait for every ack (fencing laggards). Only then the LuReply: the
// initiator's command completes once every path enforces the new state.
import { applyLuRequest, emptyLuReservationState, type LuReservationState, type LuTransition } from '../scsi/reservations.js';
import { ScsiStatus } from '../scsi/port.js';
import { Sense } from '../scsi/sense.js';
import type { LuOutcome } from '../scsi/lu-api.js';
import { luEventToWire, luReplyOf, luRequestKindFromWire, luStateFromWire, luStateToWire, nexusOf } from '../wire/lu-state.js';
import type { LuRequest } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { AgentLink } from './agent-link.js';
import type { ControllerDb } from './db.js';
import type { TableChanges } from './table-changes.js';

export class LuStates {
  readonly #db: ControllerDb;
  readonly #tables: TableChanges;

  constructor(db: ControllerDb, tables: TableChanges) {
    this.#db = db;
    this.#tables = tables;
  }

  /** The vdisk's LU state now (the empty state when none was ever set). */
  state(vdiskId: string): LuReservationState {
    const s = this.#db.luState(vdiskId);
    return s === undefined ? emptyLuReservationState() : luStateFromWire(s);
  }

  /** An agent's LuRequest: answered with LuReply once the outcome is in force on every path. */
  onRequest(link: AgentLink, r: LuRequest): void {
    const reply = (o: LuOutcome, generation: number): void => {
      link.send({ body: 'luReply', luReply: luReplyOf(r.requestId, o, generation) });
    };
    const refuse = (why: string): void => {
      log.error(`agent ${link.name ?? link.label}: LU request refused: ${why}`);
      reply({ status: ScsiStatus.CheckCondition, sense: { code: Sense.lunNotSupported, opts: {} }, message: why }, 0);
    };
    const vdisk = this.#db.vdisk(r.vdiskId);
    if (vdisk === undefined) return refuse(`vdisk ${r.vdiskId} does not exist`);
    if (link.name === null || this.#db.export(r.vdiskId, link.name) === undefined) {
      return refuse(`vdisk ${vdisk.name} is not exported to agent ${link.name ?? link.label}`);
    }
    const kind = luRequestKindFromWire(r.kind);
    if (kind === undefined) return refuse(`unknown LU request kind ${r.kind}`);
    let nexus;
    try {
      nexus = nexusOf(r.nexus);
    } catch (err) {
      return refuse(`LU request on vdisk ${vdisk.name}: ${(err as Error).message}`);
    }
    const req = { kind, cdb: Buffer.from(r.cdb), data: kind === 'prout' || kind === 'mode-select' ? Buffer.from(r.data) : null };
    this.#tables
      .serialize(r.vdiskId, async (): Promise<LuTransition> => {
        const t = applyLuRequest(this.state(r.vdiskId), nexus, req);
        if (!t.changed) return t;
        const committed = this.#tables.commitAndSend(r.vdiskId, (c) => c.setLu(luStateToWire(t.state), t.events.map(luEventToWire)));
        if (committed !== null) {
          log.info(`vdisk ${vdisk.name}: ${kind} from ${nexus.initiatorPort} through agent ${link.name}: LU state version ${committed.version}`, {
            generation: t.state.pr.generation,
            events: t.events.length,
          });
          await this.#tables.awaitAcks(committed);
        }
        return t;
      })
      .then(
        (t) => reply(t.outcome, t.state.pr.generation),
        (err: Error) => {
          log.error(`vdisk ${vdisk.name}: ${kind} from ${nexus.initiatorPort} failed: ${err.message}`);
          // Retryable: the initiator tries again, and the state is whatever the database says.
          reply({ status: ScsiStatus.CheckCondition, sense: { code: Sense.notReadyTransition, opts: {} }, message: err.message }, 0);
        },
      );
  }
}
