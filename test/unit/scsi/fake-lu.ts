// A small stand-in for the core's logical unit: just enough of LogicalUnitApi
// and TargetApi for the reservation, EXTENDED COPY and SANITIZE handlers, and
// a dispatcher that turns handler exceptions into status and sense the way
// the real one does. Shared by test/unit/{reservations,xcopy,sanitize}.
import type { BlockDevice } from '../../../src/blockdev/block-device.js';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import type { CommandHandler, CommandSpec } from '../../../src/scsi/command-spec.js';
import type {
  BlockLimits,
  BusyState,
  LogicalUnitApi,
  LuIdentity,
  PortGroup,
  ReservationClass,
  ReservationGate,
  TargetApi,
  UnitAttentionScope,
} from '../../../src/scsi/lu-api.js';
import { defaultLimits } from '../../../src/scsi/lu-api.js';
import { ModeState } from '../../../src/scsi/mode-pages.js';
import { Reservations } from '../../../src/scsi/reservations.js';
import { ReservationConflictError, ScsiError, buildSense, parseSense } from '../../../src/scsi/sense.js';
import type { Asc } from '../../../src/scsi/sense.js';
import { TaskAttribute, makeNexus } from '../../../src/scsi/port.js';
import type { Nexus, ScsiResponse } from '../../../src/scsi/port.js';

export const TARGET = 'iqn.2026-11.org.tabula:test';

export function nexus(initiator: string, isid: number, tpgt = 1): Nexus {
  return makeNexus(initiator, isid, TARGET, tpgt);
}

export interface RaisedUa {
  code: Asc;
  scope?: UnitAttentionScope;
}

export class FakeTarget implements TargetApi {
  readonly name = TARGET;
  readonly units = new Map<number, FakeLu>();
  luns(): number[] {
    return [...this.units.keys()];
  }
  lu(lun: number): LogicalUnitApi | undefined {
    return this.units.get(lun);
  }
  luByDesignator(designator: Buffer): LogicalUnitApi | undefined {
    for (const u of this.units.values()) if (u.identity.naa.equals(designator)) return u;
    return undefined;
  }
}

export class FakeLu implements LogicalUnitApi {
  readonly identity: LuIdentity;
  readonly uas: RaisedUa[] = [];
  busyState: BusyState | null = null;
  readonly busyHistory: (BusyState | null)[] = [];
  readOnly = false;
  readonly mode = new ModeState();
  readonly limits: BlockLimits;
  readonly thirdPartyCopy = true;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly target: FakeTarget,
    readonly lun: number,
    readonly device: BlockDevice = new MemoryBlockDevice(4096),
    readonly reservations: ReservationGate = new Reservations(),
  ) {
    const naa = Buffer.alloc(16);
    naa[0] = 0x60;
    naa.writeUInt32BE(0x12345600 + lun, 12);
    this.identity = { vendor: 'TABULA  ', product: 'VDISK           ', revision: '0001', serial: `sn${lun}`, naa };
    target.units.set(lun, this);
    this.limits = defaultLimits(device.blockSize);
  }

  descriptorSense(): boolean {
    return false;
  }
  portGroups(): readonly PortGroup[] {
    return [];
  }
  takeUnitAttention(): Asc | undefined {
    return undefined;
  }
  busy(): BusyState | null {
    return this.busyState;
  }
  raiseUnitAttention(code: Asc, scope?: UnitAttentionScope): void {
    this.uas.push({ code, scope });
  }
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }
  setBusy(state: BusyState | null): void {
    this.busyState = state;
    this.busyHistory.push(state);
  }
  /** UAs raised for exactly this nexus (scope.only). */
  uasFor(n: Nexus): Asc[] {
    return this.uas.filter((u) => u.scope?.only?.id === n.id).map((u) => u.code);
  }
}

export function spec(name: string, handler: CommandHandler, reservation: ReservationClass = 'allowed', dataOut = false): CommandSpec {
  return { opcode: 0, name, cdbLength: 16, handler, dataOut, reservation, cdbUsage: [] };
}

export interface Result {
  status: number;
  sense?: { key: number; asc: number; ascq: number };
  senseBytes?: Buffer;
  data?: Buffer;
}

/** Run a handler as the dispatcher would: reservation check, then exceptions to status/sense. */
export async function exec(lu: FakeLu, n: Nexus, cdb: Buffer | number[], handlerSpec: CommandSpec, dataOut: Buffer | null = null): Promise<Result> {
  const c = Buffer.isBuffer(cdb) ? cdb : Buffer.from(cdb);
  const req = { nexus: n, lun: lu.lun, cdb: c, attr: TaskAttribute.Simple, tag: 1, dataOut, expectedLength: dataOut?.length ?? 65536 };
  if (lu.reservations.conflicts(req, handlerSpec)) return { status: 0x18 };
  let res: ScsiResponse;
  try {
    res = await handlerSpec.handler({ req, lu, spec: handlerSpec });
  } catch (e) {
    if (e instanceof ReservationConflictError) return { status: 0x18 };
    if (e instanceof ScsiError) {
      const b = buildSense(e.code, false, e.opts);
      return { status: 2, sense: parseSense(b), senseBytes: b };
    }
    throw e;
  }
  return { status: res.status, data: res.dataIn, senseBytes: res.sense, sense: res.sense ? parseSense(res.sense) : undefined };
}

/** Stand-ins for the table classes a read and a write command would have. */
export const READ = spec('READ', () => ({ status: 0 }), 'read');
export const WRITE = spec('WRITE', () => ({ status: 0 }), 'write');
export const MODE_SENSE = spec('MODE SENSE', () => ({ status: 0 }), 'conflict');
export const INQUIRY = spec('INQUIRY', () => ({ status: 0 }), 'allowed');
