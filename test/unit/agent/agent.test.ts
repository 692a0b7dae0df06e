import { expect } from 'chai';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import { FakeController, type FakeStream } from './fake-controller.js';
import {
  BPS,
  BS,
  CONTAINER_ID,
  DATA_OFFSET,
  IQN,
  SEG,
  SEGS,
  VDISK_ID,
  deferred,
  expectedNaa,
  exportOf,
  inquiryVpd,
  loginTo,
  normal,
  pattern,
  read10,
  until,
  useRig,
  write10,
  zero,
  readContainer,
  writeContainer,
} from './rig.js';
import type { RawInitiator } from '../../support/raw-initiator.js';
import { unmapCdb, unmapList } from '../../support/cdb.js';

/** ExportSet + TableFull (segment 0-1 normal at offsets 0-1, the rest zero), acked. */
async function exportDisk(stream: FakeStream, version = 1): Promise<void> {
  stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
  stream.send({
    body: 'tableFull',
    tableFull: {
      vdiskId: VDISK_ID,
      version,
      segmentSize: SEG,
      blockSize: BS,
      segmentCount: SEGS,
      containers: [CONTAINER_ID],
      extents: [normal(0, 2), zero(2, SEGS - 2)],
    },
  });
  const ack = await stream.take('tableAck');
  expect(ack.tableAck).to.deep.equal({ vdiskId: VDISK_ID, version });
}

describe('agent daemon', function () {
  this.timeout(20_000);
  const fx = useRig({ holdTimeoutMs: 3000 });

  async function login(): Promise<RawInitiator> {
    const i = await loginTo(fx.rig.port);
    fx.initiators.push(i);
    return i;
  }

  it('registers with its name, portals and the containers its globs find', async () => {
    const { register } = await fx.ctl.accept();
    expect(register.agentName).to.equal('agent-a');
    expect(register.portals).to.deep.equal([`127.0.0.1:${fx.rig.port}`]);
    // ContainerRef's reachability and kind (issue 15) ride along.
    expect(register.containers).to.deep.equal([
      { id: CONTAINER_ID, path: fx.rig.containerPath, size: 4 << 20, dataOffset: DATA_OFFSET, reachable: true, error: '', kind: 'file' },
    ]);
    expect(register.tables).to.deep.equal([]);
  });

  it('sends heartbeats at the interval the Welcome names', async () => {
    const { stream } = await fx.ctl.accept({ heartbeatIntervalMs: 100 });
    const a = await stream.take('heartbeat', 2000);
    const b = await stream.take('heartbeat', 2000);
    expect(b.heartbeat.seq).to.be.greaterThan(a.heartbeat.seq);
    expect(b.heartbeat.heldIos).to.equal(0);
  });

  it('serves an exported vdisk as a LUN whose identity comes from the vdisk id', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const vpd = await ini.scsi(inquiryVpd(0x83), { read: 255 });
    expect(vpd.status).to.equal(0);
    // first designator: code set binary, NAA (type 3), LU association, 16 bytes
    expect([...vpd.data.subarray(4, 8)]).to.deep.equal([0x01, 0x03, 0x00, 0x10]);
    expect(vpd.data.subarray(8, 24).equals(expectedNaa(VDISK_ID))).to.equal(true);

    // a write to a normal segment lands at its container offset and reads back
    const data = pattern(8, 0x11);
    const w = await ini.scsi(write10(BPS + 16, 8), { write: data });
    expect(w.status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, SEG + 16 * BS, 8 * BS).equals(data)).to.equal(true);
    const r = await ini.scsi(read10(BPS + 16, 8), { read: 8 * BS });
    expect(r.data.equals(data)).to.equal(true);
    // a zero segment reads as zeros
    const z = await ini.scsi(read10(3 * BPS, 4), { read: 4 * BS });
    expect(z.status).to.equal(0);
    expect(z.data.equals(Buffer.alloc(4 * BS))).to.equal(true);
  });

  it('acks a delta only after old-version I/O on the changed segment has drained', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const gate = deferred();
    fx.rig.gate.writes = gate.promise;
    const data = pattern(4, 0x22);
    const write = ini.scsi(write10(0, 4), { write: data });
    await until(() => fx.rig.gate.writesStarted > 0, 5000, 'the write to reach the container');
    // segment 0 moves to container offset 5; the write started under version 1 is still in flight
    stream.send({
      body: 'tableDelta',
      tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(0, 1, 5)] },
    });
    expect(await stream.none('tableAck', 400)).to.equal(true);
    fx.rig.gate.writes = null;
    gate.resolve();
    expect((await write).status).to.equal(0);
    const ack = await stream.take('tableAck');
    expect(ack.tableAck).to.deep.equal({ vdiskId: VDISK_ID, version: 2 });
    expect(fx.rig.agent.exports()[0]?.tableVersion).to.equal(2);
  });

  it('a delta on an idle segment behind one that drains waits its turn: both acked in order, after the drain', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const gate = deferred();
    fx.rig.gate.writes = gate.promise;
    const write = ini.scsi(write10(0, 1), { write: pattern(1, 0x24) });
    await until(() => fx.rig.gate.writesStarted > 0, 5000, 'the write to reach the container');
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(0, 1, 5)] } });
    // Segment 3 has nothing in flight, but version 3 must not be installed (or acked) before version 2.
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 2, toVersion: 3, segmentCount: SEGS, extents: [normal(3, 1, 6)] } });
    expect(await stream.none('tableAck', 300)).to.equal(true);
    expect(await stream.none('tableRequest', 1)).to.equal(true);
    fx.rig.gate.writes = null;
    gate.resolve();
    expect((await write).status).to.equal(0);
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    expect((await stream.take('tableAck')).tableAck.version).to.equal(3);
    // With nothing queued or in flight, the next one is installed and acked at once.
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 3, toVersion: 4, segmentCount: SEGS, extents: [normal(0, 1, 7)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(4);
    expect(fx.rig.agent.exports()[0]?.tableVersion).to.equal(4);
  });

  it('does not ack, and stays fenced, when a Fence overtakes a draining install', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const gate = deferred();
    fx.rig.gate.writes = gate.promise;
    const write = ini.scsi(write10(0, 1), { write: pattern(1, 0x23) });
    await until(() => fx.rig.gate.writesStarted > 0, 5000, 'the write to reach the container');
    stream.send({
      body: 'tableDelta',
      tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(0, 1, 5)] },
    });
    await new Promise((r) => setTimeout(r, 100));
    stream.send({ body: 'fence', fence: { vdiskId: VDISK_ID, reason: 'ack timeout' } });
    expect((await stream.take('tableRequest')).tableRequest.haveVersion).to.equal(0);
    fx.rig.gate.writes = null;
    gate.resolve();
    expect((await write).status).to.equal(0);
    expect(await stream.none('tableAck', 300)).to.equal(true);
    const read = ini.scsi(read10(BPS, 1), { read: BS });
    const f = await stream.take('fault');
    expect(f.fault.state).to.equal(SegmentState.Invalid);
    stream.send({
      body: 'tableFull',
      tableFull: { vdiskId: VDISK_ID, version: 3, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 2), zero(2, 6)] },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(3);
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 3, senseKey: 0, asc: 0, ascq: 0, reason: '' } });
    expect((await read).status).to.equal(0);
  });

  it('asks for the whole table once on a version gap, and acks the TableFull that answers', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 3, toVersion: 4, segmentCount: SEGS, extents: [normal(2, 1)] } });
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 4, toVersion: 5, segmentCount: SEGS, extents: [normal(3, 1)] } });
    const req = await stream.take('tableRequest');
    expect(req.tableRequest.vdiskId).to.equal(VDISK_ID);
    expect(req.tableRequest.haveVersion).to.equal(1);
    expect(await stream.none('tableRequest', 300)).to.equal(true);
    expect(await stream.none('tableAck', 1)).to.equal(true);
    stream.send({
      body: 'tableFull',
      tableFull: { vdiskId: VDISK_ID, version: 5, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 4), zero(4, 4)] },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(5);
    // and deltas apply again after it
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 5, toVersion: 6, segmentCount: SEGS, extents: [normal(4, 1)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(6);
  });

  it('on Fence holds I/O, ignores deltas and asks for the whole table', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    stream.send({ body: 'fence', fence: { vdiskId: VDISK_ID, reason: 'ack timeout' } });
    const req = await stream.take('tableRequest');
    expect(req.tableRequest.haveVersion).to.equal(0);
    // a read of a normal segment is now held: it faults as invalid
    const read = ini.scsi(read10(0, 1), { read: BS });
    const f = await stream.take('fault');
    expect(f.fault.state).to.equal(SegmentState.Invalid);
    expect(f.fault.op).to.equal(IoOp.Read);
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(2, 1)] } });
    expect(await stream.none('tableAck', 300)).to.equal(true);
    stream.send({
      body: 'tableFull',
      tableFull: { vdiskId: VDISK_ID, version: 2, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 3), zero(3, 5)] },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 2, senseKey: 0, asc: 0, ascq: 0, reason: '' } });
    expect((await read).status).to.equal(0);
  });

  it('holds a write to a zero segment until the controller maps it and answers RETRY', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const data = pattern(16, 0x33);
    const lba = 2 * BPS + 8;
    const write = ini.scsi(write10(lba, 16), { write: data });
    const f = await stream.take('fault');
    expect(f.fault).to.include({ vdiskId: VDISK_ID, tableVersion: 1, segment: 2, op: IoOp.Write, lba, blocks: 16, state: SegmentState.Zero });
    // the controller allocates segment 2 at container offset 6, pushes, waits for the ack, answers
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(2, 1, 6)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 2, senseKey: 0, asc: 0, ascq: 0, reason: 'allocated' } });
    expect((await write).status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, 6 * SEG + 8 * BS, 16 * BS).equals(data)).to.equal(true);
  });

  it('fails a held write with the sense the controller chooses', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const write = ini.scsi(write10(5 * BPS, 1), { write: pattern(1, 0x44) });
    const f = await stream.take('fault');
    // DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27/07)
    stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Fail, tableVersion: 0, senseKey: 7, asc: 0x27, ascq: 0x07, reason: 'container full' } });
    const r = await write;
    expect(r.status).to.equal(2);
    expect(r.sense![2]! & 0x0f).to.equal(7);
    expect([r.sense![12], r.sense![13]]).to.deep.equal([0x27, 0x07]);
  });

  it('releases whole unmapped segments through the controller and completes once they are zero', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const unmap = ini.scsi(unmapCdb(24), { write: unmapList(BPS, BPS) });
    const rel = await stream.take('release');
    expect(rel.release).to.include({ vdiskId: VDISK_ID, tableVersion: 1, firstSegment: 1, segmentCount: 1 });
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [zero(1, 1)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'releaseReply', releaseReply: { requestId: rel.release.requestId, ok: true, tableVersion: 2, error: '' } });
    expect((await unmap).status).to.equal(0);
  });

  it('zeroes unmapped segments in place when the controller is away', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await ini.scsi(write10(0, 2), { write: pattern(2, 0x12) })).status).to.equal(0);
    await fx.ctl.stop();
    await until(() => !fx.rig.agent.link.connected, 5000, 'the agent to notice');
    expect((await ini.scsi(unmapCdb(24), { write: unmapList(0, BPS) })).status).to.equal(0);
    const r = await ini.scsi(read10(0, 2), { read: 2 * BS });
    expect(r.data.equals(Buffer.alloc(2 * BS))).to.equal(true);
  });

  it('keeps serving normal and zero segments while the controller is gone; faults fail NOT READY 02/04/0A after the hold timeout', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const data = pattern(4, 0x55);
    expect((await ini.scsi(write10(4, 4), { write: data })).status).to.equal(0);
    await fx.ctl.stop();
    await until(() => !fx.rig.agent.link.connected, 5000, 'the agent to notice');
    const r = await ini.scsi(read10(4, 4), { read: 4 * BS });
    expect(r.status).to.equal(0);
    expect(r.data.equals(data)).to.equal(true);
    expect((await ini.scsi(write10(BPS, 4), { write: pattern(4, 0x56) })).status).to.equal(0);
    const z = await ini.scsi(read10(7 * BPS, 2), { read: 2 * BS });
    expect(z.status).to.equal(0);
    expect(z.data.equals(Buffer.alloc(2 * BS))).to.equal(true);
    const held = await ini.scsi(write10(3 * BPS, 1), { write: pattern(1, 0x57) });
    expect(held.status).to.equal(2);
    expect(held.sense![2]! & 0x0f).to.equal(2);
    expect([held.sense![12], held.sense![13]]).to.deep.equal([0x04, 0x0a]);
  });

  it('reconnects with backoff, re-registers with the tables it holds and re-sends held faults', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const port = fx.ctl.port;
    await fx.ctl.stop();
    await until(() => !fx.rig.agent.link.connected, 5000, 'the agent to notice');
    // a write to a zero segment while the controller is away: held, fault pending
    const data = pattern(2, 0x66);
    const write = ini.scsi(write10(4 * BPS, 2), { write: data });
    await until(() => fx.rig.agent.heldIos > 0, 5000, 'the write to be held');
    await new Promise((r) => setTimeout(r, 300)); // a few failed attempts
    fx.ctl = await FakeController.start(port);
    const s2 = await fx.ctl.nextStream(5000);
    const reg = await s2.take('register');
    expect(reg.register.tables).to.deep.equal([{ vdiskId: VDISK_ID, version: 1 }]);
    s2.welcome();
    s2.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    const f = await s2.take('fault');
    expect(f.fault).to.include({ segment: 4, op: IoOp.Write, state: SegmentState.Zero });
    s2.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(4, 1, 7)] } });
    expect((await s2.take('tableAck')).tableAck.version).to.equal(2);
    s2.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 2, senseKey: 0, asc: 0, ascq: 0, reason: '' } });
    expect((await write).status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, 7 * SEG, 2 * BS).equals(data)).to.equal(true);
    expect(fx.rig.agent.link.connectAttempts).to.be.greaterThan(2);
  });

  it('reconnects when the controller ends the stream', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    stream.end();
    const s2 = await fx.ctl.nextStream(5000);
    const reg = await s2.take('register');
    expect(reg.register.tables).to.deep.equal([{ vdiskId: VDISK_ID, version: 1 }]);
  });

  it('logs and ignores messages it cannot use, and goes on working', async () => {
    const { stream } = await fx.ctl.accept();
    stream.send(Buffer.from([0xff, 0xff, 0xff, 0x0f, 0x01])); // does not decode
    stream.send(Buffer.alloc(0)); // a ControllerMessage with nothing in it
    stream.send({ body: 'tableFull', tableFull: { vdiskId: 'no-such-vdisk', version: 1, segmentSize: SEG, blockSize: BS, segmentCount: 1, containers: [], extents: [zero(0, 1)] } });
    stream.send({ body: 'faultReply', faultReply: { faultId: 999, action: FaultAction.Retry, tableVersion: 1, senseKey: 0, asc: 0, ascq: 0, reason: '' } });
    stream.send({ body: 'exportSet', exportSet: { exports: [exportOf({ vdiskId: 'bad', blockSize: 1000 })] } });
    stream.send({ body: 'error', error: { message: 'something you sent', fatal: false } });
    await exportDisk(stream);
    // a TableFull whose extents do not cover the table is dropped; the old table stays
    stream.send({
      body: 'tableFull',
      tableFull: { vdiskId: VDISK_ID, version: 9, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [], extents: [zero(0, 2)] },
    });
    expect(await stream.none('tableAck', 300)).to.equal(true);
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(2, 1)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    expect(fx.rig.agent.link.connectAttempts).to.equal(1);
  });

  it('removes the LUN and its target when the export goes away', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    stream.send({ body: 'exportSet', exportSet: { exports: [] } });
    await until(() => fx.rig.agent.exports().length === 0, 5000, 'the export to go');
    let failed = false;
    try {
      await loginTo(fx.rig.port, IQN);
    } catch {
      failed = true;
    }
    expect(failed).to.equal(true);
  });

  it('copies between container data areas and reports CopyDone', async () => {
    const { stream } = await fx.ctl.accept();
    const src = pattern(2 * BPS, 0x77); // two segments' worth
    writeContainer(fx.rig.containerPath, 10 * SEG, src);
    stream.send({
      body: 'copyCommand',
      copyCommand: { commandId: 42, srcContainer: CONTAINER_ID, srcOffset: 10 * SEG, dstContainer: CONTAINER_ID, dstOffset: 20 * SEG, length: 2 * SEG },
    });
    const done = await stream.take('copyDone');
    expect(done.copyDone).to.deep.equal({ commandId: 42, ok: true, error: '' });
    expect(readContainer(fx.rig.containerPath, 20 * SEG, 2 * SEG).equals(src)).to.equal(true);
    stream.send({
      body: 'copyCommand',
      copyCommand: { commandId: 43, srcContainer: 'deadbeef-0000-4000-8000-000000000000', srcOffset: 0, dstContainer: CONTAINER_ID, dstOffset: 0, length: SEG },
    });
    const bad = await stream.take('copyDone');
    expect(bad.copyDone.ok).to.equal(false);
    expect(bad.copyDone.error).to.match(/source container not reachable/);
  });
});
