// The agent's target port identity (src/agent/targets.ts) over real portals
// with the raw test initiator: agent number n makes portal i TPGT and
// relative target port n*16+i+1 in group n (SendTargets, VPD 0x83); the port groups the controller sends go on the LU, RTPG
// reports them, and a state change raises 06/2A/06.
import { expect } from 'chai';
import { AgentTargets } from '../../../src/agent/targets.js';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { Opcode, RESERVED_TAG } from '../../../src/iscsi/pdu/types.js';
import { AccessState } from '../../../src/scsi/lu-api.js';
import { RawInitiator } from '../../support/raw-initiator.js';

const T = 'iqn.2026-11.org.tabula:alua-unit';

async function session(port: number): Promise<RawInitiator> {
  const c = await RawInitiator.connect(port);
  const r = await c.login({ targetName: T });
  expect(r.statusClass, 'login').to.equal(0);
  return c;
}

/** The target port designators of VPD 0x83 (association 1): its name, relative port and group. */
async function ownPort(c: RawInitiator): Promise<{ name: string; relativePort: number; group: number }> {
  const d = (await c.scsi(Buffer.from([0x12, 1, 0x83, 0x10, 0, 0]), { read: 4096 })).data;
  const out = { name: '', relativePort: -1, group: -1 };
  for (let off = 4; off + 4 <= d.length; off += 4 + d[off + 3]!) {
    if (((d[off + 1]! >> 4) & 3) !== 1) continue;
    const type = d[off + 1]! & 0x0f;
    if (type === 4) out.relativePort = d.readUInt16BE(off + 6);
    if (type === 5) out.group = d.readUInt16BE(off + 6);
    if (type === 8) out.name = d.subarray(off + 4, off + 4 + d[off + 3]!).toString('utf8').replace(/\0+$/, '');
  }
  return out;
}

describe('agent targets: target port identity from the agent number, port groups on the LU', function () {
  this.timeout(20_000);
  let targets: AgentTargets | undefined;
  const open: RawInitiator[] = [];
  afterEach(async () => {
    for (const c of open.splice(0)) c.destroy();
    await targets?.close();
    targets = undefined;
  });

  it('agent 3: portals are TPGT and relative port 49 and 50 in group 3, in discovery and VPD 0x83', async () => {
    targets = new AgentTargets();
    const [p0, p1] = await targets.listen([
      { host: '127.0.0.1', port: 0 },
      { host: '127.0.0.1', port: 0 },
    ]);
    targets.setAgentNumber(3);
    targets.addLun({ targetIqn: T, lun: 0, readOnly: false, lunId: 'v' }, new MemoryBlockDevice(2048));
    const s0 = await session(p0!.port);
    const s1 = await session(p1!.port);
    open.push(s0, s1);
    expect(targets.logicalUnit(T, 0)?.portGroups()).to.deep.equal([{ id: 3, relativePortIds: [49, 50] }]);
    expect(await ownPort(s0)).to.deep.equal({ name: `${T},t,0x0031`, relativePort: 49, group: 3 });
    expect(await ownPort(s1)).to.deep.equal({ name: `${T},t,0x0032`, relativePort: 50, group: 3 });

    const d = await RawInitiator.connect(p0!.port);
    open.push(d);
    expect((await d.login({ sessionType: 'Discovery' })).statusClass).to.equal(0);
    d.send({ opcode: Opcode.TextRequest, immediate: true, ahs: [], data: Buffer.from('SendTargets=All\0'), final: true, cont: false, lun: 0n, itt: 7, ttt: RESERVED_TAG, cmdSN: d.cmdSN, expStatSN: d.expStatSN });
    const text = await d.next();
    expect(text?.data.toString('utf8')).to.include(`127.0.0.1:${p0!.port},49`).and.to.include(`127.0.0.1:${p1!.port},50`);
  });

  it('the port groups the controller sends: RTPG lists them; a changed state raises 06/2A/06 on the LU', async () => {
    targets = new AgentTargets();
    const [p0] = await targets.listen([{ host: '127.0.0.1', port: 0 }]);
    targets.setAgentNumber(1);
    targets.addLun({ targetIqn: T, lun: 0, readOnly: false, lunId: 'v' }, new MemoryBlockDevice(2048));
    const groups = (b: AccessState) => [
      { id: 1, relativePortIds: [17], state: AccessState.ActiveOptimized },
      { id: 2, relativePortIds: [33], state: b },
    ];
    expect(targets.setPortGroups(T, 0, groups(AccessState.ActiveOptimized))).to.equal(false);
    const c = await session(p0!.port);
    open.push(c);
    const tur = Buffer.from([0, 0, 0, 0, 0, 0]);
    expect((await c.scsi(tur)).status).to.equal(0);
    expect(targets.setPortGroups(T, 0, groups(AccessState.Unavailable))).to.equal(true);
    const ua = await c.scsi(tur);
    expect(ua.status).to.equal(2);
    const sense = ua.sense!;
    expect([sense[2]! & 0x0f, sense[12], sense[13]]).to.deep.equal([6, 0x2a, 0x06]);
    const rtpg = Buffer.alloc(12);
    rtpg[0] = 0xa3;
    rtpg[1] = 0x0a;
    rtpg.writeUInt32BE(4096, 6);
    const r = await c.scsi(rtpg, { read: 4096 });
    expect(r.status).to.equal(0);
    expect([r.data[4]! & 0x0f, r.data.readUInt16BE(6), r.data[16 + 0]! & 0x0f, r.data.readUInt16BE(18)]).to.deep.equal([0, 1, 3, 2]);
  });
});
