// The initiator session without a socket: PDUs it writes are decoded from a
// fake wire, and the target's PDUs are built with the codec and fed back.
import { expect } from 'chai';
import { ConnectionLostError } from '../../../../src/iscsi/initiator/session.js';
import { TransportError, type ScsiResult } from '../../../../src/iscsi/initiator/transport.js';
import { read16Cdb, write16Cdb } from '../../../../src/iscsi/initiator/cdb.js';
import { base, dataIn, r2t, response, rig, type Rig } from './fake-target.js';
import {
  Opcode,
  RESERVED_TAG,
  TmfFunction,
  type DataOut,
  type NopOut,
  type Pdu,
  type ScsiCommandPdu,
  type TaskMgmtRequest,
} from '../../../../src/iscsi/pdu/types.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function settled(p: Promise<ScsiResult>): Promise<ScsiResult | Error> {
  return p.then(
    (v) => v,
    (e: Error) => e,
  );
}

describe('iSCSI initiator session', () => {
  it('assembles Data-In PDUs and takes the status from the last one (S bit)', async () => {
    const r = rig();
    const p = r.s.execute({ lun: 3, cdb: read16Cdb(0, 16), dataInLength: 8192 });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    expect(cmd!.read).to.equal(true);
    expect(cmd!.expectedDataTransferLength).to.equal(8192);
    expect(cmd!.cmdSN).to.equal(1);
    expect(cmd!.expStatSN).to.equal(10);
    expect(cmd!.lun).to.equal(3n << 48n);
    const a = Buffer.alloc(4096, 1);
    const b = Buffer.alloc(4096, 2);
    r.feed(dataIn(r, cmd!.itt, 4096, b));
    r.feed(dataIn(r, cmd!.itt, 0, a, 0));
    const res = await p;
    expect(res.status).to.equal(0);
    expect(res.data?.equals(Buffer.concat([a, b]))).to.equal(true);
    expect(r.s.window.expStatSN).to.equal(11);
  });

  it('lands Data-In in the caller\'s buffer when given one', async () => {
    const r = rig();
    const mine = Buffer.alloc(8192, 0xee);
    const p = r.s.execute({ lun: 0, cdb: read16Cdb(0, 8), dataInLength: 4096, dataInBuffer: mine });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    r.feed(dataIn(r, cmd!.itt, 0, Buffer.alloc(4096, 5), 0));
    const res = await p;
    expect(res.data?.buffer).to.equal(mine.buffer);
    expect(mine[0]).to.equal(5);
    expect(mine[4095]).to.equal(5);
    expect(mine[4096], 'beyond dataInLength').to.equal(0xee);
  });

  it('returns CHECK CONDITION with the sense bytes after the 2-byte length, and the residual', async () => {
    const r = rig();
    const p = r.s.execute({ lun: 0, cdb: read16Cdb(0, 8), dataInLength: 4096 });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    const sense = Buffer.from('700003000000000a00000000110000000000', 'hex');
    r.feed(dataIn(r, cmd!.itt, 0, Buffer.alloc(1024, 7)));
    r.feed(response(r, cmd!.itt, 2, { sense, underflow: 3072 }));
    const res = await p;
    expect(res.status).to.equal(2);
    expect(res.sense?.equals(sense)).to.equal(true);
    expect(res.residual).to.equal(3072);
    expect(res.data?.length).to.equal(1024);
  });

  it('sends immediate data, then Data-Out per R2T in PDUs of the target MaxRecvDataSegmentLength', async () => {
    const r = rig({ immediateData: true, initialR2T: true, firstBurstLength: 16384, targetMaxRecvDataSegmentLength: 8192 });
    const data = Buffer.alloc(40960);
    for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
    const p = r.s.execute({ lun: 0, cdb: write16Cdb(0, 80), dataOut: data });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    expect(cmd!.write).to.equal(true);
    expect(cmd!.final).to.equal(true);
    expect(cmd!.data.equals(data.subarray(0, 8192))).to.equal(true);
    expect(r.wire.take(Opcode.DataOut)).to.have.lengthOf(0);
    r.feed(r2t(r, cmd!.itt, 0x77, 8192, 32768));
    const outs = r.wire.take<DataOut>(Opcode.DataOut);
    expect(outs.map((o) => [o.bufferOffset, o.data.length, o.final, o.dataSN, o.ttt])).to.deep.equal([
      [8192, 8192, false, 0, 0x77],
      [16384, 8192, false, 1, 0x77],
      [24576, 8192, false, 2, 0x77],
      [32768, 8192, true, 3, 0x77],
    ]);
    for (const o of outs) expect(o.data.equals(data.subarray(o.bufferOffset, o.bufferOffset + o.data.length))).to.equal(true);
    r.feed(response(r, cmd!.itt, 0));
    expect((await p).status).to.equal(0);
  });

  it('sends unsolicited Data-Out up to FirstBurstLength when InitialR2T=No and ImmediateData=No', async () => {
    const r = rig({ immediateData: false, initialR2T: false, firstBurstLength: 16384, targetMaxRecvDataSegmentLength: 8192 });
    const p = r.s.execute({ lun: 0, cdb: write16Cdb(0, 64), dataOut: Buffer.alloc(32768, 9) });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    expect(cmd!.data.length).to.equal(0);
    expect(cmd!.final).to.equal(false);
    const outs = r.wire.take<DataOut>(Opcode.DataOut);
    expect(outs.map((o) => [o.bufferOffset, o.data.length, o.final, o.ttt])).to.deep.equal([
      [0, 8192, false, RESERVED_TAG],
      [8192, 8192, true, RESERVED_TAG],
    ]);
    r.feed(r2t(r, cmd!.itt, 1, 16384, 16384));
    expect(r.wire.take<DataOut>(Opcode.DataOut).map((o) => o.bufferOffset)).to.deep.equal([16384, 24576]);
    r.feed(response(r, cmd!.itt, 0));
    expect((await p).status).to.equal(0);
  });

  it('queues commands while the CmdSN window is closed and beyond queueDepth', async () => {
    const r = rig({}, { queueDepth: 3 }, 2);
    const ps = Array.from({ length: 5 }, (_, i) => r.s.execute({ lun: 0, cdb: read16Cdb(i, 1), dataInLength: 512 }));
    let cmds = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    // CmdSN 1 and 2 fit the window [1, 2].
    expect(cmds.map((c) => c.cmdSN)).to.deep.equal([1, 2]);
    expect(r.s.pending).to.deep.equal({ inFlight: 2, queued: 3 });
    r.window.maxCmdSN = 10;
    r.feed(dataIn(r, cmds[0]!.itt, 0, Buffer.alloc(512), 0));
    cmds = [cmds[1]!, ...r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand)];
    // The window opened but the depth is 3: two more went out.
    expect(cmds.map((c) => c.cmdSN)).to.deep.equal([2, 3, 4]);
    for (const c of cmds) r.feed(dataIn(r, c.itt, 0, Buffer.alloc(512), 0));
    const last = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    expect(last.map((c) => c.cmdSN)).to.deep.equal([5]);
    r.feed(dataIn(r, last[0]!.itt, 0, Buffer.alloc(512), 0));
    const res = await Promise.all(ps);
    expect(res.every((x) => x.status === 0)).to.equal(true);
  });

  it('answers a target NOP-In ping with its TTT and no CmdSN advance', () => {
    const r = rig();
    r.feed({ ...base, lun: 2n << 48n, opcode: Opcode.NopIn, data: Buffer.from('ping'), itt: RESERVED_TAG, ttt: 0x1234, statSN: 10, expCmdSN: 1, maxCmdSN: 100 });
    const [nop] = r.wire.take<NopOut>(Opcode.NopOut);
    expect(nop!.ttt).to.equal(0x1234);
    expect(nop!.itt).to.equal(RESERVED_TAG);
    expect(nop!.immediate).to.equal(true);
    expect(nop!.lun).to.equal(2n << 48n);
    expect(nop!.data.toString()).to.equal('ping');
    expect(r.s.window.cmdSN).to.equal(1);
  });

  it('pings with NOP-Out and declares the connection dead when no NOP-In comes', async () => {
    const r = rig({}, { nopIntervalMs: 20, nopTimeoutMs: 40 });
    const p = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    await sleep(30);
    const [nop] = r.wire.take<NopOut>(Opcode.NopOut);
    expect(nop!.itt).to.not.equal(RESERVED_TAG);
    expect(nop!.ttt).to.equal(RESERVED_TAG);
    const err = await p;
    expect(err).to.be.instanceOf(ConnectionLostError);
    expect((err as TransportError).kind).to.equal('unreachable');
    expect(r.wire.destroyed).to.equal(true);
    expect(r.s.state).to.equal('down');
  });

  it('keeps the connection while NOP-Ins answer the pings', async () => {
    const r = rig({}, { nopIntervalMs: 15, nopTimeoutMs: 30, logoutTimeoutMs: 10 });
    for (let i = 0; i < 5; i++) {
      await sleep(20);
      for (const nop of r.wire.take<NopOut>(Opcode.NopOut)) {
        r.feed({ ...base, opcode: Opcode.NopIn, data: Buffer.alloc(0), itt: nop.itt, ttt: RESERVED_TAG, ...r.sn() });
      }
    }
    expect(r.s.state).to.equal('up');
    await r.s.close().catch(() => undefined);
  });

  it('aborts a command that times out (ABORT TASK) and fails it as timeout once the abort is answered', async () => {
    const r = rig({}, { abortTimeoutMs: 5000 });
    const p = settled(r.s.execute({ lun: 1, cdb: read16Cdb(0, 1), dataInLength: 512, timeoutMs: 20 }));
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    await sleep(40);
    const [tmf] = r.wire.take<TaskMgmtRequest>(Opcode.TaskMgmtRequest);
    expect(tmf!.fn).to.equal(TmfFunction.AbortTask);
    expect(tmf!.referencedTaskTag).to.equal(cmd!.itt);
    expect(tmf!.refCmdSN).to.equal(cmd!.cmdSN);
    expect(tmf!.immediate).to.equal(true);
    // A late answer for the aborted command changes nothing.
    r.feed(dataIn(r, cmd!.itt, 0, Buffer.alloc(512), 0));
    r.feed({ ...base, opcode: Opcode.TaskMgmtResponse, data: Buffer.alloc(0), response: 0, itt: tmf!.itt, ...r.sn() });
    const err = await p;
    expect((err as TransportError).kind).to.equal('timeout');
    expect(r.s.state).to.equal('up');
    expect(r.s.pending).to.deep.equal({ inFlight: 0, queued: 0 });
  });

  it('drops the connection when the abort goes unanswered', async () => {
    const r = rig({}, { abortTimeoutMs: 20 });
    const timedOut = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, timeoutMs: 10 }));
    const other = settled(r.s.execute({ lun: 0, cdb: read16Cdb(1, 1), dataInLength: 512, timeoutMs: 10_000 }));
    expect(((await timedOut) as TransportError).kind).to.equal('timeout');
    const e = await other;
    expect(e).to.be.instanceOf(ConnectionLostError);
    expect(r.wire.destroyed).to.equal(true);
  });

  it("cuts a command's timeout and its abort to the caller's deadline, then drops the connection (a silent target)", async () => {
    // Both a minute: only the deadline can end this within the test's time.
    const r = rig({}, { commandTimeoutMs: 60_000, abortTimeoutMs: 60_000 });
    const timedOut = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, deadline: Date.now() + 30 }));
    const other = settled(r.s.execute({ lun: 0, cdb: read16Cdb(1, 1), dataInLength: 512 }));
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    const e = await timedOut;
    expect((e as TransportError).kind).to.equal('timeout');
    // The abort went out first (a live target would have answered it and kept the connection)...
    const [tmf] = r.wire.take<TaskMgmtRequest>(Opcode.TaskMgmtRequest);
    expect(tmf!.referencedTaskTag).to.equal(cmd!.itt);
    // ...and, unanswered, the connection is dropped: the target ends the task when the session is reinstated.
    expect((e as Error).message).to.match(/no answer to ABORT TASK within \d+ ms/);
    expect(await other).to.be.instanceOf(ConnectionLostError);
    expect(r.wire.destroyed).to.equal(true);
  });

  it('keeps a healthy connection when the abort of a command near its deadline is answered', async () => {
    const r = rig({}, { commandTimeoutMs: 60_000, abortTimeoutMs: 60_000 });
    const p = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, deadline: Date.now() + 10 }));
    const tmf = await (async () => {
      for (;;) {
        const [t] = r.wire.take<TaskMgmtRequest>(Opcode.TaskMgmtRequest);
        if (t) return t;
        await sleep(2);
      }
    })();
    // The deadline has passed; the abort still gets its floor (ABORT_FLOOR_MS) to be answered in.
    await sleep(20);
    r.feed({ ...base, opcode: Opcode.TaskMgmtResponse, data: Buffer.alloc(0), response: 0, itt: tmf.itt, ...r.sn() });
    expect(((await p) as TransportError).kind).to.equal('timeout');
    expect(r.s.state).to.equal('up');
    expect(r.wire.destroyed).to.equal(false);
    await r.s.close().catch(() => undefined);
  });

  it('drops the connection on a malformed or unexpected PDU and fails pending commands as protocol', async () => {
    for (const bad of [
      (r: Rig) => r.s.receive(Buffer.concat([Buffer.of(0x3a), Buffer.alloc(47)])),
      (r: Rig) => r.s.receive(Buffer.concat([Buffer.of(Opcode.DataIn, 0x80, 0, 0, 0, 0x10, 0, 0), Buffer.alloc(40)])),
      (r: Rig) => r.feed(dataIn(r, 0x999, 0, Buffer.alloc(512), 0)),
      (r: Rig, itt: number) => r.feed(dataIn(r, itt, 4096, Buffer.alloc(512), 0)),
      (r: Rig, itt: number) => r.feed(r2t(r, itt, 1, 0, 512)),
    ]) {
      const r = rig();
      const p = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 8), dataInLength: 4096 }));
      const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
      bad(r, cmd!.itt);
      const e = await p;
      expect(e, String(bad)).to.be.instanceOf(ConnectionLostError);
      expect((e as TransportError).kind).to.equal('protocol');
      expect(r.wire.destroyed).to.equal(true);
      // Nothing after the drop is processed, and new commands fail at once.
      const again = await settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
      expect(again).to.be.instanceOf(TransportError);
    }
  });

  it('logs out when the target asks (Async Message event 1), after the commands in flight finish', async () => {
    const r = rig();
    const p = r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    r.feed({ ...base, opcode: Opcode.AsyncMessage, data: Buffer.alloc(0), ...r.sn(), asyncEvent: 1, asyncVCode: 0, parameter1: 0, parameter2: 0, parameter3: 5 });
    const queued = settled(r.s.execute({ lun: 0, cdb: read16Cdb(1, 1), dataInLength: 512 }));
    expect(r.wire.take(Opcode.LogoutRequest)).to.have.lengthOf(0);
    r.feed(dataIn(r, cmd!.itt, 0, Buffer.alloc(512), 0));
    expect((await p).status).to.equal(0);
    await tick();
    const [logout] = r.wire.take<Pdu & { itt: number }>(Opcode.LogoutRequest);
    expect(logout).to.not.equal(undefined);
    expect(await queued).to.be.instanceOf(ConnectionLostError);
    r.feed({ ...base, opcode: Opcode.LogoutResponse, data: Buffer.alloc(0), response: 0, itt: logout!.itt, ...r.sn(), time2Wait: 0, time2Retain: 0 });
    await tick();
    expect(r.s.state).to.equal('down');
  });

  it('writes and reads header and data digests when negotiated', async () => {
    const r = rig({ headerDigest: true, dataDigest: true });
    const p = r.s.execute({ lun: 0, cdb: write16Cdb(0, 1), dataOut: Buffer.alloc(512, 3) });
    const [cmd] = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    expect(cmd!.data.length).to.equal(512);
    r.feed(response(r, cmd!.itt, 0));
    expect((await p).status).to.equal(0);
  });

  it('logs out on close and fails what is still pending as closed', async () => {
    const r = rig({}, { logoutTimeoutMs: 1000 });
    const p = settled(r.s.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    const closing = r.s.close();
    const [logout] = r.wire.take<Pdu & { itt: number; reason: number }>(Opcode.LogoutRequest);
    expect(logout!.reason).to.equal(0);
    r.feed({ ...base, opcode: Opcode.LogoutResponse, data: Buffer.alloc(0), response: 0, itt: logout!.itt, ...r.sn(), time2Wait: 0, time2Retain: 0 });
    await closing;
    expect(((await p) as TransportError).kind).to.equal('closed');
    expect(r.s.state).to.equal('closed');
    expect(r.wire.destroyed).to.equal(true);
  });

  it('rejects requests it cannot express', async () => {
    const r = rig();
    expect(await settled(r.s.execute({ lun: 0, cdb: Buffer.alloc(4) }))).to.be.instanceOf(TypeError);
    expect(await settled(r.s.execute({ lun: 0, cdb: Buffer.alloc(10), dataOut: Buffer.alloc(1), dataInLength: 1 }))).to.be.instanceOf(TypeError);
  });
});
