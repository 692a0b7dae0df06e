// Over the wire: a FaultReply FAIL carries the controller's sense, and the
// agent ends the initiator's command with exactly that sense, for every
// sense the controller hands out (its SENSE table).
import { expect } from 'chai';
import { SENSE } from '../../../src/controller/faults.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { FakeController, type FakeStream } from './fake-controller.js';
import { BPS, BS, CONTAINER_ID, SEG, SEGS, VDISK_ID, exportOf, loginTo, normal, pattern, startRig, write10, zero, type Rig } from './rig.js';
import type { RawInitiator } from '../../support/raw-initiator.js';

async function exportDisk(stream: FakeStream): Promise<void> {
  stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
  stream.send({
    body: 'tableFull',
    tableFull: { vdiskId: VDISK_ID, version: 1, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 2), zero(2, SEGS - 2)] },
  });
  await stream.take('tableAck');
}

const hex = (k: number, a: number, q: number): string => [k, a, q].map((n) => n.toString(16).padStart(2, '0')).join('/');

describe('agent daemon: the controller\'s sense reaches the initiator', function () {
  this.timeout(20_000);
  let ctl: FakeController;
  let rig: Rig;
  let ini: RawInitiator | undefined;

  beforeEach(async () => {
    ctl = await FakeController.start();
    rig = await startRig(ctl.address, { holdTimeoutMs: 3000 });
  });
  afterEach(async () => {
    ini?.destroy();
    await rig.close();
    await ctl.stop();
  });

  it('FAIL with each of the controller\'s senses ends the WRITE with that sense and the LBA', async () => {
    const { stream } = await ctl.accept();
    await exportDisk(stream);
    ini = await loginTo(rig.port);
    const seen: Record<string, string> = {};
    const want: Record<string, string> = {};
    let seg = 2;
    for (const [name, [key, asc, ascq]] of Object.entries(SENSE)) {
      const lba = seg++ * BPS + 3;
      const write = ini.scsi(write10(lba, 1), { write: pattern(1, 0x44) });
      const f = await stream.take('fault');
      stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Fail, tableVersion: 0, senseKey: key, asc, ascq, reason: name } });
      let r = await write;
      if (r.status === 2 && (r.sense![2]! & 0x0f) === 0x6) {
        // the power-on UNIT ATTENTION came first: once more
        const again = ini.scsi(write10(lba, 1), { write: pattern(1, 0x44) });
        const f2 = await stream.take('fault');
        stream.send({ body: 'faultReply', faultReply: { faultId: f2.fault.faultId, action: FaultAction.Fail, tableVersion: 0, senseKey: key, asc, ascq, reason: name } });
        r = await again;
      }
      expect(r.status, name).to.equal(2);
      const s = r.sense!;
      seen[name] = `${hex(s[2]! & 0x0f, s[12]!, s[13]!)} info ${s[0]! & 0x80 ? s.readUInt32BE(3) : 'none'}`;
      want[name] = `${hex(key, asc, ascq)} info ${lba}`;
      if (seg >= SEGS) seg = 2;
    }
    expect(seen).to.deep.equal(want);
  });
});
