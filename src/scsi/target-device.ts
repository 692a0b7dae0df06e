// A SCSI target device: a named set of logical units behind one or more
// target ports. It is the ScsiPort the iSCSI layer talks to: it routes
// commands to LUs, answers for LUNs that do not exist, and carries out the
// SCSI side of task management (unit attentions, reservation release).
//
// Unit attentions and new I_T nexuses: a nexus seen for the first time gets
// no POWER ON OCCURRED. A session is a new I_T nexus in iSCSI terms, so
// SAM-5 would allow one, but initiators reconnect routinely (same ISID) and
// must not be disturbed by it, and libiscsi consumes whatever UAs it finds
// with TEST UNIT READY after login anyway. Pending UAs are keyed by nexus
// (initiator port name + target port name), so a reconnecting initiator
// port keeps the ones it has not seen yet.
import { createHash } from 'node:crypto';
import type { BlockDevice } from '../blockdev/block-device.js';
import type { BlockLimits, LuIdentity, LogicalUnitApi, PortGroup, ReservationGate, TargetApi } from './lu-api.js';
import type { LogicalUnitOptions, LuHost } from './logical-unit.js';
import { LogicalUnit } from './logical-unit.js';
import { commandOf } from './commands.js';
import { buildSense, ScsiError, Sense } from './sense.js';
import type { Nexus, ScsiPort, ScsiRequest, ScsiResponse } from './port.js';
import { ScsiStatus, TmfCode, TmfResult } from './port.js';

/** IEEE company id used in NAA type 6 designators. */
export const TABULA_OUI = 0x5a_b1_e0;

export interface ScsiTargetOptions {
  /** SCSI target device name (the iSCSI target IQN). */
  name: string;
  /** Target port groups (ALUA, implicit, all active/optimized). Default: one group per nexus's own port. */
  portGroups?: PortGroup[];
  vendor?: string;
  product?: string;
  revision?: string;
  /** Supplies the reservation state of each new LU (default: the LU's own). */
  reservations?: (lun: number) => ReservationGate;
}

export interface AddLunOptions {
  identity?: Partial<LuIdentity>;
  readOnly?: boolean;
  /** Stable identity source (e.g. the vdisk UUID); default `${target name}/${lun}`. */
  lunId?: string;
  limits?: Partial<BlockLimits>;
  reservations?: ReservationGate;
}

/** NAA IEEE Registered Extended (type 6) designator and serial number from a stable LUN id. */
export function makeIdentity(lunId: string, base: { vendor?: string; product?: string; revision?: string } = {}): LuIdentity {
  const h = createHash('sha256').update(lunId).digest();
  const naa = Buffer.alloc(16);
  // NAA 6h, 24-bit company id, 36-bit vendor specific id, 64-bit extension
  naa[0] = 0x60 | ((TABULA_OUI >> 20) & 0x0f);
  naa[1] = (TABULA_OUI >> 12) & 0xff;
  naa[2] = (TABULA_OUI >> 4) & 0xff;
  naa[3] = ((TABULA_OUI & 0x0f) << 4) | (h[0]! & 0x0f);
  h.copy(naa, 4, 1, 13);
  return {
    vendor: base.vendor ?? 'TABULA',
    product: base.product ?? 'VDISK',
    revision: base.revision ?? '0001',
    serial: h.subarray(0, 16).toString('hex'),
    naa,
  };
}

export class ScsiTargetDevice implements ScsiPort, TargetApi {
  readonly name: string;
  private readonly groups: PortGroup[];
  private readonly units = new Map<number, LogicalUnit>();
  /** I_T nexuses currently logged in, by id. */
  private readonly live = new Map<string, Nexus>();
  private readonly host: LuHost;

  constructor(private readonly opts: ScsiTargetOptions) {
    this.name = opts.name;
    this.groups = opts.portGroups ?? [];
    this.host = {
      api: this,
      nexuses: () => this.live.values(),
      portGroups: () => this.groups,
    };
  }

  // ---- TargetApi ----

  luns(): number[] {
    return [...this.units.keys()].sort((a, b) => a - b);
  }

  lu(lun: number): LogicalUnit | undefined {
    return this.units.get(lun);
  }

  luByDesignator(designator: Buffer): LogicalUnitApi | undefined {
    for (const u of this.units.values()) if (u.identity.naa.equals(designator)) return u;
    return undefined;
  }

  // ---- configuration ----

  addLun(lun: number, device: BlockDevice, opts: AddLunOptions = {}): LogicalUnit {
    if (this.units.has(lun)) throw new Error(`target ${this.name} already has LUN ${lun}`);
    if (!Number.isInteger(lun) || lun < 0 || lun > 16383) throw new Error(`LUN ${lun} is out of range 0..16383`);
    const base = makeIdentity(opts.lunId ?? `${this.name}/${lun}`, this.opts);
    const luOpts: LogicalUnitOptions = {
      identity: { ...base, ...opts.identity },
      readOnly: opts.readOnly ?? false,
    };
    if (opts.limits) luOpts.limits = opts.limits;
    const gate = opts.reservations ?? this.opts.reservations?.(lun);
    if (gate) luOpts.reservations = gate;
    const unit = new LogicalUnit(lun, device, this.host, luOpts);
    this.inventoryChanged();
    this.units.set(lun, unit);
    return unit;
  }

  removeLun(lun: number): LogicalUnit | undefined {
    const unit = this.units.get(lun);
    if (!unit) return undefined;
    this.units.delete(lun);
    this.inventoryChanged();
    return unit;
  }

  /** REPORTED LUNS DATA HAS CHANGED on every remaining LU for every nexus. */
  private inventoryChanged(): void {
    for (const u of this.units.values()) u.raiseUnitAttention(Sense.reportedLunsDataChanged);
  }

  // ---- ScsiPort ----

  hasLun(lun: number): boolean {
    return this.units.has(lun);
  }

  releasesDataOut(cdb: Buffer): boolean {
    return commandOf(cdb)?.releasesDataOut === true;
  }

  async execute(req: ScsiRequest): Promise<ScsiResponse> {
    return this.start(req);
  }

  start(req: ScsiRequest): ScsiResponse | Promise<ScsiResponse> {
    if (!this.live.has(req.nexus.id)) this.live.set(req.nexus.id, req.nexus);
    const unit = this.units.get(req.lun);
    if (unit) return unit.start(req);
    return this.noSuchLun(req);
  }

  /** SPC-4 / SAM-5 answers for a LUN with no logical unit behind it. */
  private noSuchLun(req: ScsiRequest): ScsiResponse {
    const answer = commandOf(req.cdb)?.noLun;
    try {
      if (answer) return answer(req, this);
    } catch (e) {
      if (e instanceof ScsiError) return { status: ScsiStatus.CheckCondition, sense: buildSense(e.code, false, e.opts) };
      throw e;
    }
    return { status: ScsiStatus.CheckCondition, sense: buildSense(Sense.lunNotSupported, false) };
  }

  async taskManagement(fn: TmfCode, nexus: Nexus, lun: number): Promise<TmfResult> {
    switch (fn) {
      case TmfCode.AbortTask:
      case TmfCode.AbortTaskSet:
        // the transport aborts the tasks; only the issuing nexus's tasks are affected (SAM-5 7.3: ABORT TASK SET
        // aborts the commands received on that I_T nexus), so no UA and nothing for other paths either
        return this.units.has(lun) ? TmfResult.Complete : TmfResult.LunDoesNotExist;
      case TmfCode.ClearTaskSet: {
        const u = this.units.get(lun);
        if (!u) return TmfResult.LunDoesNotExist;
        // tasks of other initiators were cleared too (TAS=0: they learn it from a UA), on every path
        await u.taskSetRequest('clear-task-set', nexus);
        return TmfResult.Complete;
      }
      case TmfCode.ClearAca:
        return TmfResult.NotSupported;
      case TmfCode.LogicalUnitReset: {
        const u = this.units.get(lun);
        if (!u) return TmfResult.LunDoesNotExist;
        await u.taskSetRequest('lu-reset', nexus);
        return TmfResult.Complete;
      }
      case TmfCode.TargetWarmReset:
        // The issuing nexus learns of the reset from the TMF response; the
        // others get the UA. (A LUN reset, by contrast, is reported to every
        // nexus: multipath initiators look for it on the issuing path too.)
        for (const u of this.units.values()) u.reset(Sense.busReset, nexus);
        return TmfResult.Complete;
      case TmfCode.TargetColdReset:
        for (const u of this.units.values()) u.reset(Sense.powerOnOccurred);
        return TmfResult.Complete;
      default:
        return TmfResult.NotSupported;
    }
  }

  nexusLost(nexus: Nexus): void {
    this.live.delete(nexus.id);
    for (const u of this.units.values()) u.nexusLost(nexus);
  }
}
