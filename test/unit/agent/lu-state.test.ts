import { expect } from 'chai';
import { LuEventScope, LuRequestKind, type LuStateMsg } from '../../../src/wire/proto-types.js';
import { FakeController, type FakeStream } from './fake-controller.js';
import { BS, SEGS, VDISK_ID, exportOf, loginTo, normal, read10, tableFullOf, until, useRig, write10, zero } from './rig.js';
import type { RawInitiator } from '../../support/raw-initiator.js';

// The agent's replica of a vdisk's LU state (the controller owns it): PROUT,
// RESERVE, MODE SELECT and LU reset go to the controller and complete with its LuReply;
// the state and unit attentions come with the table; conflicts and PRIN are
// answered locally.

async function exportDisk(stream: FakeStream, luState?: LuStateMsg): Promise<void> {
  stream.send({ body: 'exportSet', exportSet: { exports: [exportOf()] } });
  stream.send({ body: 'tableFull', tableFull: tableFullOf(VDISK_ID, SEGS, { extents: [normal(0, 2), zero(2, SEGS - 2)], ...(luState ? { luState } : {}) }) });
  await stream.take('tableAck');
}

function proutCdb(sa: number, type = 0): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x5f;
  c[1] = sa;
  c[2] = type;
  c.writeUInt32BE(24, 5);
  return c;
}

function params(key: bigint, sark: bigint): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64BE(key, 0);
  b.writeBigUInt64BE(sark, 8);
  return b;
}

const READ_KEYS = Buffer.from([0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
const OTHER = { initiatorPort: 'iqn.2007-10.test:other,i,0x000000000001', targetPort: 'iqn.2026-11.org.tabula:disk0,t,0x0001', relativeTargetPortId: 1, targetPortGroup: 1 };

/** The LU state with one registration (key 0xbeef) of another initiator holding an EXCLUSIVE ACCESS reservation. */
function reservedByOther(generation: number): LuStateMsg {
  return {
    prGeneration: generation,
    aptpl: false,
    registrations: [{ key: '000000000000beef', nexus: OTHER, allTgPt: false }],
    reservationType: 3,
    reservationHolder: `${OTHER.initiatorPort}|${OTHER.targetPort}`,
    spc2Holder: null,
  };
}

describe('agent: the LU state of a vdisk the controller owns', function () {
  this.timeout(20_000);
  const fx = useRig({ holdTimeoutMs: 1000 });

  async function login(): Promise<RawInitiator> {
    const i = await loginTo(fx.rig.port);
    fx.initiators.push(i);
    return i;
  }

  it('sends PERSISTENT RESERVE OUT to the controller and completes it with the reply, after the new state is installed', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const prout = ini.scsi(proutCdb(0), { write: params(0n, 0x1234n) });
    const req = (await stream.take('luRequest')).luRequest;
    expect(req).to.include({ vdiskId: VDISK_ID, kind: LuRequestKind.Prout });
    expect(Buffer.from(req.cdb).subarray(0, 10).equals(proutCdb(0))).to.equal(true);
    expect(Buffer.from(req.data).equals(params(0n, 0x1234n))).to.equal(true);
    expect(req.nexus?.initiatorPort).to.match(/^iqn\.2026-11\.org\.tabula\.test:raw,i,0x[0-9a-f]{12}$/);
    // The controller's new version: the registration, then the reply.
    const state: LuStateMsg = { prGeneration: 1, aptpl: false, registrations: [{ key: '0000000000001234', nexus: req.nexus, allTgPt: false }], reservationType: 0, reservationHolder: '', spc2Holder: null };
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [], lu: { state, events: [] } } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'luReply', luReply: { requestId: req.requestId, status: 0, senseKey: 0, asc: 0, ascq: 0, fieldValid: false, fieldInCdb: false, fieldByte: 0, fieldBit: 8, prGeneration: 1, reason: '' } });
    expect((await prout).status).to.equal(0);
    // PRIN from the replica, no request.
    const keys = await ini.scsi(READ_KEYS, { read: 4096 });
    expect(keys.status).to.equal(0);
    expect(keys.data.readUInt32BE(0)).to.equal(1);
    expect(keys.data.readBigUInt64BE(8)).to.equal(0x1234n);
    expect(await stream.none('luRequest', 200)).to.equal(true);
  });

  it('answers with the controller\'s sense, or RESERVATION CONFLICT', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const bad = ini.scsi(proutCdb(0), { write: params(0n, 1n) });
    const r1 = (await stream.take('luRequest')).luRequest;
    stream.send({ body: 'luReply', luReply: { requestId: r1.requestId, status: 2, senseKey: 5, asc: 0x26, ascq: 0, fieldValid: true, fieldInCdb: false, fieldByte: 20, fieldBit: 3, prGeneration: 0, reason: 'x' } });
    const b = await bad;
    expect(b.status).to.equal(2);
    expect([b.sense![2]! & 0x0f, b.sense![12], b.sense![13]]).to.deep.equal([5, 0x26, 0]);
    // sense-key specific: SKSV, C/D = 0 (parameter list), BPV, bit 3, byte 20
    expect([...b.sense!.subarray(15, 18)]).to.deep.equal([0x80 | 0x08 | 3, 0, 20]);
    const conflict = ini.scsi(Buffer.from([0x16, 0, 0, 0, 0, 0]));
    const r2 = (await stream.take('luRequest')).luRequest;
    expect(r2.kind).to.equal(LuRequestKind.Reserve);
    stream.send({ body: 'luReply', luReply: { requestId: r2.requestId, status: 0x18, senseKey: 0, asc: 0, ascq: 0, fieldValid: false, fieldInCdb: false, fieldByte: 0, fieldBit: 8, prGeneration: 0, reason: '' } });
    expect((await conflict).status).to.equal(0x18);
  });

  it('fails them with NOT READY 04/0A when the controller does not answer within the hold timeout', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const r = ini.scsi(proutCdb(0), { write: params(0n, 7n) });
    await stream.take('luRequest');
    const res = await r;
    expect(res.status).to.equal(2);
    expect([res.sense![2]! & 0x0f, res.sense![12], res.sense![13]]).to.deep.equal([2, 0x04, 0x0a]);
  });

  it('checks READ and WRITE against the installed state locally, and raises the unit attentions of a delta', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream, reservedByOther(4));
    const ini = await login();
    expect((await ini.scsi(read10(0, 1), { read: BS })).status).to.equal(0x18);
    expect((await ini.scsi(write10(0, 1), { write: Buffer.alloc(BS) })).status).to.equal(0x18);
    // Released elsewhere, with a reset that every nexus must see.
    const empty: LuStateMsg = { prGeneration: 5, aptpl: false, registrations: [], reservationType: 0, reservationHolder: '', spc2Holder: null };
    stream.send({
      body: 'tableDelta',
      tableDelta: {
        vdiskId: VDISK_ID,
        fromVersion: 1,
        toVersion: 2,
        segmentCount: SEGS,
        extents: [],
        lu: { state: empty, events: [{ senseKey: 6, asc: 0x29, ascq: 0x03, scope: LuEventScope.All, nexus: null, abortTasks: true }] },
      },
    });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    const ua = await ini.scsi(read10(0, 1), { read: BS });
    expect(ua.status).to.equal(2);
    expect([ua.sense![2]! & 0x0f, ua.sense![12], ua.sense![13]]).to.deep.equal([6, 0x29, 0x03]);
    expect((await ini.scsi(read10(0, 1), { read: BS })).status).to.equal(0);
    expect(await stream.none('luRequest', 100)).to.equal(true);
  });

  it('sends MODE SELECT to the controller; the pushed mode pages are what MODE SENSE shows, and the other nexuses get MODE PARAMETERS CHANGED', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const issuer = await login();
    const other = await login();
    const senseCaching = Buffer.from([0x1a, 0x08, 0x08, 0, 0xff, 0]);
    const wce = async (i: RawInitiator): Promise<boolean> => {
      const r = await i.scsi(senseCaching, { read: 255 });
      expect(r.status).to.equal(0);
      return (r.data[4 + 2]! & 0x04) !== 0;
    };
    expect(await wce(other)).to.equal(true);
    // MODE SELECT(6), caching page with WCE=0
    const page = [0x08, 0x12, 0x00, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    const list = Buffer.from([0, 0, 0, 0, ...page]);
    const select = issuer.scsi(Buffer.from([0x15, 0x10, 0, 0, list.length, 0]), { write: list });
    const req = (await stream.take('luRequest')).luRequest;
    expect(req.kind).to.equal(LuRequestKind.ModeSelect);
    expect(Buffer.from(req.data).equals(list)).to.equal(true);
    // Not applied here until the controller's version comes.
    expect(await wce(other)).to.equal(true);
    const state: LuStateMsg = {
      prGeneration: 0,
      aptpl: false,
      registrations: [],
      reservationType: 0,
      reservationHolder: '',
      spc2Holder: null,
      modePages: [{ page: 8, subpage: 0, values: Buffer.from(page).toString('hex') }],
    };
    const events = [{ senseKey: 6, asc: 0x2a, ascq: 0x01, scope: LuEventScope.AllBut, nexus: req.nexus, abortTasks: false }];
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [], lu: { state, events } } });
    expect((await stream.take('tableAck')).tableAck.version).to.equal(2);
    stream.send({ body: 'luReply', luReply: { requestId: req.requestId, status: 0, senseKey: 0, asc: 0, ascq: 0, fieldValid: false, fieldInCdb: false, fieldByte: 0, fieldBit: 8, prGeneration: 0, reason: '' } });
    expect((await select).status).to.equal(0);
    expect(await wce(issuer)).to.equal(false);
    const ua = await other.scsi(senseCaching, { read: 255 });
    expect(ua.status).to.equal(2);
    expect([ua.sense![2]! & 0x0f, ua.sense![12], ua.sense![13]]).to.deep.equal([6, 0x2a, 0x01]);
    expect(await wce(other)).to.equal(false);
    expect(await stream.none('luRequest', 100)).to.equal(true);
  });

  it('fails MODE SELECT with NOT READY 04/0A when the controller does not answer, and keeps the mode pages', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const ini = await login();
    const page = [0x08, 0x12, 0x00, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    const list = Buffer.from([0, 0, 0, 0, ...page]);
    const r = ini.scsi(Buffer.from([0x15, 0x10, 0, 0, list.length, 0]), { write: list });
    await stream.take('luRequest');
    const res = await r;
    expect(res.status).to.equal(2);
    expect([res.sense![2]! & 0x0f, res.sense![12], res.sense![13]]).to.deep.equal([2, 0x04, 0x0a]);
    const sense = await ini.scsi(Buffer.from([0x1a, 0x08, 0x08, 0, 0xff, 0]), { read: 255 });
    expect(sense.data[4 + 2]! & 0x04).to.equal(0x04);
  });

  it('drops a lost SPC-2 holder\'s reservation here at once, and tells the controller once it is back', async () => {
    const { stream } = await fx.ctl.accept();
    await exportDisk(stream);
    const holder = await login();
    const reserve = holder.scsi(Buffer.from([0x16, 0, 0, 0, 0, 0]));
    const req = (await stream.take('luRequest')).luRequest;
    const state: LuStateMsg = { prGeneration: 0, aptpl: false, registrations: [], reservationType: 0, reservationHolder: '', spc2Holder: req.nexus };
    stream.send({ body: 'tableDelta', tableDelta: { vdiskId: VDISK_ID, fromVersion: 1, toVersion: 2, segmentCount: SEGS, extents: [], lu: { state, events: [] } } });
    await stream.take('tableAck');
    stream.send({ body: 'luReply', luReply: { requestId: req.requestId, status: 0, senseKey: 0, asc: 0, ascq: 0, fieldValid: false, fieldInCdb: false, fieldByte: 0, fieldBit: 8, prGeneration: 0, reason: '' } });
    expect((await reserve).status).to.equal(0);
    const other = await login();
    expect((await other.scsi(read10(0, 1), { read: BS })).status).to.equal(0x18);
    // The controller goes away; then the holder's connection drops.
    const port = fx.ctl.port;
    await fx.ctl.stop();
    await until(() => !fx.rig.agent.link.connected, 5000, 'the agent to notice');
    holder.destroy();
    // The agent sees the connection close soon after; from then on the reservation is gone on this path.
    let status = -1;
    for (let i = 0; i < 50 && status !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
      status = (await other.scsi(read10(0, 1), { read: BS })).status;
    }
    expect(status).to.equal(0);
    fx.ctl = await FakeController.start(port);
    const s2 = await fx.ctl.nextStream(5000);
    await s2.take('register');
    s2.welcome();
    const lost = (await s2.take('luRequest')).luRequest;
    expect(lost).to.deep.include({ kind: LuRequestKind.NexusLost, nexus: req.nexus, vdiskId: VDISK_ID });
  });
});
