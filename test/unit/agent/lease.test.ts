// Agent leases, agent side, against a fake controller: once the lease runs
// out the agent keeps serving normal segments but holds I/O to zero and
// no-write segments (the controller may have allocated or copied them behind
// its back), until it has reconnected and installed the tables the
// controller sends; such I/O fails NOT READY 02/04/0A after the hold timeout.
import { expect } from 'chai';
import { SegmentState } from '../../../src/table/index.js';
import type { WireExtent } from '../../../src/wire/proto-types.js';
import type { RawInitiator } from '../../support/raw-initiator.js';
import { FakeController, type FakeStream } from './fake-controller.js';
import { BPS, BS, CONTAINER_ID, SEG, SEGS, VDISK_ID, exportOf, loginTo, normal, pattern, read10, startRig, tableFullOf, until, write10, zero, type Rig, writeContainer } from './rig.js';

const LEASE_MS = 500;

function noWrite(first: number, count: number, offset = first): WireExtent {
  return { first, count, state: SegmentState.NoWrite, container: CONTAINER_ID, offset };
}

/** Answers every heartbeat on `stream` with HeartbeatReply until stopped. */
function answerBeats(stream: FakeStream): { stop: () => void } {
  let on = true;
  void (async () => {
    while (on && !stream.ended) {
      try {
        const hb = await stream.take('heartbeat', 200);
        if (on) stream.send({ body: 'heartbeatReply', heartbeatReply: { seq: hb.heartbeat.seq } });
      } catch {
        // none within 200 ms: look again
      }
    }
  })();
  return {
    stop: () => {
      on = false;
    },
  };
}

describe('agent daemon: controller lease', function () {
  this.timeout(30_000);
  let ctl: FakeController;
  let rig: Rig | undefined;
  const initiators: RawInitiator[] = [];
  const answerers: { stop: () => void }[] = [];

  afterEach(async () => {
    for (const a of answerers.splice(0)) a.stop();
    for (const i of initiators.splice(0)) i.destroy();
    await rig?.close();
    rig = undefined;
    await ctl.stop();
  });

  /** Segments 0-1 normal, 2 no-write (offset 2), 3-7 zero; lease granted and valid. */
  async function start(holdTimeoutMs: number): Promise<{ stream: FakeStream; ini: RawInitiator; r: Rig }> {
    ctl = await FakeController.start();
    const r = await startRig(ctl.address, { holdTimeoutMs });
    rig = r;
    const { stream } = await ctl.accept({ leaseMs: LEASE_MS, heartbeatIntervalMs: 100 });
    stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    stream.send({ body: 'tableFull', tableFull: tableFullOf(VDISK_ID, SEGS, { extents: [normal(0, 2), noWrite(2, 1), zero(3, SEGS - 3)] }) });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(1);
    answerers.push(answerBeats(stream));
    await until(() => r.agent.link.lease.state === 'valid', 5000, 'the lease to be valid');
    const ini = await loginTo(r.port);
    initiators.push(ini);
    return { stream, ini, r };
  }

  it('after the lease expires holds zero and no-write reads, serves normal ones, and serves the resynced table once back', async () => {
    const { ini, r } = await start(15_000);
    const mine = pattern(4, 0x31);
    expect((await ini.scsi(write10(8, 4), { write: mine })).status).to.equal(0);
    const shared = pattern(2, 0x32);
    writeContainer(r.containerPath, 2 * SEG, shared);
    // While the lease is valid a zero segment reads as zeros.
    const z = await ini.scsi(read10(4 * BPS, 2), { read: 2 * BS });
    expect(z.status).to.equal(0);
    expect(z.data.equals(Buffer.alloc(2 * BS))).to.equal(true);

    const port = ctl.port;
    await ctl.stop();
    await until(() => r.agent.link.lease.expired, 10_000, 'the lease to expire');

    // Normal segments: served.
    const n = await ini.scsi(read10(8, 4), { read: 4 * BS });
    expect(n.status).to.equal(0);
    expect(n.data.equals(mine)).to.equal(true);
    expect((await ini.scsi(write10(BPS, 2), { write: pattern(2, 0x33) })).status).to.equal(0);

    // Zero and no-write segments: held (one session each: the raw initiator runs one command at a time).
    const [i2, i3] = await Promise.all([loginTo(r.port), loginTo(r.port)]);
    initiators.push(i2, i3);
    const zeroRead = i2.scsi(read10(4 * BPS, 2), { read: 2 * BS });
    const sharedRead = i3.scsi(read10(2 * BPS, 2), { read: 2 * BS });
    let settled = 0;
    void zeroRead.then(() => settled++);
    void sharedRead.then(() => settled++);
    await until(() => r.agent.heldIos >= 2, 5000, 'both reads to be held');
    expect(settled).to.equal(0);

    // Meanwhile another agent wrote segment 4: the controller mapped it to offset 6.
    const theirs = pattern(2, 0x34);
    writeContainer(r.containerPath, 6 * SEG, theirs);
    ctl = await FakeController.start(port);
    const s2 = await ctl.nextStream(10_000);
    const reg = await s2.take('register');
    expect(reg.register.tables).to.deep.equal([{ vdiskId: VDISK_ID, version: 1 }]);
    s2.welcome({ leaseMs: LEASE_MS, heartbeatIntervalMs: 100 });
    s2.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
    s2.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [normal(4, 1, 6)] } });
    // Heartbeats are answered only after the tables, as the real controller orders them.
    answerers.push(answerBeats(s2));
    expect((await s2.take('tableAck')).tableAck.version).to.equal(2);

    const zr = await zeroRead;
    expect(zr.status).to.equal(0);
    expect(zr.data.equals(theirs), 'the held read sees the other agent\'s data, not stale zeros').to.equal(true);
    const sr = await sharedRead;
    expect(sr.status).to.equal(0);
    expect(sr.data.equals(shared)).to.equal(true);
    expect(r.agent.link.lease.state).to.equal('valid');
    // And zero segments read as zeros again without holding.
    const z7 = await ini.scsi(read10(7 * BPS, 1), { read: BS });
    expect(z7.status).to.equal(0);
    expect(z7.data.equals(Buffer.alloc(BS))).to.equal(true);
  });

  it('a read of a zero segment held for the lease fails NOT READY 02/04/0A after the hold timeout', async () => {
    const { ini, r } = await start(1500);
    await ctl.stop();
    await until(() => r.agent.link.lease.expired, 10_000, 'the lease to expire');
    const res = await ini.scsi(read10(5 * BPS, 1), { read: BS });
    expect(res.status).to.equal(2);
    expect(res.sense![2]! & 0x0f).to.equal(2);
    expect([res.sense![12], res.sense![13]]).to.deep.equal([0x04, 0x0a]);
    // Normal segments are still fine.
    expect((await ini.scsi(read10(0, 1), { read: BS })).status).to.equal(0);
  });

  it('a lease that expires while the stream stays up (answers stopped) is renewed by the next answer', async () => {
    const { stream, ini, r } = await start(15_000);
    for (const a of answerers.splice(0)) a.stop();
    await until(() => r.agent.link.lease.expired, 10_000, 'the lease to expire');
    const held = ini.scsi(read10(6 * BPS, 1), { read: BS });
    await until(() => r.agent.heldIos >= 1, 5000, 'the read to be held');
    answerers.push(answerBeats(stream));
    const res = await held;
    expect(res.status).to.equal(0);
    expect(res.data.equals(Buffer.alloc(BS))).to.equal(true);
    expect(r.agent.link.lease.state).to.equal('valid');
  });
});
