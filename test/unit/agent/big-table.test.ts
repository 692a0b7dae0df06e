// Big tables (issue 5): a TableFull over grpc-js's default 4 MiB receive
// limit installs; the run form arrives in pieces and is installed once
// whole; and while a big table is built, other LUNs of the agent are served.
import { expect } from 'chai';
import type { VdiskDevice } from '../../../src/agent/vdisk-device.js';
import { SegmentState } from '../../../src/table/index.js';
import type { TableFull, WireExtent } from '../../../src/wire/proto-types.js';
import type { FakeStream } from './fake-controller.js';
import { BPS, BS, SEG, SEGS, VDISK_ID, exportOf, loginTo, normal, read10, tableFullOf, useRig, writeContainer, zero } from './rig.js';

const BIG_ID = '7e000000-1111-4222-8333-444455556666';

describe('agent daemon: big tables', function () {
  this.timeout(60_000);
  const fx = useRig({ holdTimeoutMs: 3000 });

  async function exportBoth(stream: FakeStream, bigSegments: number): Promise<void> {
    stream.send({
      body: 'exportSet',
      exportSet: { exports: [exportOf(), exportOf({ vdiskId: BIG_ID, vdiskName: 'big', lun: 1, size: bigSegments * SEG })] },
    });
    stream.send({ body: 'tableFull', tableFull: tableFullOf(VDISK_ID, SEGS, { extents: [normal(0, 2), zero(2, SEGS - 2)] }) });
    expect((await stream.take('tableAck')).tableAck).to.deep.equal({ vdiskId: VDISK_ID, version: 1 });
  }

  it('installs a TableFull of over 4 MiB in the extents form (one message, 100 000 extents)', async () => {
    const { stream } = await fx.ctl.accept();
    const n = 100_000;
    stream.send({ body: 'exportSet', exportSet: { exports: [exportOf({ vdiskId: BIG_ID, vdiskName: 'big', size: n * SEG })] } });
    // Neighbours at offsets 0 and 2 never merge into one extent: n extents of ~52 bytes each.
    const extents: WireExtent[] = [];
    for (let s = 0; s < n; s++) extents.push(normal(s, 1, s % 2 === 0 ? 0 : 2));
    stream.send({ body: 'tableFull', tableFull: tableFullOf(BIG_ID, n, { extents }) });
    expect((await stream.take('tableAck', 30_000)).tableAck).to.deep.equal({ vdiskId: BIG_ID, version: 1 });
    const t = (fx.rig.devices.get(BIG_ID) as VdiskDevice).table;
    expect([t.containerOffsetOf(0), t.containerOffsetOf(n - 1), t.stateOf(n - 1)]).to.deep.equal([0, 2, SegmentState.Normal]);
    // The last segment reads container offset 2.
    const data = Buffer.alloc(BS, 0x5c);
    writeContainer(fx.rig.containerPath, 2 * SEG, data);
    const ini = await loginTo(fx.rig.port);
    fx.initiators.push(ini);
    const r = await ini.scsi(read10((n - 1) * BPS, 1), { read: BS });
    expect(r.status).to.equal(0);
    expect(r.data.equals(data)).to.equal(true);
  });

  it('installs a table that comes in the run form in pieces only once the last piece is in, and asks again for a broken one', async () => {
    const { stream, register } = await fx.ctl.accept();
    expect(register.tableRuns).to.equal(true);
    stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    // SEGS = 8: 0-1 normal @0, 2 zero | 3 normal @5, 4-6 zero | 7 invalid.
    const piece = (first: number, counts: number[], states: number[], containers: number[], offsets: number[], more: boolean): TableFull =>
      tableFullOf(VDISK_ID, SEGS, { firstSegment: first, runCounts: counts, runStates: states, runContainers: containers, runOffsets: offsets, more });
    const N = SegmentState.Normal;
    const Z = SegmentState.Zero;
    stream.send({ body: 'tableFull', tableFull: piece(0, [2, 1], [N, Z], [1, 0], [0, 0], true) });
    stream.send({ body: 'tableFull', tableFull: piece(3, [1, 3], [N, Z], [1, 0], [5, 0], true) });
    expect(await stream.none('tableAck', 300)).to.equal(true);
    stream.send({ body: 'tableFull', tableFull: piece(7, [1], [SegmentState.Invalid], [0], [0], false) });
    expect((await stream.take('tableAck')).tableAck).to.deep.equal({ vdiskId: VDISK_ID, version: 1 });
    const t = (fx.rig.devices.get(VDISK_ID) as VdiskDevice).table;
    expect([0, 1, 2, 3, 4, 7].map((s) => [t.stateOf(s), t.containerOffsetOf(s)])).to.deep.equal([
      [N, 0],
      [N, 1],
      [Z, 0],
      [N, 5],
      [Z, 0],
      [SegmentState.Invalid, 0],
    ]);
    // Version 2: the second piece skips a segment; the table is not installed and the agent asks for it.
    stream.send({ body: 'tableFull', tableFull: { ...piece(0, [3], [Z], [0], [0], true), version: 2 } });
    stream.send({ body: 'tableFull', tableFull: { ...piece(4, [4], [Z], [0], [0], false), version: 2 } });
    const req = await stream.take('tableRequest');
    expect(req.tableRequest.vdiskId).to.equal(VDISK_ID);
    expect(req.tableRequest.reason).to.match(/segment 4 of version 2: starts at segment 4, expected 3/);
    expect(await stream.none('tableAck', 200)).to.equal(true);
    expect(fx.rig.devices.get(VDISK_ID)?.version).to.equal(1);
  });

  it('serves READs on another LUN while an 8 M-segment table is built and installed', async () => {
    const { stream } = await fx.ctl.accept();
    const big = 8 << 20;
    await exportBoth(stream, big);
    const ini = await loginTo(fx.rig.port);
    fx.initiators.push(ini);
    let stop = false;
    let during = 0;
    let acked = false;
    const reads = (async () => {
      while (!stop) {
        const r = await ini.scsi(read10(0, 8), { read: 8 * BS });
        if (r.status !== 0) throw new Error(`READ on LUN 0 failed: status ${r.status}`);
        if (!acked) during++;
      }
    })();
    // Let the reads get going, then send one thick table (one run: built in slices, not diffed).
    while (during < 3) await new Promise((r) => setTimeout(r, 5));
    during = 0;
    stream.send({
      body: 'tableFull',
      tableFull: tableFullOf(BIG_ID, big, { firstSegment: 0, runCounts: [big], runStates: [SegmentState.Normal], runContainers: [1], runOffsets: [0], more: false }),
    });
    const ack = await stream.take('tableAck', 30_000);
    acked = true;
    const completed = during;
    stop = true;
    await reads;
    expect(ack.tableAck).to.deep.equal({ vdiskId: BIG_ID, version: 1 });
    expect((fx.rig.devices.get(BIG_ID) as VdiskDevice).table.containerOffsetOf(big - 1)).to.equal(big - 1);
    // Built in 32 slices of 256 Ki segments, each followed by a turn of the event loop.
    expect(completed).to.be.at.least(5);
  });
});
