// The agent daemon's half of the durability contract, end to end over the
// wire with a fake controller: a thin first write allocated by a lazily
// committed delta, then SYNCHRONIZE CACHE or a FUA write, which completes
// only on the controller's SyncReply (and fails WRITE ERROR when the
// controller lost the version); the request survives a broken stream.
import { expect } from 'chai';
import { FaultAction } from '../../../src/wire/proto-types.js';
import { IoOp, SegmentState } from '../../../src/table/index.js';
import type { FakeStream } from './fake-controller.js';
import { BPS, BS, CONTAINER_ID, SEG, SEGS, VDISK_ID, exportOf, loginTo, normal, pattern, readContainer, until, useRig, write10, zero } from './rig.js';
import type { RawInitiator, ScsiResult } from '../../support/raw-initiator.js';

/** SYNCHRONIZE CACHE(10) over the whole LU. */
const syncCache10 = (): Buffer => Buffer.from([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/** WRITE(10) with FUA. */
function write10Fua(lba: number, blocks: number): Buffer {
  const c = write10(lba, blocks);
  c[1] = 0x08;
  return c;
}

function senseOf(r: ScsiResult): [number, number, number] {
  const s = r.sense as Buffer;
  return [s[2]! & 0x0f, s[12]!, s[13]!];
}

/** ExportSet + a durable TableFull: segments 0-1 normal, the rest zero. */
async function exportDisk(stream: FakeStream): Promise<void> {
  stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
  stream.send({
    body: 'tableFull',
    tableFull: { vdiskId: VDISK_ID, version: 1, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 2), zero(2, SEGS - 2)] },
  });
  expect((await stream.take('tableAck')).tableAck.version).to.equal(1);
}

/** A thin first write to segment 3: the fault, the lazily committed allocation (version 2), the retry. */
async function firstWrite(stream: FakeStream, ini: RawInitiator, data: Buffer): Promise<ScsiResult> {
  const write = ini.scsi(write10(3 * BPS, data.length / BS), { write: data });
  const f = await stream.take('fault');
  expect(f.fault).to.include({ segment: 3, op: IoOp.Write, state: SegmentState.Zero });
  stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(3, 1, 5)], lazy: true } });
  expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
  stream.send({ body: 'faultReply', faultReply: { faultId: f.fault.faultId, action: FaultAction.Retry, tableVersion: 2, senseKey: 0, asc: 0, ascq: 0, reason: '' } });
  return write;
}

describe('agent daemon: flushes and FUA writes wait for lazily committed allocations', function () {
  this.timeout(30_000);
  const fx = useRig({ holdTimeoutMs: 5000, backgroundSyncMs: 0 });

  async function login(): Promise<RawInitiator> {
    const i = await loginTo(fx.rig.port);
    fx.initiators.push(i);
    return i;
  }

  it('with durable tables only, SYNCHRONIZE CACHE and FUA writes complete without asking the controller', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await ini.scsi(write10Fua(0, 2), { write: pattern(2, 0x31) })).status).to.equal(0);
    expect((await ini.scsi(syncCache10())).status).to.equal(0);
    expect(await stream.none('syncRequest', 300)).to.equal(true);
  });

  it('a SYNCHRONIZE CACHE after a lazily allocated write completes on SyncReply ok; the next one does not ask', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const data = pattern(4, 0x32);
    expect((await firstWrite(stream, ini, data)).status, 'the write itself is not held').to.equal(0);
    expect(await stream.none('syncRequest', 200)).to.equal(true);
    const sync = ini.scsi(syncCache10());
    const req = await stream.take('syncRequest');
    expect(req.syncRequest).to.include({ vdiskId: VDISK_ID, version: 2 });
    let done = false;
    void sync.then(() => {
      done = true;
    });
    expect(await stream.none('syncRequest', 200), 'one request').to.equal(true);
    expect(done).to.equal(false);
    stream.send({ body: 'syncReply', syncReply: { requestId: req.syncRequest.requestId, ok: true, durableVersion: 2, reason: '' } });
    expect((await sync).status).to.equal(0);
    expect(readContainer(fx.rig.containerPath, 5 * SEG, data.length).equals(data)).to.equal(true);
    expect((await ini.scsi(syncCache10())).status).to.equal(0);
    expect(await stream.none('syncRequest', 200)).to.equal(true);
  });

  it('a FUA write whose allocation the controller lost fails MEDIUM ERROR 03/0C/00', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await firstWrite(stream, ini, pattern(1, 0x33))).status).to.equal(0);
    const w = ini.scsi(write10Fua(3 * BPS + 8, 1), { write: pattern(1, 0x34) });
    const req = await stream.take('syncRequest');
    expect(req.syncRequest).to.include({ vdiskId: VDISK_ID, version: 2 });
    stream.send({ body: 'syncReply', syncReply: { requestId: req.syncRequest.requestId, ok: false, durableVersion: 1, reason: 'database at version 1' } });
    const r = await w;
    expect(r.status).to.equal(2);
    expect(senseOf(r)).to.deep.equal([0x03, 0x0c, 0x00]);
  });

  it('a request outstanding when the stream breaks is sent again on the next stream', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await firstWrite(stream, ini, pattern(1, 0x35))).status).to.equal(0);
    const sync = ini.scsi(syncCache10());
    const first = await stream.take('syncRequest');
    stream.end();
    const s2 = await fx.ctl.nextStream(5000);
    const reg = await s2.take('register');
    expect(reg.register.tables).to.deep.equal([{ vdiskId: VDISK_ID, version: 2 }]);
    s2.welcome();
    const again = await s2.take('syncRequest');
    expect(again.syncRequest).to.deep.equal(first.syncRequest);
    await until(() => fx.rig.agent.heldIos === 1, 5000, 'the flush to be held');
    s2.send({ body: 'syncReply', syncReply: { requestId: again.syncRequest.requestId, ok: true, durableVersion: 2, reason: '' } });
    expect((await sync).status).to.equal(0);
  });

  it('a whole table after a reconnect does not vouch for the lazy version held before it: the next flush asks about that one', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await firstWrite(stream, ini, pattern(1, 0x37))).status).to.equal(0);
    // The controller lost version 2 (power loss) and reconciles: version 3, durable, as a whole table.
    stream.end();
    const s2 = await fx.ctl.nextStream(5000);
    expect((await s2.take('register')).register.tables).to.deep.equal([{ vdiskId: VDISK_ID, version: 2 }]);
    s2.welcome();
    s2.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    s2.send({
      body: 'tableFull',
      tableFull: { vdiskId: VDISK_ID, version: 3, segmentSize: SEG, blockSize: BS, segmentCount: SEGS, containers: [CONTAINER_ID], extents: [normal(0, 2), zero(2, SEGS - 2)] },
    });
    expect((await s2.take('tableAck')).tableAck.version).to.equal(3);
    const sync = ini.scsi(syncCache10());
    const req = await s2.take('syncRequest');
    expect(req.syncRequest).to.include({ vdiskId: VDISK_ID, version: 2 });
    s2.send({ body: 'syncReply', syncReply: { requestId: req.syncRequest.requestId, ok: false, durableVersion: 3, reason: 'version 2 lost with a power loss' } });
    const r = await sync;
    expect(r.status).to.equal(2);
    expect(senseOf(r)).to.deep.equal([0x03, 0x0c, 0x00]);
    // Reported once: the initiator's next SYNCHRONIZE CACHE completes.
    expect((await ini.scsi(syncCache10())).status).to.equal(0);
    expect(await s2.none('syncRequest', 200)).to.equal(true);
  });

  it('a non-lazy delta after the lazy one confirms it: no request', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    expect((await firstWrite(stream, ini, pattern(1, 0x36))).status).to.equal(0);
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 2, toVersion: 3, segmentCount: SEGS, extents: [normal(4, 1, 6)] } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(3);
    expect((await ini.scsi(syncCache10())).status).to.equal(0);
    expect(await stream.none('syncRequest', 200)).to.equal(true);
  });
});

describe('agent daemon: a lazily committed version is confirmed in the background', function () {
  this.timeout(30_000);
  const fx = useRig({ holdTimeoutMs: 5000, backgroundSyncMs: 100 });

  it('asks once on its own; once answered, SYNCHRONIZE CACHE and FUA writes need not ask (nor the controller be there)', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await loginTo(fx.rig.port);
    fx.initiators.push(ini);
    expect((await firstWrite(stream, ini, pattern(1, 0x38))).status).to.equal(0);
    const req = await stream.take('syncRequest');
    expect(req.syncRequest).to.include({ vdiskId: VDISK_ID, version: 2 });
    expect(fx.rig.agent.heldIos, 'no I/O waits for it').to.equal(0);
    stream.send({ body: 'syncReply', syncReply: { requestId: req.syncRequest.requestId, ok: true, durableVersion: 2, reason: '' } });
    await until(() => fx.rig.agent.syncs.held === 0, 5000, 'the answer');
    await fx.ctl.stop();
    await until(() => !fx.rig.agent.link.connected, 5000, 'the agent to notice');
    expect((await ini.scsi(write10Fua(3 * BPS + 1, 1), { write: pattern(1, 0x39) })).status).to.equal(0);
    expect((await ini.scsi(syncCache10())).status).to.equal(0);
  });

  it('a lost version found in the background still fails the next SYNCHRONIZE CACHE', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await loginTo(fx.rig.port);
    fx.initiators.push(ini);
    expect((await firstWrite(stream, ini, pattern(1, 0x3a))).status).to.equal(0);
    const bg = await stream.take('syncRequest');
    stream.send({ body: 'syncReply', syncReply: { requestId: bg.syncRequest.requestId, ok: false, durableVersion: 1, reason: 'database at version 1' } });
    await until(() => fx.rig.agent.syncs.held === 0, 5000, 'the answer');
    const sync = ini.scsi(syncCache10());
    const req = await stream.take('syncRequest');
    expect(req.syncRequest).to.include({ vdiskId: VDISK_ID, version: 2 });
    stream.send({ body: 'syncReply', syncReply: { requestId: req.syncRequest.requestId, ok: false, durableVersion: 1, reason: 'database at version 1' } });
    const r = await sync;
    expect(r.status).to.equal(2);
    expect(senseOf(r)).to.deep.equal([0x03, 0x0c, 0x00]);
  });
});
