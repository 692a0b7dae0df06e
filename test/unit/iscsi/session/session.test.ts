import { expect } from 'chai';
import { IscsiPortalServer } from '../../../../src/iscsi/portal-server.js';
import { TargetRegistry } from '../../../../src/iscsi/target-registry.js';
import { encodeHeader } from '../../../../src/iscsi/pdu/encode.js';
import { encodeLun } from '../../../../src/iscsi/pdu/lun.js';
import { Opcode, RESERVED_TAG, RejectReason, TmfFunction, TmfResponse, type TargetPdu } from '../../../../src/iscsi/pdu/types.js';
import { parseTextData, RawInitiator } from '../../../support/raw-initiator.js';
import { BLOCK, FakePort, OP_BLOCKING } from './fake-port.js';

const IQN = 'iqn.2026-11.org.tabula.test:session';

function read10(lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x28;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

function write10(lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x2a;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

describe('iSCSI session (full feature phase over a real socket)', function () {
  let server: IscsiPortalServer;
  let port: FakePort;
  let tcpPort: number;
  const clients: RawInitiator[] = [];

  async function client(): Promise<RawInitiator> {
    const c = await RawInitiator.connect(tcpPort);
    clients.push(c);
    return c;
  }

  async function loggedIn(keys: Record<string, string> = {}, isid?: number): Promise<RawInitiator> {
    const c = await client();
    const r = await c.login({ targetName: IQN, keys, isid });
    expect(r.statusClass, 'login status').to.equal(0);
    return c;
  }

  beforeEach(async () => {
    port = new FakePort();
    const reg = new TargetRegistry();
    reg.add({ name: IQN, portals: [] }, port);
    server = new IscsiPortalServer(reg, { host: '127.0.0.1', port: 0, settings: { loginTimeoutSec: 1, nopIntervalSec: 0 } });
    tcpPort = (await server.listen()).port;
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await server.close();
  });

  it('runs a command and returns status in the last Data-In, split by the initiator MaxRecvDataSegmentLength', async () => {
    const data = pattern(8 * BLOCK, 3);
    data.copy(port.disk, 0);
    const c = await loggedIn({ MaxRecvDataSegmentLength: '1024' });
    c.send(c.commandPdu(read10(0, 8), { read: 8 * BLOCK }));
    const pdus: TargetPdu[] = [];
    for (;;) {
      const p = await c.next();
      expect(p).to.not.equal(null);
      pdus.push(p!);
      if (p!.opcode === Opcode.DataIn && p!.hasStatus) break;
    }
    expect(pdus.length).to.equal(4);
    pdus.forEach((p, i) => {
      expect(p.opcode).to.equal(Opcode.DataIn);
      if (p.opcode !== Opcode.DataIn) return;
      expect(p.dataSN).to.equal(i);
      expect(p.bufferOffset).to.equal(i * 1024);
      expect(p.data.length).to.equal(1024);
      expect(p.hasStatus).to.equal(i === 3);
    });
    expect(Buffer.concat(pdus.map((p) => p.data))).to.deep.equal(data);
  });

  it('collects immediate, unsolicited and R2T-solicited data for a large write', async () => {
    const c = await loggedIn();
    const blocks = 2048; // 1 MiB: more than FirstBurstLength and MaxBurstLength
    const data = pattern(blocks * BLOCK, 9);
    const r = await c.scsi(write10(16, blocks), { write: data, immediateBytes: 8192 });
    expect(r.status).to.equal(0);
    expect(port.disk.subarray(16 * BLOCK, (16 + blocks) * BLOCK)).to.deep.equal(data);
    const back = await c.scsi(read10(16, blocks), { read: blocks * BLOCK });
    expect(back.data).to.deep.equal(data);
  });

  it('keeps the data of consecutive large writes apart (write buffers are reused)', async () => {
    const c = await loggedIn();
    const blocks = 512; // 256 KiB: large enough for the reused buffers
    const first = pattern(blocks * BLOCK, 21);
    const second = pattern(blocks * BLOCK, 77);
    expect((await c.scsi(write10(0, blocks), { write: first, immediateBytes: 0 })).status).to.equal(0);
    expect((await c.scsi(write10(blocks, blocks), { write: second, immediateBytes: 0 })).status).to.equal(0);
    expect((await c.scsi(write10(2 * blocks, blocks), { write: second, immediateBytes: 4096 })).status).to.equal(0);
    expect((await c.scsi(write10(3 * blocks, blocks), { write: first, immediateBytes: 0 })).status).to.equal(0);
    expect(port.disk.subarray(0, blocks * BLOCK)).to.deep.equal(first);
    expect(port.disk.subarray(blocks * BLOCK, 2 * blocks * BLOCK)).to.deep.equal(second);
    expect(port.disk.subarray(2 * blocks * BLOCK, 3 * blocks * BLOCK)).to.deep.equal(second);
    expect(port.disk.subarray(3 * blocks * BLOCK, 4 * blocks * BLOCK)).to.deep.equal(first);
  });

  it('reports overflow and underflow residuals', async () => {
    const c = await loggedIn();
    const pdu = c.commandPdu(read10(0, 4), { read: 4 * BLOCK });
    pdu.expectedDataTransferLength = 2 * BLOCK;
    c.send(pdu);
    let p = await c.next();
    expect(p!.opcode).to.equal(Opcode.DataIn);
    if (p!.opcode === Opcode.DataIn) {
      expect(p!.data.length).to.equal(2 * BLOCK);
      expect(p!.overflow).to.equal(true);
      expect(p!.residualCount).to.equal(2 * BLOCK);
    }
    const pdu2 = c.commandPdu(read10(0, 1), { read: 4 * BLOCK });
    c.send(pdu2);
    p = await c.next();
    if (p!.opcode !== Opcode.DataIn) throw new Error('expected Data-In');
    expect(p.data.length).to.equal(BLOCK);
    expect(p.underflow).to.equal(true);
    expect(p.residualCount).to.equal(3 * BLOCK);
  });

  it('delivers commands in CmdSN order and ignores commands outside the window', async () => {
    const c = await loggedIn();
    const base = c.cmdSN;
    const second = c.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]), { cmdSN: base + 1 });
    const first = c.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]), { cmdSN: base });
    const outside = c.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]), { cmdSN: base + 100000 });
    c.send(second);
    c.send(outside);
    expect(await c.silentFor(200)).to.equal(true);
    expect(port.executed.length).to.equal(0);
    c.send(first);
    const a = await c.next();
    const b = await c.next();
    expect([a, b].map((p) => (p as { itt: number }).itt)).to.deep.equal([first.itt, second.itt]);
    expect(await c.silentFor(200)).to.equal(true);
  });

  it('rejects a command whose ITT is still in use, an unknown TTT and an unknown opcode', async () => {
    const c = await loggedIn();
    const blocking = c.commandPdu(Buffer.from([OP_BLOCKING, 0, 0, 0, 0, 0]));
    c.send(blocking);
    c.cmdSN++;
    const dup = c.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]), { itt: blocking.itt });
    c.send(dup);
    let p = await c.next();
    expect(p!.opcode).to.equal(Opcode.Reject);
    if (p!.opcode === Opcode.Reject) expect(p!.reason).to.equal(RejectReason.TaskInProgress);

    c.send({ opcode: Opcode.DataOut, immediate: false, ahs: [], data: Buffer.alloc(512), final: true, lun: 0n, itt: blocking.itt, ttt: 0x1234, expStatSN: c.expStatSN, dataSN: 0, bufferOffset: 0 });
    p = await c.next();
    expect(p!.opcode).to.equal(Opcode.Reject);

    const weird = encodeHeader({ opcode: Opcode.NopOut, immediate: true, ahs: [], data: Buffer.alloc(0), lun: 0n, itt: 77, ttt: RESERVED_TAG, cmdSN: c.cmdSN, expStatSN: c.expStatSN });
    weird[0] = 0x40 | 0x1c; // an opcode RFC 7143 does not define
    c.sendRaw(weird);
    p = await c.next();
    expect(p!.opcode).to.equal(Opcode.Reject);
    if (p!.opcode === Opcode.Reject) {
      expect(p!.reason).to.equal(RejectReason.CommandNotSupported);
      expect(p!.data.subarray(0, 48)).to.deep.equal(weird);
    }
    port.releaseAll();
    p = await c.next();
    expect(p!.opcode).to.equal(Opcode.ScsiResponse);
  });

  it('fails a write whose Data-Out PDUs are out of DataSN order (Reject + ABORTED COMMAND)', async () => {
    const c = await loggedIn({ InitialR2T: 'Yes', ImmediateData: 'No' });
    const pdu = c.commandPdu(write10(100, 2), { write: pattern(2 * BLOCK, 5) });
    c.send(pdu);
    const r2t = await c.next();
    if (r2t!.opcode !== Opcode.R2T) throw new Error('expected R2T');
    for (const off of [0, BLOCK]) {
      c.send({ opcode: Opcode.DataOut, immediate: false, ahs: [], data: Buffer.alloc(BLOCK, 1), final: off === BLOCK, lun: 0n, itt: pdu.itt, ttt: r2t.ttt, expStatSN: c.expStatSN, dataSN: 0, bufferOffset: off });
    }
    const rej = await c.next();
    expect(rej!.opcode).to.equal(Opcode.Reject);
    const resp = await c.next();
    if (resp!.opcode !== Opcode.ScsiResponse) throw new Error('expected SCSI response');
    expect(resp.status).to.equal(2);
    const sense = resp.data.subarray(2);
    expect([sense[2]! & 0xf, sense[12], sense[13]]).to.deep.equal([0x0b, 0x4b, 0x00]);
    expect(port.disk.subarray(100 * BLOCK, 102 * BLOCK).every((b) => b === 0)).to.equal(true);
    // The session goes on.
    expect((await c.scsi(Buffer.from([0, 0, 0, 0, 0, 0]))).status).to.equal(0);
  });

  it('answers NOP-Out pings with the same data', async () => {
    const c = await loggedIn();
    c.send({ opcode: Opcode.NopOut, immediate: true, ahs: [], data: Buffer.from('ping!'), lun: 0n, itt: 500, ttt: RESERVED_TAG, cmdSN: c.cmdSN, expStatSN: c.expStatSN });
    const p = await c.next();
    expect(p!.opcode).to.equal(Opcode.NopIn);
    if (p!.opcode === Opcode.NopIn) {
      expect(p!.itt).to.equal(500);
      expect(p!.data.toString()).to.equal('ping!');
    }
  });

  it('aborts a running task: no response for it, then TMF complete', async () => {
    const c = await loggedIn();
    const blocking = c.commandPdu(Buffer.from([OP_BLOCKING, 0, 0, 0, 0, 0]));
    c.send(blocking);
    while (port.blocked === 0) await new Promise((r) => setTimeout(r, 5));
    c.send({
      opcode: Opcode.TaskMgmtRequest,
      immediate: true,
      ahs: [],
      data: Buffer.alloc(0),
      fn: TmfFunction.AbortTask,
      lun: encodeLun(0),
      itt: 900,
      referencedTaskTag: blocking.itt,
      cmdSN: c.cmdSN,
      expStatSN: c.expStatSN,
      refCmdSN: blocking.cmdSN,
      expDataSN: 0,
    });
    expect(await c.silentFor(100)).to.equal(true);
    port.releaseAll();
    const p = await c.next();
    expect(p!.opcode).to.equal(Opcode.TaskMgmtResponse);
    if (p!.opcode === Opcode.TaskMgmtResponse) {
      expect(p!.itt).to.equal(900);
      expect(p!.response).to.equal(TmfResponse.Complete);
    }
    expect(await c.silentFor(200)).to.equal(true);
  });

  it('LUN RESET reaches the SCSI layer; a TMF to an unknown LUN says so', async () => {
    const c = await loggedIn();
    const tmf = (fn: TmfFunction, lun: number, itt: number) =>
      c.send({ opcode: Opcode.TaskMgmtRequest, immediate: true, ahs: [], data: Buffer.alloc(0), fn, lun: encodeLun(lun), itt, referencedTaskTag: RESERVED_TAG, cmdSN: c.cmdSN, expStatSN: c.expStatSN, refCmdSN: 0, expDataSN: 0 });
    tmf(TmfFunction.LogicalUnitReset, 0, 1000);
    let p = await c.next();
    if (p!.opcode !== Opcode.TaskMgmtResponse) throw new Error('expected TMF response');
    expect(p.response).to.equal(TmfResponse.Complete);
    expect(port.tmfs.map((t) => t.fn)).to.deep.equal([5]);
    tmf(TmfFunction.LogicalUnitReset, 7, 1001);
    p = await c.next();
    if (p!.opcode !== Opcode.TaskMgmtResponse) throw new Error('expected TMF response');
    expect(p.response).to.equal(TmfResponse.LunDoesNotExist);
  });

  it('closes only the offending connection on a header digest error; others keep working', async () => {
    const good = await loggedIn();
    const bad = await client();
    const r = await bad.login({ targetName: IQN, digests: true });
    expect(r.statusClass).to.equal(0);
    expect(bad.digests.header).to.equal(true);
    const pdu = bad.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0]));
    bad.digests = { header: false, data: false };
    const raw = encodeHeader(pdu);
    bad.sendRaw(Buffer.concat([raw, Buffer.from([1, 2, 3, 4])])); // wrong header digest
    expect(await bad.next(3000)).to.equal(null);
    expect(bad.isClosed).to.equal(true);
    const t = await good.scsi(Buffer.from([0, 0, 0, 0, 0, 0]));
    expect(t.status).to.equal(0);
  });

  it('survives truncated PDUs and abrupt closes, and drops silent logins after the login timeout', async () => {
    const a = await client();
    a.sendRaw(Buffer.alloc(20, 0x43)); // a third of a BHS, then gone
    a.destroy();
    const silent = await client();
    expect(await silent.next(3000)).to.equal(null); // closed by the 1 s login timeout
    const c = await loggedIn();
    expect((await c.scsi(Buffer.from([0, 0, 0, 0, 0, 0]))).status).to.equal(0);
  });

  it('rejects data segments beyond the negotiated MaxRecvDataSegmentLength', async () => {
    const c = await loggedIn();
    const big = c.commandPdu(write10(0, 1024), { write: Buffer.alloc(1024 * BLOCK), immediateBytes: 512 * 1024 });
    c.send(big);
    const p = await c.next();
    expect(p!.opcode).to.equal(Opcode.Reject);
    if (p!.opcode === Opcode.Reject) expect(p!.reason).to.equal(RejectReason.ProtocolError);
  });

  it('reinstates a session logged in again with the same ISID, without losing the nexus', async () => {
    const isid = 0x400001370042;
    const first = await loggedIn({}, isid);
    const second = await loggedIn({}, isid);
    expect(await first.next(3000)).to.equal(null);
    expect(port.lost.length).to.equal(0);
    expect((await second.scsi(Buffer.from([0, 0, 0, 0, 0, 0]))).status).to.equal(0);
    await second.logout();
    await new Promise((r) => setTimeout(r, 50));
    expect(port.lost.length).to.equal(1);
  });

  it('restarts a session on a new connection that names its TSIH, keeping session-wide parameters', async () => {
    const isid = 0x400001370043;
    const first = await loggedIn({ MaxBurstLength: '65536', FirstBurstLength: '8192' }, isid);
    const tsih = first.tsih;
    const again = await client();
    const r = await again.login({ targetName: IQN, isid, tsih });
    expect(r.statusClass).to.equal(0);
    expect(r.tsih).to.equal(tsih);
    expect(await first.next(3000)).to.equal(null);
    // A write larger than MaxBurstLength: every R2T must respect the old session's 64 KiB.
    const blocks = 512;
    const pdu = again.commandPdu(write10(0, blocks), { write: pattern(blocks * BLOCK, 1) });
    again.send(pdu);
    const p = await again.next();
    if (p!.opcode !== Opcode.R2T) throw new Error(`expected R2T, got ${p!.opcode}`);
    expect(p.desiredDataTransferLength).to.equal(65536);
  });

  it('lists targets and portals with SendTargets in a discovery session', async () => {
    const c = await client();
    const r = await c.login({ sessionType: 'Discovery' });
    expect(r.statusClass).to.equal(0);
    c.send({ opcode: Opcode.TextRequest, immediate: true, ahs: [], data: Buffer.from('SendTargets=All\0'), final: true, cont: false, lun: 0n, itt: 42, ttt: RESERVED_TAG, cmdSN: c.cmdSN, expStatSN: c.expStatSN });
    const p = await c.next();
    if (p!.opcode !== Opcode.TextResponse) throw new Error('expected text response');
    const text = p.data.toString();
    expect(text).to.contain(`TargetName=${IQN}\0`);
    expect(text).to.contain(`TargetAddress=127.0.0.1:${tcpPort},1\0`);
    // SCSI commands are not allowed in a discovery session.
    c.send(c.commandPdu(Buffer.from([0, 0, 0, 0, 0, 0])));
    const q = await c.next();
    expect(q!.opcode).to.equal(Opcode.Reject);
    expect(parseTextData(Buffer.from('a=b\0')).a).to.equal('b');
  });
});

describe('iSCSI keepalive', () => {
  it('pings an idle initiator with NOP-In and drops it when it does not answer', async function () {
    this.timeout(10_000);
    const reg = new TargetRegistry();
    reg.add({ name: IQN, portals: [] }, new FakePort());
    const server = new IscsiPortalServer(reg, { host: '127.0.0.1', port: 0, settings: { nopIntervalSec: 1, nopTimeoutSec: 2 } });
    const { port } = await server.listen();
    const c = await RawInitiator.connect(port);
    try {
      expect((await c.login({ targetName: IQN })).statusClass).to.equal(0);
      const ping = await c.next(3000);
      expect(ping!.opcode).to.equal(Opcode.NopIn);
      if (ping!.opcode === Opcode.NopIn) {
        expect(ping!.itt).to.equal(RESERVED_TAG);
        expect(ping!.ttt).to.not.equal(RESERVED_TAG);
      }
      expect(await c.next(5000)).to.equal(null);
    } finally {
      c.destroy();
      await server.close();
    }
  });
});
