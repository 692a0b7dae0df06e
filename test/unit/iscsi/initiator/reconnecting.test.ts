// ReconnectingSession over sessions on fake wires: commands lost with a
// connection run again on the next session, a session that does not come
// back fails them as 'unreachable' after the hold, close() ends everything.
import { expect } from 'chai';
import { ReconnectingSession } from '../../../../src/iscsi/initiator/reconnecting.js';
import type { IscsiInitiatorSession } from '../../../../src/iscsi/initiator/session.js';
import type { ConnectOptions } from '../../../../src/iscsi/initiator/connect.js';
import { TransportError, type ScsiResult, type TransportState } from '../../../../src/iscsi/initiator/transport.js';
import { read16Cdb } from '../../../../src/iscsi/initiator/cdb.js';
import { Opcode, type ScsiCommandPdu } from '../../../../src/iscsi/pdu/types.js';
import { dataIn, rig, type Rig } from './fake-target.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(probe: () => T | undefined, ms = 2000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(2);
  }
}

function settled(p: Promise<ScsiResult>): Promise<ScsiResult | Error> {
  return p.then(
    (v) => v,
    (e: Error) => e,
  );
}

/** A connectFn handing out sessions on fake wires; `fail` makes the next logins fail. */
function factory(): { rigs: Rig[]; fail: boolean; isids: number[]; connect: (o: ConnectOptions) => Promise<IscsiInitiatorSession> } {
  const f = {
    rigs: [] as Rig[],
    fail: false,
    isids: [] as number[],
    connect: async (o: ConnectOptions): Promise<IscsiInitiatorSession> => {
      f.isids.push(o.isid ?? -1);
      expect(o.tsih).to.equal(0);
      if (f.fail) throw new TransportError('unreachable', 'connection refused');
      const r = rig({}, { ...o, nopIntervalMs: 0 });
      f.rigs.push(r);
      return r.s;
    },
  };
  return f;
}

const OPTS = { host: '127.0.0.1', port: 3260, targetName: 'iqn.x:t', initiatorName: 'iqn.x:i', backoffInitialMs: 5, backoffMaxMs: 20, logoutTimeoutMs: 10 };

describe('iSCSI ReconnectingSession', () => {
  it('runs a command lost with its connection again on the reinstated session (same ISID, TSIH 0)', async () => {
    const f = factory();
    const states: TransportState[] = [];
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 5000 });
    r.onStateChange((s) => states.push(s));
    expect(r.state).to.equal('up');
    const p = r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 });
    await waitFor(() => f.rigs[0]!.wire.sent.length > 0 || undefined);
    f.rigs[0]!.s.connectionClosed('test cut');
    const second = await waitFor(() => f.rigs[1]);
    const [cmd] = await waitFor(() => {
      const c = second.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
      return c.length ? c : undefined;
    });
    second.feed(dataIn(second, cmd!.itt, 0, Buffer.alloc(512, 4), 0));
    const res = await p;
    expect(res.data?.[0]).to.equal(4);
    expect(states).to.deep.equal(['down', 'up']);
    expect(r.reconnects).to.equal(1);
    expect(new Set(f.isids).size).to.equal(1);
    await r.close();
  });

  it("fails held commands as 'unreachable' when no session comes back within holdMs", async () => {
    const f = factory();
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 80 });
    f.fail = true;
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    await waitFor(() => f.rigs[0]!.wire.sent.length > 0 || undefined);
    f.rigs[0]!.s.connectionClosed('test cut');
    const e = await p;
    expect(e).to.be.instanceOf(TransportError);
    expect((e as TransportError).kind).to.equal('unreachable');
    expect((e as Error).message).to.match(/connection refused/);
    // A command arriving while down waits at most holdMs as well.
    const late = await settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    expect((late as TransportError).kind).to.equal('unreachable');
    expect(f.isids.length).to.be.greaterThan(2);
    await r.close();
  });

  it('passes a command timeout through instead of running it again', async () => {
    const f = factory();
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 5000, commandTimeoutMs: 10, abortTimeoutMs: 2000 });
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    const tmf = await waitFor(() => f.rigs[0]!.wire.take<{ itt: number } & ScsiCommandPdu>(Opcode.TaskMgmtRequest)[0]);
    const rg = f.rigs[0]!;
    rg.feed({ opcode: Opcode.TaskMgmtResponse, immediate: false, ahs: [], data: Buffer.alloc(0), response: 0, itt: tmf.itt, ...rg.sn() });
    expect(((await p) as TransportError).kind).to.equal('timeout');
    expect(f.rigs).to.have.lengthOf(1);
    await r.close();
  });

  it("holds a command lost with its connection only until the caller's deadline, not holdMs from the loss", async () => {
    const f = factory();
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 60_000 });
    f.fail = true;
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, deadline: Date.now() + 100 }));
    await waitFor(() => f.rigs[0]!.wire.sent.length > 0 || undefined);
    f.rigs[0]!.s.connectionClosed('test cut');
    expect(((await p) as TransportError).kind).to.equal('unreachable');
    await r.close();
  });

  it('never runs a command again past its deadline, even on a session that is back', async () => {
    const f = factory();
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 60_000 });
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, deadline: Date.now() + 20 }));
    await waitFor(() => f.rigs[0]!.wire.sent.length > 0 || undefined);
    // Lost after its deadline, its abort unanswered.
    await sleep(40);
    f.rigs[0]!.s.connectionClosed('test cut');
    const e = await p;
    expect(e).to.be.instanceOf(TransportError);
    expect(['unreachable', 'timeout']).to.include((e as TransportError).kind);
    const second = await waitFor(() => f.rigs[1]);
    await sleep(20);
    expect(second.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand)).to.have.lengthOf(0);
    await r.close();
  });

  it("ends a command to a target gone silent within its deadline, whatever the command and abort timeouts", async () => {
    const f = factory();
    // A minute each: without the deadline this would take three.
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 60_000, commandTimeoutMs: 60_000, abortTimeoutMs: 60_000 });
    f.fail = true;
    const deadline = Date.now() + 50;
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512, deadline }));
    const lost = settled(r.execute({ lun: 0, cdb: read16Cdb(1, 1), dataInLength: 512, deadline: deadline + 100 }));
    const e = await p;
    // The timed-out command reports its timeout; the other one, past its own deadline too, either
    // its own timeout or the connection that went with it: both retryable, neither run again.
    expect((e as TransportError).kind).to.equal('timeout');
    expect(f.rigs[0]!.wire.destroyed).to.equal(true);
    const l = (await lost) as TransportError;
    expect(l).to.be.instanceOf(TransportError);
    expect(l.retryable).to.equal(true);
    expect(f.rigs.slice(1).every((x) => x.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand).length === 0)).to.equal(true);
    await r.close();
  });

  it('starts without waiting (start()), holds commands while connecting, and comes up when the target does', async () => {
    const f = factory();
    f.fail = true;
    const states: TransportState[] = [];
    const r = ReconnectingSession.start({ ...OPTS, connectFn: f.connect, holdMs: 5000 });
    r.onStateChange((s) => states.push(s));
    expect(r.state).to.equal('connecting');
    const p = r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 });
    await waitFor(() => (f.isids.length >= 3 ? true : undefined));
    expect(r.state).to.equal('connecting');
    f.fail = false;
    const first = await waitFor(() => f.rigs[0]);
    const [cmd] = await waitFor(() => {
      const c = first.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
      return c.length ? c : undefined;
    });
    first.feed(dataIn(first, cmd!.itt, 0, Buffer.alloc(512), 0));
    expect((await p).status).to.equal(0);
    expect(states).to.deep.equal(['up']);
    expect(r.reconnects).to.equal(0);
    await r.close();
  });

  it('fails waiting commands as closed on close(), and refuses new ones', async () => {
    const f = factory();
    const states: TransportState[] = [];
    const r = await ReconnectingSession.connect({ ...OPTS, connectFn: f.connect, holdMs: 60_000 });
    r.onStateChange((s) => states.push(s));
    f.fail = true;
    f.rigs[0]!.s.connectionClosed('test cut');
    const p = settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }));
    await sleep(20);
    await r.close();
    expect(((await p) as TransportError).kind).to.equal('closed');
    expect(((await settled(r.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 }))) as TransportError).kind).to.equal('closed');
    expect(states).to.deep.equal(['down', 'closed']);
  });
});
