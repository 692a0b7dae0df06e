// The sense a controller chooses for a failed fault is the sense the
// initiator gets: a `fail` decision's sense goes through the vdisk device and
// the logical unit unchanged (with the failing LBA as INFORMATION), for every
// sense the controller hands out, not only the few that have a block-error
// name of their own.
import { expect } from 'chai';
import type { FaultDecision, SenseCode } from '../../../src/agent/fault.js';
import { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { SENSE } from '../../../src/controller/faults.js';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { ScsiTargetDevice } from '../../../src/scsi/target-device.js';
import type { ScsiResponse } from '../../../src/scsi/port.js';
import { TaskAttribute, makeNexus } from '../../../src/scsi/port.js';
import { BPS, BS, C1, FakeSink, fixture, type Fixture } from './device-fixture.js';

const VDISK = '99999999-0000-4000-8000-00000000fa17';
const TARGET = 'iqn.2026-11.org.tabula:fault-sense';
const nexus = makeNexus('iqn.1994-05.com.example:fs', 0x23d000000001, TARGET, 1);

/** seg 0 normal c1@0 | 1 zero | 2 invalid | 3 zero: writes to 1 and all I/O to 2 fault. */
function table(): MappingTable {
  const t = new MappingTable({ segmentCount: 4, segmentSize: BPS * BS, blockSize: BS, version: 1, name: 'fs' });
  t.set(0, { state: SegmentState.Normal, container: C1, offset: 0 });
  t.set(2, { state: SegmentState.Invalid });
  return t;
}

function rw10(op: 0x28 | 0x2a, lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = op;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

/** key/asc/ascq and INFORMATION from fixed-format sense, decoded here rather than by src/scsi. */
function senseOf(r: ScsiResponse): { key: number; asc: number; ascq: number; info?: number } {
  expect(r.status, 'status CHECK CONDITION').to.equal(0x02);
  const s = r.sense as Buffer;
  expect(s[0]! & 0x7f, 'fixed format').to.equal(0x70);
  return { key: s[2]! & 0x0f, asc: s[12]!, ascq: s[13]!, ...(s[0]! & 0x80 ? { info: s.readUInt32BE(3) } : {}) };
}

const hex = (s: SenseCode): string => [s.key, s.asc, s.ascq].map((n) => n.toString(16).padStart(2, '0')).join('/');

describe('agent: the controller\'s sense reaches the initiator', () => {
  let fx: Fixture;
  let sink: FakeSink;
  let target: ScsiTargetDevice;
  let dev: VdiskDevice;
  let tag = 1;

  beforeEach(async () => {
    fx = await fixture();
    sink = new FakeSink();
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(), containers: fx.resolver, faults: sink, holdTimeoutMs: 2000 });
    target = new ScsiTargetDevice({ name: TARGET, portGroups: [{ id: 1, relativePortIds: [1] }] });
    target.addLun(0, dev, { readOnly: false, lunId: VDISK });
  });
  afterEach(async () => {
    await dev.close();
    await fx.cleanup();
  });

  function run(cdb: Buffer, dataOut: Buffer | null): Promise<ScsiResponse> {
    return target.execute({ nexus, lun: 0, cdb, attr: TaskAttribute.Simple, tag: tag++, dataOut, expectedLength: dataOut ? dataOut.length : 8 * BS });
  }

  async function firstCommand(): Promise<void> {
    // The first command of a nexus gets the power-on UNIT ATTENTION.
    const r = await run(rw10(0x28, 0, 1), null);
    if (r.status === 0x02) expect(senseOf(r).key).to.equal(0x6);
  }

  for (const [name, code] of Object.entries(SENSE)) {
    const sense: SenseCode = { key: code[0], asc: code[1], ascq: code[2] };
    it(`${name} (${hex(sense)}) on WRITE and READ, with the LBA as INFORMATION`, async () => {
      sink.onFault = async (): Promise<FaultDecision> => ({ action: 'fail', sense, reason: name });
      await firstCommand();
      const wlba = BPS + 5; // zero segment: the write faults
      const w = senseOf(await run(rw10(0x2a, wlba, 2), Buffer.alloc(2 * BS, 0xab)));
      expect(hex(w), 'WRITE sense').to.equal(hex(sense));
      expect(w.info, 'WRITE INFORMATION').to.equal(wlba);
      const rlba = 2 * BPS + 7; // invalid segment: the read faults
      const r = senseOf(await run(rw10(0x28, rlba, 1), null));
      expect(hex(r), 'READ sense').to.equal(hex(sense));
      expect(r.info, 'READ INFORMATION').to.equal(rlba);
    });
  }

  it('a fail decision without sense is a MEDIUM ERROR, read or write, as before', async () => {
    sink.onFault = async (): Promise<FaultDecision> => ({ action: 'fail', reason: 'no sense given' });
    await firstCommand();
    expect(hex(senseOf(await run(rw10(0x2a, BPS, 1), Buffer.alloc(BS))))).to.equal('03/0c/00');
    expect(hex(senseOf(await run(rw10(0x28, 2 * BPS, 1), null)))).to.equal('03/11/00');
  });

  it('the device\'s own failures keep their sense: hold timeout NOT READY 04/0A, error segment MEDIUM ERROR', async () => {
    dev = new VdiskDevice({ vdiskId: VDISK, table: table(), containers: fx.resolver, faults: sink, holdTimeoutMs: 50 });
    target = new ScsiTargetDevice({ name: TARGET, portGroups: [{ id: 1, relativePortIds: [1] }] });
    target.addLun(0, dev, { readOnly: false, lunId: VDISK });
    await firstCommand();
    expect(hex(senseOf(await run(rw10(0x28, 2 * BPS, 1), null)))).to.equal('02/04/0a'); // never answered
    const t = table();
    t.set(3, { state: SegmentState.Error, container: C1, offset: 1 });
    t.bumpVersion();
    await dev.installTable(t);
    expect(hex(senseOf(await run(rw10(0x28, 3 * BPS, 1), null)))).to.equal('03/11/00');
    expect(hex(senseOf(await run(rw10(0x2a, 3 * BPS, 1), Buffer.alloc(BS))))).to.equal('03/0c/00');
  });
});
