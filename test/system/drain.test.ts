// Graceful stop of an agent: SIGTERM while a WRITE is in flight (held on a
// segment an admin set invalid, so it is in flight for as long as we like).
// The agent stops taking logins, lets the WRITE finish once the segment is
// set back, asks idle initiators to log out (Async Message, AsyncEvent 1),
// flushes, and exits 0 within its bound; the data is there after a restart.
import { expect } from 'chai';
import { Opcode } from '../../src/iscsi/pdu/types.js';
import { RawInitiator } from '../support/raw-initiator.js';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { exitStatus, sleep } from '../support/process.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';

const VDISK = 'dr';
const SEG_BLOCKS = (1 << 20) / 512;
/** 32 KiB into segment 5. */
const LBA = 5 * SEG_BLOCKS + 64;
const BLOCKS = 512;

describe('system: graceful stop of an agent (SIGTERM drains)', function () {
  this.timeout(180_000);
  const cluster = useCluster('drain', async (c) => {
    requireTools(['timeout']);
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: {} }, controller: { holdTimeoutS: 60 } });
  });

  it('finishes the WRITE in flight, asks idle initiators to log out, refuses new logins and exits 0', async function () {
    const c = cluster();
    const a = c.agent('a');
    const writer = await LunSession.open(a.portal, iqnOf(VDISK));
    // A second, idle session: it gets the logout request and answers it.
    const idle = await RawInitiator.connect(a.port);
    expect((await idle.login({ targetName: iqnOf(VDISK), initiatorName: 'iqn.2026-11.org.tabula.test:idle' })).statusClass).to.equal(0);

    await c.cliOk(['segment', 'set-state', VDISK, '5', '--state', 'invalid']);
    const data = pattern(0xd7a1, LBA, BLOCKS);
    const write = writer.write(LBA, data, 60_000);
    let settled = false;
    void write.then(() => (settled = true), () => (settled = true));
    await sleep(500);
    expect(settled, 'the WRITE to an invalid segment is held').to.equal(false);

    const t0 = Date.now();
    const stopped = exitStatus(a.daemon.child);
    // The agent itself, not its timeout wrapper: that would SIGKILL it 5 s later, mid-drain.
    process.kill(a.daemon.processPid, 'SIGTERM');
    // The idle session is asked to log out (AsyncEvent 1) and does.
    const msg = await idle.next(10_000);
    expect(msg?.opcode, 'Async Message').to.equal(Opcode.AsyncMessage);
    if (msg?.opcode !== Opcode.AsyncMessage) throw new Error('unreachable');
    expect(msg.asyncEvent, 'AsyncEvent 1: target requests logout').to.equal(1);
    expect(msg.parameter3, 'seconds to log out in').to.be.greaterThan(0);
    idle.send({ opcode: Opcode.LogoutRequest, immediate: true, ahs: [], data: Buffer.alloc(0), reason: 0, itt: idle.itt(), cid: 0, cmdSN: idle.cmdSN, expStatSN: idle.expStatSN } as never);
    const lr = await idle.next(5000);
    expect(lr?.opcode, 'Logout Response').to.equal(Opcode.LogoutResponse);

    // No new logins while draining.
    let refused = '';
    await LunSession.open(a.portal, iqnOf(VDISK)).then(
      (s) => s.close(),
      (e: Error) => (refused = e.message),
    );
    expect(refused, 'a login during the drain').to.not.equal('');
    expect(a.daemon.running, 'still draining: the WRITE is in flight').to.equal(true);

    // The segment is set back: the held WRITE completes with GOOD before the agent goes.
    await c.cliOk(['segment', 'set-state', VDISK, '5', '--state', 'normal']);
    const r = await write;
    expect(r.status, describeIo(r)).to.equal(GOOD);
    const code = await stopped;
    expect(code, `agent exit status\n${a.daemon.logTail(20)}`).to.equal(0);
    expect(Date.now() - t0, 'within the drain bound plus shutdown').to.be.below(35_000);
    writer.close();
    idle.destroy();
    const log = a.daemon.log();
    expect(log).to.match(/iSCSI portal drain/);

    // The data is on disk: a restarted agent reads it back.
    await c.startAgent('a', { containers: [c.containerGlob] });
    await c.waitServed(VDISK, ['a']);
    const reader = await LunSession.open(a.portal, iqnOf(VDISK));
    try {
      const back = await reader.read(LBA, BLOCKS);
      expect(back.status, describeIo(back)).to.equal(GOOD);
      expect(back.data.equals(data), 'the WRITE that was in flight at SIGTERM reads back').to.equal(true);
    } finally {
      reader.close();
    }
  });
});
