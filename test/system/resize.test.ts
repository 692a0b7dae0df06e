// Online resize with initiators connected to two agents: growing a vdisk
// raises CAPACITY DATA HAS CHANGED (06/2A/09) on every session of every
// exporting agent, READ CAPACITY(16) then reports the new size, and the new
// space takes writes. Shrinking needs --force and an unexported vdisk.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { waitFor } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { CHECK_CONDITION, GOOD, LunSession, describeIo, senseText } from './scsi-client.js';
import { check } from './table.js';
import { expectOneLineError } from '../support/tabula-process.js';

const MiB = 1 << 20;
const VDISK = 'grow';

const TUR = Buffer.from([0, 0, 0, 0, 0, 0]);

/** READ CAPACITY(16): SERVICE ACTION IN(16) 0x9e / 0x10, 32 bytes. */
function readCapacity16Cdb(): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x9e;
  c[1] = 0x10;
  c.writeUInt32BE(32, 10);
  return c;
}

async function capacity(s: LunSession): Promise<{ lastLba: number; blockLength: number }> {
  const r = await s.command(readCapacity16Cdb(), { read: 32 });
  expect(describeIo(r)).to.equal('GOOD');
  return { lastLba: Number(r.data.readBigUInt64BE(0)), blockLength: r.data.readUInt32BE(8) };
}

describe('system: online resize', function () {
  this.timeout(120_000);
  const cluster = useCluster('resize', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '128MiB', agents: { a: {}, b: {} } });
  });

  it('grow: every connected initiator sees 06/2A/09 and READ CAPACITY(16) reports the new size', async function () {
    const c = cluster();
    await writeP(c.url('a', VDISK), 0x5a, 15 * MiB, MiB);
    // Two sessions on agent a (two I_T nexuses) and one on agent b.
    const sessions = await Promise.all([
      LunSession.open(c.agent('a').portal, iqnOf(VDISK)),
      LunSession.open(c.agent('a').portal, iqnOf(VDISK)),
      LunSession.open(c.agent('b').portal, iqnOf(VDISK)),
    ]);
    try {
      for (const s of sessions) expect(await capacity(s)).to.deep.equal({ lastLba: (16 * MiB) / 512 - 1, blockLength: 512 });

      const out = await c.cliOk(['vdisk', 'resize', VDISK, '40MiB']);
      expect(out).to.match(/vdisk grow is now 40MiB \(40 segments\)/);

      for (const [i, s] of sessions.entries()) {
        const r = await s.command(TUR, {});
        expect(r.status, `session ${i}: ${describeIo(r)}`).to.equal(CHECK_CONDITION);
        expect(senseText(r.sense), `session ${i}`).to.equal('06/2a/09');
        // Reported once per nexus.
        expect(describeIo(await s.command(TUR, {})), `session ${i} second TUR`).to.equal('GOOD');
        expect(await capacity(s), `session ${i}`).to.deep.equal({ lastLba: (40 * MiB) / 512 - 1, blockLength: 512 });
      }
      // The new end takes writes through one agent and reads back through the other.
      const lastLba = (40 * MiB) / 512 - 8;
      const data = Buffer.alloc(8 * 512, 0x77);
      expect(describeIo(await sessions[2]!.write(lastLba, data))).to.equal('GOOD');
      const back = await sessions[0]!.read(lastLba, 8);
      expect(back.status).to.equal(GOOD);
      expect(back.data.equals(data)).to.equal(true);
    } finally {
      for (const s of sessions) s.close();
    }
    // Old data kept, new space zero (and writable) from a fresh client.
    await readP(c.url('b', VDISK), 0x5a, 15 * MiB, MiB);
    await readP(c.url('b', VDISK), 0, 16 * MiB, 8 * MiB);
    await writeP(c.url('b', VDISK), 0x6b, 30 * MiB, MiB);
    await readP(c.url('a', VDISK), 0x6b, 30 * MiB, MiB);
    const v = await c.admin.call('ShowVdisk', { name: VDISK });
    expect(v.size).to.equal(40 * MiB);
    expect(v.segmentCount).to.equal(40);
    expect((await c.admin.call('Check', {})).violations).to.deep.equal([]);
  });

  it('shrink: refused without --force, refused while exported, done with --force once unexported', async function () {
    const c = cluster();
    expectOneLineError(await c.cli(['vdisk', 'resize', VDISK, '8MiB']), /smaller than its 40MiB; shrinking is not supported without --force/);
    expectOneLineError(await c.cli(['vdisk', 'resize', VDISK, '8MiB', '--force']), /exported on a, b; remove the exports before shrinking/);
    await Promise.all([c.cliOk(['export', 'rm', VDISK, '--agent', 'a']), c.cliOk(['export', 'rm', VDISK, '--agent', 'b'])]);
    const before = (await c.admin.call('ListContainers', {})).containers[0]!.segmentsUsed;
    const out = await c.cliOk(['vdisk', 'resize', VDISK, '8MiB', '--force']);
    expect(out).to.match(/vdisk grow is now 8MiB \(8 segments\)/);
    // Segments 15, 30 and 39 held data past the new end: freed (once scrubbed).
    await waitFor('3 container segments freed', 30_000, async () => {
      const after = (await c.admin.call('ListContainers', {})).containers[0]!.segmentsUsed;
      return before - after === 3 ? true : undefined;
    });
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
