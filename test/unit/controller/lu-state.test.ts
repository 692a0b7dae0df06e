import { expect } from 'chai';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { Admin } from '../../../src/controller/admin.js';
import type { AgentCall } from '../../../src/controller/agent-link.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { Controller } from '../../../src/controller/controller.js';
import { EncodedMessage, agentServiceDefinition } from '../../../src/wire/grpc.js';
import { LuEventScope, LuRequestKind, type AgentMessage, type ControllerMessage, type LuReply, type NexusRef, type TableDeltaMsg } from '../../../src/wire/proto-types.js';
import { CA, MiB, containerRef, tempDir, until } from './helpers.js';

/** An agent stream without gRPC: what the controller writes, decoded. */
class FakeCall extends EventEmitter {
  readonly written: ControllerMessage[] = [];
  constructor(readonly peer: string) {
    super();
  }
  getPeer(): string {
    return this.peer;
  }
  write(m: ControllerMessage | EncodedMessage): boolean {
    this.written.push(m instanceof EncodedMessage ? (agentServiceDefinition().Connect!.responseDeserialize(m.bytes) as ControllerMessage) : m);
    return true;
  }
  end(): void {}
  say(m: AgentMessage): void {
    this.emit('data', m);
  }
  deltas(): TableDeltaMsg[] {
    return this.written.flatMap((m) => (m.body === 'tableDelta' ? [m.tableDelta] : []));
  }
  replies(): LuReply[] {
    return this.written.flatMap((m) => (m.body === 'luReply' ? [m.luReply] : []));
  }
}

const TP = 'iqn.2026-11.org.tabula:d,t,0x0001';
const n1: NexusRef = { initiatorPort: 'iqn.2007-10.test:one,i,0x000000000001', targetPort: TP, relativeTargetPortId: 1, targetPortGroup: 1 };
const n2: NexusRef = { initiatorPort: 'iqn.2007-10.test:two,i,0x000000000002', targetPort: TP, relativeTargetPortId: 1, targetPortGroup: 1 };

function prout(sa: number, type: number, key: bigint, sark: bigint, flags = 0): { cdb: Buffer; data: Buffer } {
  const cdb = Buffer.alloc(10);
  cdb[0] = 0x5f;
  cdb[1] = sa;
  cdb[2] = type;
  cdb.writeUInt32BE(24, 5);
  const data = Buffer.alloc(24);
  data.writeBigUInt64BE(key, 0);
  data.writeBigUInt64BE(sark, 8);
  data[20] = flags;
  return { cdb, data };
}

describe('controller: each vdisk\'s LU state', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let ctrl: Controller;
  let vdiskId: string;
  let calls: FakeCall[];
  let nextId = 1;

  function connect(name: string, tables: { vdiskId: string; version: number }[] = []): FakeCall {
    const call = new FakeCall(`fake:${name}`);
    ctrl.connect(call as unknown as AgentCall);
    call.say({ body: 'register', register: { agentName: name, portals: [], containers: [containerRef(CA, 8)], tables, softwareVersion: '', tableRuns: true } });
    return call;
  }

  function ackAll(version: number): void {
    for (const c of calls) c.say({ body: 'tableAck', tableAck: { vdiskId, version } });
  }

  function request(call: FakeCall, kind: LuRequestKind, nexus: NexusRef, p: { cdb: Buffer; data: Buffer } = { cdb: Buffer.alloc(0), data: Buffer.alloc(0) }): number {
    const requestId = nextId++;
    call.say({ body: 'luRequest', luRequest: { requestId, vdiskId, kind, cdb: p.cdb, data: p.data, nexus } });
    return requestId;
  }

  async function reply(call: FakeCall, requestId: number): Promise<LuReply> {
    await until(() => call.replies().some((r) => r.requestId === requestId), 5000, `LuReply ${requestId}`);
    return call.replies().find((r) => r.requestId === requestId)!;
  }

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    ctrl = new Controller(db, { ackTimeoutMs: 60_000 });
    const admin = new Admin(ctrl);
    admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    calls = ['a', 'b'].map((n) => connect(n));
    vdiskId = admin.CreateVdisk({ name: 'd', size: 4 * MiB }).id;
    for (const n of ['a', 'b']) admin.AddExport({ vdisk: 'd', agent: n });
    ackAll(1);
  });
  afterEach(() => {
    ctrl.close();
    db.close();
    t.cleanup();
  });

  it('applies PROUT as a version with no segment change, and answers only after every holder acked it', async () => {
    const [a, b] = calls as [FakeCall, FakeCall];
    const id = request(a, LuRequestKind.Prout, n1, prout(0, 0, 0n, 0xabcn, 0x01));
    await until(() => b.deltas().length > 0, 5000, 'the delta');
    for (const c of [a, b]) {
      const d = c.deltas().at(-1)!;
      expect(d).to.include({ fromVersion: 1, toVersion: 2 });
      expect(d.extents).to.deep.equal([]);
      expect(d.lu?.state).to.deep.include({ prGeneration: 1, aptpl: true, reservationType: 0 });
      expect(d.lu?.state?.registrations).to.deep.equal([{ key: '0000000000000abc', nexus: n1, allTgPt: false }]);
    }
    a.say({ body: 'tableAck', tableAck: { vdiskId, version: 2 } });
    await new Promise((r) => setTimeout(r, 50));
    expect(a.replies()).to.deep.equal([]);
    b.say({ body: 'tableAck', tableAck: { vdiskId, version: 2 } });
    expect(await reply(a, id)).to.include({ status: 0, prGeneration: 1 });
    expect(db.luState(vdiskId)?.registrations).to.have.length(1);
  });

  it('answers a conflicting request without a new version', async () => {
    const [a, b] = calls as [FakeCall, FakeCall];
    const r1 = request(a, LuRequestKind.Prout, n1, prout(0, 0, 0n, 0xabcn));
    await until(() => b.deltas().length > 0);
    ackAll(2);
    await reply(a, r1);
    const r2 = request(a, LuRequestKind.Prout, n1, prout(1, 3, 0xabcn, 0n));
    await until(() => b.deltas().length > 1);
    ackAll(3);
    await reply(a, r2);
    // Through the other agent: an unregistered initiator's RESERVE(6) conflicts with the registrations.
    const r3 = request(b, LuRequestKind.Reserve, n2, { cdb: Buffer.from([0x16, 0, 0, 0, 0, 0]), data: Buffer.alloc(0) });
    expect(await reply(b, r3)).to.include({ status: 0x18 });
    // A bad parameter list: CHECK CONDITION with the field pointer.
    const r4 = request(b, LuRequestKind.Prout, n2, prout(0, 0, 0n, 1n, 0x08));
    expect(await reply(b, r4)).to.include({ status: 2, senseKey: 5, asc: 0x26, fieldValid: true, fieldInCdb: false, fieldByte: 20, fieldBit: 3 });
    expect(b.deltas()).to.have.length(2);
  });

  it('sends an LU reset to every path as a unit attention event that aborts tasks', async () => {
    const [a, b] = calls as [FakeCall, FakeCall];
    const id = request(a, LuRequestKind.LuReset, n1);
    await until(() => b.deltas().length > 0);
    expect(b.deltas()[0]!.lu?.events).to.deep.equal([{ senseKey: 6, asc: 0x29, ascq: 0x03, scope: LuEventScope.All, nexus: null, abortTasks: true }]);
    ackAll(2);
    expect(await reply(a, id)).to.include({ status: 0 });
  });

  it('applies MODE SELECT to every path: the new mode pages in the delta, MODE PARAMETERS CHANGED for every other nexus, kept in its database', async () => {
    const [a, b] = calls as [FakeCall, FakeCall];
    // MODE SELECT(10), caching page with WCE=0
    const page = [0x08, 0x12, 0x00, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    const data = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, ...page]);
    const cdb = Buffer.from([0x55, 0x10, 0, 0, 0, 0, 0, 0, data.length, 0]);
    const id = request(b, LuRequestKind.ModeSelect, n2, { cdb, data });
    await until(() => a.deltas().length > 0, 5000, 'the delta');
    const d = a.deltas()[0]!;
    expect(d.extents).to.deep.equal([]);
    expect(d.lu?.state?.modePages).to.deep.equal([{ page: 8, subpage: 0, values: Buffer.from(page).toString('hex') }]);
    expect(d.lu?.events).to.deep.equal([{ senseKey: 6, asc: 0x2a, ascq: 0x01, scope: LuEventScope.AllBut, nexus: n2, abortTasks: false }]);
    await new Promise((r) => setTimeout(r, 50));
    expect(b.replies()).to.deep.equal([]);
    ackAll(2);
    expect(await reply(b, id)).to.include({ status: 0 });
    expect(db.luState(vdiskId)?.modePages).to.have.length(1);
    // The same values again: no new version.
    const again = request(a, LuRequestKind.ModeSelect, n1, { cdb, data });
    expect(await reply(a, again)).to.include({ status: 0 });
    expect(a.deltas()).to.have.length(1);
  });

  it('refuses requests from an agent that does not export the vdisk', async () => {
    const c = connect('c');
    calls.push(c);
    const id = request(c, LuRequestKind.Prout, n1, prout(0, 0, 0n, 1n));
    expect(await reply(c, id)).to.include({ status: 2, senseKey: 5, asc: 0x25 });
  });

  it('keeps the state in its database: a restarted controller sends it with the whole table', async () => {
    const [a, b] = calls as [FakeCall, FakeCall];
    const id = request(a, LuRequestKind.Prout, n1, prout(0, 0, 0n, 0x77n, 0x01));
    await until(() => b.deltas().length > 0);
    ackAll(2);
    await reply(a, id);
    ctrl.close();
    ctrl = new Controller(db, { ackTimeoutMs: 60_000 });
    const fresh = connect('b');
    calls = [fresh];
    await until(() => fresh.written.some((m) => m.body === 'tableFull'));
    const full = fresh.written.find((m) => m.body === 'tableFull');
    expect(full?.body === 'tableFull' && full.tableFull.luState?.registrations).to.deep.equal([{ key: '0000000000000077', nexus: n1, allTgPt: false }]);
    expect(full?.body === 'tableFull' && full.tableFull.luState?.aptpl).to.equal(true);
  });
});
