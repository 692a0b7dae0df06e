// The agent daemon with a mirrored vdisk, over the wire: legs from the
// TableFull, near from the ContainerSet, a leg fault naming the failed
// container, answered by a table without that leg.
import { expect } from 'chai';
import { join } from 'node:path';
import { initContainer } from '../../../src/container/init.js';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import type { RawInitiator } from '../../support/raw-initiator.js';
import { BS, CONTAINER_ID, DATA_OFFSET, SEG, SEGS, VDISK_ID, exportOf, loginTo, pattern, read10, readContainer, useRig, write10, writeContainer, zero } from './rig.js';

const C1 = CONTAINER_ID;
const C2 = 'c0c0c0c0-0000-4000-8000-0000000000c2';

describe('agent daemon: mirrored vdisk', function () {
  this.timeout(20_000);
  const fx = useRig({ holdTimeoutMs: 3000 });
  let c2Path: string;

  async function login(): Promise<RawInitiator> {
    const i = await loginTo(fx.rig.port);
    fx.initiators.push(i);
    return i;
  }

  beforeEach(async () => {
    c2Path = join(fx.rig.dir, 'c2.img');
    await initContainer(c2Path, { size: 4 << 20, id: C2, segmentSize: SEG, dataOffset: DATA_OFFSET });
    await fx.rig.agent.rescan('test: second container');
  });

  it('writes both legs, reads the near one, and holds a write whose leg failed until the leg is dropped', async () => {
    const { stream } = await fx.ctl.accept();
    stream.send({ body: 'containerSet', containerSet: { containers: [{ id: C1, shared: false }, { id: C2, shared: false, near: true }] } });
    stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    stream.send({
      body: 'tableFull',
      tableFull: {
        vdiskId: VDISK_ID,
        version: 1,
        segmentSize: SEG,
        blockSize: BS,
        segmentCount: SEGS,
        containers: [C1, C2],
        // Segment 0: c1@0 and c2@3.
        extents: [{ first: 0, count: 1, state: SegmentState.Normal, container: C1, offset: 0, legs: { list: [{ container: C2, offset: 3 }] } }, zero(1, SEGS - 1)],
      },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(1);
    const ini = await login();

    const data = pattern(8, 0x51);
    expect((await ini.scsi(write10(8, 8), { write: data })).status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, 8 * BS, 8 * BS).equals(data)).to.equal(true);
    expect(readContainer(c2Path, 3 * SEG + 8 * BS, 8 * BS).equals(data)).to.equal(true);

    // Different bytes behind each leg: what a read returns says which leg served it.
    writeContainer(fx.rig.containerPath, 0, Buffer.alloc(BS, 0x01));
    writeContainer(c2Path, 3 * SEG, Buffer.alloc(BS, 0x02));
    const r = await ini.scsi(read10(0, 1), { read: BS });
    expect(r.status).to.equal(0);
    expect(r.data![0]).to.equal(0x02);

    // c2 fails writes: a leg fault naming it, the write held.
    fx.rig.gate.failing = new Set([C2]);
    const data2 = pattern(8, 0x52);
    const write = ini.scsi(write10(16, 8), { write: data2 });
    const f = await stream.take('fault');
    expect(f.fault).to.deep.include({ vdiskId: VDISK_ID, tableVersion: 1, segment: 0, op: IoOp.Write, lba: 16, blocks: 8, state: SegmentState.Normal, failedContainer: C2 });
    expect(f.fault.detail).to.match(/EIO/);
    // The controller drops the leg, pushes, and answers RETRY at that version.
    stream.send({
      body: 'tableDelta',
      tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [{ first: 0, count: 1, state: SegmentState.Normal, container: C1, offset: 0 }] },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 2, senseKey: 0, asc: 0, ascq: 0, reason: 'leg dropped' } });
    expect((await write).status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, 16 * BS, 8 * BS).equals(data2)).to.equal(true);
    // One copy now: reads come from c1.
    expect((await ini.scsi(read10(0, 1), { read: BS })).data![0]).to.equal(0x01);
  });
});
