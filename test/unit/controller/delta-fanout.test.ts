import { expect } from 'chai';
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { Admin } from '../../../src/controller/admin.js';
import type { AgentCall } from '../../../src/controller/agent-link.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { Controller } from '../../../src/controller/controller.js';
import { SegmentState } from '../../../src/table/index.js';
import { EncodedMessage, agentServiceDefinition } from '../../../src/wire/grpc.js';
import type { AgentMessage, ControllerMessage } from '../../../src/wire/proto-types.js';
import { CA, MiB, containerRef, tempDir } from './helpers.js';

/** An agent stream without gRPC: what the controller writes is kept as written. */
class FakeCall extends EventEmitter {
  readonly written: (ControllerMessage | EncodedMessage)[] = [];
  constructor(readonly peer: string) {
    super();
  }
  getPeer(): string {
    return this.peer;
  }
  write(m: ControllerMessage | EncodedMessage): boolean {
    this.written.push(m);
    return true;
  }
  end(): void {}
  /** The agent sends a message. */
  say(m: AgentMessage): void {
    this.emit('data', m);
  }
}

describe('controller: a table delta goes to every holder encoded once', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let ctrl: Controller;
  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    ctrl = new Controller(db, { ackTimeoutMs: 60_000 });
  });
  afterEach(() => {
    ctrl.close();
    db.close();
    t.cleanup();
  });

  function agent(name: string): FakeCall {
    const call = new FakeCall(`fake:${name}`);
    ctrl.connect(call as unknown as AgentCall);
    call.say({ body: 'register', register: { agentName: name, portals: [], containers: [containerRef(CA, 8)], tables: [], softwareVersion: '', tableRuns: true } });
    return call;
  }

  it('writes one EncodedMessage instance to all holders in step; one behind gets its whole table instead', () => {
    const admin = new Admin(ctrl);
    admin.AddContainer({ id: CA, path: '/c/a', size: 9 * MiB, dataOffset: MiB });
    const calls = ['a1', 'a2', 'a3'].map(agent);
    const v = admin.CreateVdisk({ name: 'd', size: 4 * MiB });
    for (const n of ['a1', 'a2', 'a3']) admin.AddExport({ vdisk: 'd', agent: n });
    // a1 and a2 ack the whole table; a3 does not, but was sent version 1 too, so it is in step.
    for (const c of calls.slice(0, 2)) c.say({ body: 'tableAck', tableAck: { vdiskId: v.id, version: 1 } });
    const r1 = ctrl.tables.commitAndSend(v.id, (cx) => cx.set(2, SegmentState.Invalid, null));
    expect(r1?.version).to.equal(2);
    const deltas = calls.map((c) => c.written.at(-1));
    expect(deltas[0]).to.be.instanceOf(EncodedMessage);
    expect(deltas[1]).to.equal(deltas[0]);
    expect(deltas[2]).to.equal(deltas[0]);
    const decoded = agentServiceDefinition().Connect!.responseDeserialize((deltas[0] as EncodedMessage).bytes) as ControllerMessage;
    expect(decoded).to.deep.include({
      body: 'tableDelta',
      tableDelta: { vdiskId: v.id, fromVersion: 1, toVersion: 2, segmentCount: 4, extents: [{ first: 2, count: 1, state: SegmentState.Invalid, container: '', offset: 0 }] },
    });
    // a3 misses version 2 (say its stream lost it): the next change sends it the whole table, the others a delta.
    ctrl.agents.link('a3')!.noteSent(v.id, 1, false);
    const before = calls.map((c) => c.written.length);
    const r2 = ctrl.tables.commitAndSend(v.id, (cx) => cx.set(2, SegmentState.Zero, null));
    expect(r2?.version).to.equal(3);
    const sent = calls.map((c, i) => c.written.slice(before[i]));
    expect(sent[0]).to.have.length(1);
    expect(sent[1]![0]).to.equal(sent[0]![0]);
    expect(sent[2]!.every((m) => !(m instanceof EncodedMessage) && m.body === 'tableFull')).to.equal(true);
  });
});
