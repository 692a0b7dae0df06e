// IscsiSessionPool over sessions on fake wires: commands spread by load,
// sessions that are down are avoided, the pool's state follows its sessions.
import { expect } from 'chai';
import { IscsiSessionPool } from '../../../../src/iscsi/initiator/pool.js';
import type { ConnectOptions } from '../../../../src/iscsi/initiator/connect.js';
import { read16Cdb } from '../../../../src/iscsi/initiator/cdb.js';
import { TransportError, type TransportState } from '../../../../src/iscsi/initiator/transport.js';
import { Opcode, type ScsiCommandPdu } from '../../../../src/iscsi/pdu/types.js';
import { dataIn, rig, type Rig } from './fake-target.js';

const OPTS = { host: '127.0.0.1', port: 3260, targetName: 'iqn.x:t', initiatorName: 'iqn.x:i', backoffInitialMs: 5, backoffMaxMs: 10, logoutTimeoutMs: 10 };

describe('iSCSI session pool', () => {
  it('spreads commands over its sessions, each with its own ISID, and avoids one that is down', async () => {
    const rigs: Rig[] = [];
    const isids: number[] = [];
    let fail = false;
    const connectFn = async (o: ConnectOptions): Promise<Rig['s']> => {
      if (fail) throw new TransportError('unreachable', 'refused');
      isids.push(o.isid as number);
      const r = rig({}, { ...o, nopIntervalMs: 0 });
      rigs.push(r);
      return r.s;
    };
    const pool = await IscsiSessionPool.connect({ ...OPTS, connectFn, holdMs: 1000 }, 3);
    const states: TransportState[] = [];
    pool.onStateChange((s) => states.push(s));
    expect(new Set(isids).size).to.equal(3);
    const ps = Array.from({ length: 6 }, (_, i) => pool.execute({ lun: 0, cdb: read16Cdb(i, 1), dataInLength: 512 }));
    await new Promise((r) => setImmediate(r));
    const perSession = rigs.map((r) => r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand));
    expect(perSession.map((c) => c.length)).to.deep.equal([2, 2, 2]);
    perSession.forEach((cmds, i) => cmds.forEach((c) => rigs[i]!.feed(dataIn(rigs[i]!, c.itt, 0, Buffer.alloc(512), 0))));
    expect((await Promise.all(ps)).every((r) => r.status === 0)).to.equal(true);

    fail = true;
    rigs[0]!.s.connectionClosed('cut');
    await new Promise((r) => setImmediate(r));
    expect(pool.state).to.equal('up');
    const p = pool.execute({ lun: 0, cdb: read16Cdb(0, 1), dataInLength: 512 });
    await new Promise((r) => setImmediate(r));
    const sentTo = rigs.findIndex((r) => r.wire.sent.some((x) => x.opcode === Opcode.ScsiCommand));
    expect(sentTo).to.be.oneOf([1, 2]);
    const [cmd] = rigs[sentTo]!.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand);
    rigs[sentTo]!.feed(dataIn(rigs[sentTo]!, cmd!.itt, 0, Buffer.alloc(512), 0));
    expect((await p).status).to.equal(0);

    rigs[1]!.s.connectionClosed('cut');
    rigs[2]!.s.connectionClosed('cut');
    await new Promise((r) => setImmediate(r));
    expect(pool.state).to.equal('down');
    await pool.close();
    expect(pool.state).to.equal('closed');
    expect(states).to.deep.equal(['down', 'closed']);
  });
});
