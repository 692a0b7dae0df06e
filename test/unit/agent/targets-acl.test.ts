// The agent's initiator ACLs and CHAP (src/agent/targets.ts), over a real
// portal with the raw test initiator: refused initiators get login status
// 02/02, discovery hides targets they may not log in to, CHAP is required
// for every target and for discovery.
import { expect } from 'chai';
import { AgentTargets, targetAcl } from '../../../src/agent/targets.js';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { Opcode, RESERVED_TAG } from '../../../src/iscsi/pdu/types.js';
import { RawInitiator } from '../../support/raw-initiator.js';

const T1 = 'iqn.2026-11.org.tabula:acl-one';
const T2 = 'iqn.2026-11.org.tabula:acl-two';
const ALICE = 'iqn.2026-11.org.example:alice';
const BOB = 'iqn.2026-11.org.example:bob';

async function discover(port: number, initiatorName: string): Promise<string[]> {
  const c = await RawInitiator.connect(port);
  try {
    const r = await c.login({ sessionType: 'Discovery', initiatorName });
    expect(r.statusClass, 'discovery login').to.equal(0);
    c.send({ opcode: Opcode.TextRequest, immediate: true, ahs: [], data: Buffer.from('SendTargets=All\0'), final: true, cont: false, lun: 0n, itt: 7, ttt: RESERVED_TAG, cmdSN: c.cmdSN, expStatSN: c.expStatSN });
    const p = await c.next();
    if (p?.opcode !== Opcode.TextResponse) throw new Error(`expected a text response, got ${p?.opcode ?? 'close'}`);
    return p.data
      .toString('utf8')
      .split('\0')
      .filter((kv) => kv.startsWith('TargetName='))
      .map((kv) => kv.slice('TargetName='.length));
  } finally {
    c.socket.destroy();
  }
}

async function loginStatus(port: number, targetName: string, initiatorName: string): Promise<[number, number]> {
  const c = await RawInitiator.connect(port);
  try {
    const r = await c.login({ targetName, initiatorName });
    return [r.statusClass, r.statusDetail];
  } finally {
    c.socket.destroy();
  }
}

describe('agent targets: initiator ACLs', () => {
  describe('targetAcl (a target admits whom every restricting LUN admits)', () => {
    it('is open when no LUN names initiators', () => {
      expect(targetAcl([])).to.equal(null);
      expect(targetAcl([[], undefined, []])).to.equal(null);
    });
    it('takes one LUN list as it is, lower-cased and without repeats', () => {
      expect(targetAcl([['IQN.2026-11.org.Example:Alice', ALICE, BOB]])).to.deep.equal([ALICE, BOB]);
    });
    it('intersects the lists of restricting LUNs and ignores open LUNs', () => {
      expect(targetAcl([[ALICE, BOB], [], [BOB]])).to.deep.equal([BOB]);
    });
    it('admits nobody when the lists are disjoint', () => {
      expect(targetAcl([[ALICE], [BOB]])).to.deep.equal([]);
    });
  });

  it('advertises the segment as the OPTIMAL UNMAP GRANULARITY when given, 1 block otherwise', async () => {
    const targets = new AgentTargets();
    try {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1', unmapGranularityBlocks: 2048 }, new MemoryBlockDevice(4096));
      targets.addLun({ targetIqn: T2, lun: 0, readOnly: false, lunId: 'v2' }, new MemoryBlockDevice(4096));
      expect(targets.logicalUnit(T1, 0)?.limits.unmapGranularity).to.equal(2048);
      expect(targets.logicalUnit(T2, 0)?.limits.unmapGranularity).to.equal(1);
    } finally {
      await targets.close();
    }
  });

  describe('over a portal', () => {
    let targets: AgentTargets;
    let port: number;
    const dev = (): MemoryBlockDevice => new MemoryBlockDevice(2048);

    beforeEach(async () => {
      targets = new AgentTargets();
      [{ port }] = (await targets.listen([{ host: '127.0.0.1', port: 0 }])) as [{ host: string; port: number }];
    });
    afterEach(async () => {
      await targets.close();
    });

    it('refuses an initiator the export does not name with 02/02 and lets a named one in', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1', allowedInitiators: [ALICE] }, dev());
      expect(await loginStatus(port, T1, ALICE)).to.deep.equal([0, 0]);
      expect(await loginStatus(port, T1, BOB)).to.deep.equal([0x02, 0x02]);
      // iSCSI names compare case-insensitively.
      expect(await loginStatus(port, T1, ALICE.toUpperCase().replace('IQN', 'iqn'))).to.deep.equal([0, 0]);
    });

    it('lets any initiator in when the export names none', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1', allowedInitiators: [] }, dev());
      expect(await loginStatus(port, T1, BOB)).to.deep.equal([0, 0]);
      expect(targets.allowedInitiators(T1)).to.equal(null);
    });

    it('lists in discovery only the targets the initiator may log in to', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1', allowedInitiators: [ALICE] }, dev());
      targets.addLun({ targetIqn: T2, lun: 0, readOnly: false, lunId: 'v2' }, dev());
      expect((await discover(port, ALICE)).sort()).to.deep.equal([T1, T2]);
      expect(await discover(port, BOB)).to.deep.equal([T2]);
    });

    it('narrows a target when a restricted LUN joins it, ending sessions of initiators no longer admitted', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1' }, dev());
      const bob = await RawInitiator.connect(port);
      const alice = await RawInitiator.connect(port);
      try {
        expect((await bob.login({ targetName: T1, initiatorName: BOB })).statusClass).to.equal(0);
        expect((await alice.login({ targetName: T1, initiatorName: ALICE })).statusClass).to.equal(0);
        targets.addLun({ targetIqn: T1, lun: 1, readOnly: false, lunId: 'v2', allowedInitiators: [ALICE] }, dev());
        expect(targets.allowedInitiators(T1)).to.deep.equal([ALICE]);
        await bob.closed;
        expect(bob.isClosed).to.equal(true);
        expect(alice.isClosed).to.equal(false);
        expect(await loginStatus(port, T1, BOB)).to.deep.equal([0x02, 0x02]);
        // The restricted LUN leaves: the target is open again.
        targets.removeLun(T1, 1);
        expect(targets.allowedInitiators(T1)).to.equal(null);
        expect(await loginStatus(port, T1, BOB)).to.deep.equal([0, 0]);
      } finally {
        bob.socket.destroy();
        alice.socket.destroy();
      }
    });
  });

  describe('agent-wide initiator list (security.allowed-initiators)', () => {
    let targets: AgentTargets;
    let port: number;
    const CAROL = 'iqn.2026-11.org.example:carol';
    beforeEach(async () => {
      targets = new AgentTargets({ allowedInitiators: [ALICE.toUpperCase().replace('IQN', 'iqn'), CAROL] });
      [{ port }] = (await targets.listen([{ host: '127.0.0.1', port: 0 }])) as [{ host: string; port: number }];
    });
    afterEach(async () => {
      await targets.close();
    });

    it('admits only listed initiators to a target whose export names none, and hides it from the others', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1' }, new MemoryBlockDevice(2048));
      expect(targets.allowedInitiators(T1)).to.deep.equal([ALICE, CAROL]);
      expect(await loginStatus(port, T1, ALICE)).to.deep.equal([0, 0]);
      expect(await loginStatus(port, T1, BOB)).to.deep.equal([0x02, 0x02]);
      expect(await discover(port, ALICE)).to.deep.equal([T1]);
      expect(await discover(port, BOB)).to.deep.equal([]);
    });

    it('intersects with the export lists: an export cannot open the agent to an initiator it does not list', async () => {
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1', allowedInitiators: [BOB, CAROL] }, new MemoryBlockDevice(2048));
      expect(targets.allowedInitiators(T1)).to.deep.equal([CAROL]);
      expect(await loginStatus(port, T1, BOB)).to.deep.equal([0x02, 0x02]);
      expect(await loginStatus(port, T1, ALICE)).to.deep.equal([0x02, 0x02]);
      expect(await loginStatus(port, T1, CAROL)).to.deep.equal([0, 0]);
      targets.addLun({ targetIqn: T2, lun: 0, readOnly: false, lunId: 'v2', allowedInitiators: [BOB] }, new MemoryBlockDevice(2048));
      expect(targets.allowedInitiators(T2)).to.deep.equal([]);
      expect(await loginStatus(port, T2, BOB)).to.deep.equal([0x02, 0x02]);
    });
  });

  describe('agent CHAP', () => {
    let targets: AgentTargets;
    let port: number;

    afterEach(async () => {
      await targets.close();
    });

    it('requires authentication for every target and for discovery', async () => {
      targets = new AgentTargets({ chap: { user: 'agentuser', secret: 'agent-secret-1234' } });
      [{ port }] = (await targets.listen([{ host: '127.0.0.1', port: 0 }])) as [{ host: string; port: number }];
      targets.addLun({ targetIqn: T1, lun: 0, readOnly: false, lunId: 'v1' }, new MemoryBlockDevice(2048));
      targets.addLun({ targetIqn: T2, lun: 0, readOnly: false, lunId: 'v2', allowedInitiators: [ALICE] }, new MemoryBlockDevice(2048));
      expect(targets.chapRequired).to.equal(true);
      // The raw initiator offers AuthMethod=None only: authentication failure 02/01.
      expect(await loginStatus(port, T1, BOB)).to.deep.equal([0x02, 0x01]);
      expect(await loginStatus(port, T2, ALICE)).to.deep.equal([0x02, 0x01]);
      const c = await RawInitiator.connect(port);
      try {
        const r = await c.login({ sessionType: 'Discovery', initiatorName: ALICE });
        expect([r.statusClass, r.statusDetail]).to.deep.equal([0x02, 0x01]);
      } finally {
        c.socket.destroy();
      }
    });

    it('refuses mutual CHAP without CHAP', () => {
      expect(() => new AgentTargets({ mutualChap: { user: 'a', secret: 'b' } })).to.throw(/mutual CHAP needs CHAP/);
    });
  });
});
