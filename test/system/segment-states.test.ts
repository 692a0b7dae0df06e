// `tabula segment set-state` on a live export: error makes I/O to that
// segment fail with MEDIUM ERROR (03/11/00 read, 03/0C/00 write) while the
// others keep working; invalid holds I/O until the state is set back, then it
// completes. Every fault names the operation, the segment and the inhibiting
// state, on the wire and in `tabula fault ls`.
import { expect } from 'chai';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { sleep } from '../support/process.js';
import { readP, writeP } from './clients.js';
import { CHECK_CONDITION, LunSession, describeIo, pattern, senseText, type IoResult } from './scsi-client.js';
import { STATE, check, faults, segments, table } from './table.js';

const MiB = 1 << 20;
const VDISK = 'st';
const BLOCKS_PER_SEG = MiB / 512;

describe('system: segment states set by the admin', function () {
  this.timeout(180_000);
  const cluster = useCluster('segment-states', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '16MiB', containerSize: '64MiB', agents: { a: {} }, controller: { holdTimeoutS: 60 } });
    await writeP(c.url('a', VDISK), 0x55, 0, 4 * MiB);
  });

  let s: LunSession;
  beforeEach(async function () {
    s = await LunSession.open(cluster().agent('a').portal, iqnOf(VDISK));
  });
  afterEach(() => s.close());

  it('error: reads fail 03/11/00 and writes 03/0C/00 on that segment only; fault ls names them', async function () {
    const c = cluster();
    const out = await c.cliOk(['segment', 'set-state', VDISK, '2', '--state', 'error']);
    expect(out).to.match(/segment 2 set to error/);
    expect(segments(await table(c, VDISK))[2]?.state).to.equal(STATE.error);
    const lba = 2 * BLOCKS_PER_SEG + 16;

    const rd = await s.read(lba, 8);
    expect(rd.status, describeIo(rd)).to.equal(CHECK_CONDITION);
    expect(senseText(rd.sense)).to.equal('03/11/00');
    const wr = await s.write(lba, pattern(0xee, lba, 8));
    expect(wr.status, describeIo(wr)).to.equal(CHECK_CONDITION);
    expect(senseText(wr.sense)).to.equal('03/0c/00');

    // The neighbours keep working.
    const lba1 = 1 * BLOCKS_PER_SEG + 100;
    expect(describeIo(await s.write(lba1, pattern(0x11, lba1, 8)))).to.equal('GOOD');
    const r1 = await s.read(lba1, 8);
    expect(r1.data.equals(pattern(0x11, lba1, 8))).to.equal(true);
    await readP(c.url('a', VDISK), 0x55, 3 * MiB, MiB);

    // A read spanning segments 1-2 fails too (a piece of it is in the error segment).
    const span = await s.read(2 * BLOCKS_PER_SEG - 4, 8);
    expect(senseText(span.sense)).to.equal('03/11/00');

    const fs = await c.cliJson<Array<{ agent: string; segment: number; op: string; state: string; lba: number; blocks: number; outcome: string }>>(['fault', 'ls', '--vdisk', VDISK]);
    const mine = fs.filter((f) => f.segment === 2 && f.state === 'error');
    expect(mine.some((f) => f.op === 'read' && f.lba === lba && f.blocks === 8 && f.agent === 'a'), JSON.stringify(mine)).to.equal(true);
    expect(mine.some((f) => f.op === 'write' && f.lba === lba && f.blocks === 8), JSON.stringify(mine)).to.equal(true);
    const text = await c.cliOk(['fault', 'ls', '--vdisk', VDISK]);
    expect(text.split('\n')[0]).to.match(/SEG\s+OP\s+LBA\s+BLOCKS\s+STATE/);
    expect(text).to.match(new RegExp(`\\s2\\s+read\\s+${lba}\\s+8\\s+error\\s`));
    expect(text).to.match(new RegExp(`\\s2\\s+write\\s+${lba}\\s+8\\s+error\\s`));

    // Repaired: the data written before is there, the failed write did not land.
    await c.cliOk(['segment', 'set-state', VDISK, '2', '--state', 'normal']);
    const back = await s.read(lba, 8);
    expect(describeIo(back)).to.equal('GOOD');
    expect(back.data.equals(Buffer.alloc(8 * 512, 0x55))).to.equal(true);
  });

  it('invalid: I/O is held until the state is set back, then completes', async function () {
    const c = cluster();
    await c.cliOk(['segment', 'set-state', VDISK, '3', '--state', 'invalid']);
    const lba = 3 * BLOCKS_PER_SEG + 64;
    const results: Array<IoResult | Error | undefined> = [undefined, undefined];
    const rd = s.read(lba, 8, 90_000);
    const wr = s.write(lba + 8, pattern(0x33, lba + 8, 8), 90_000);
    rd.then((r) => (results[0] = r), (e: Error) => (results[0] = e));
    wr.then((r) => (results[1] = r), (e: Error) => (results[1] = e));

    // Other segments are served meanwhile.
    const r0 = await s.read(0, 8);
    expect(r0.data.equals(Buffer.alloc(8 * 512, 0x55))).to.equal(true);
    await sleep(1000);
    expect(results, 'I/O to an invalid segment was held').to.deep.equal([undefined, undefined]);

    await c.cliOk(['segment', 'set-state', VDISK, '3', '--state', 'normal']);
    const [r, w] = await Promise.all([rd, wr]);
    expect(describeIo(r)).to.equal('GOOD');
    expect(describeIo(w)).to.equal('GOOD');
    // The read was held before the write; whichever ran first, the read's blocks do not overlap the write's.
    expect(r.data.equals(Buffer.alloc(8 * 512, 0x55))).to.equal(true);
    const after = await s.read(lba + 8, 8);
    expect(after.data.equals(pattern(0x33, lba + 8, 8))).to.equal(true);
    expect(await s.read(lba + 16, 8).then((x) => x.data.equals(Buffer.alloc(8 * 512, 0x55)))).to.equal(true);

    const fs = await faults(c, VDISK);
    const mine = fs.filter((f) => f.segment === 3 && f.state === 'invalid');
    expect(mine.some((f) => f.op === 'read' && f.lba === lba && f.blocks === 8), JSON.stringify(mine)).to.equal(true);
    expect(mine.some((f) => f.op === 'write' && f.lba === lba + 8 && f.blocks === 8), JSON.stringify(mine)).to.equal(true);
  });

  it('tabula check passes', async function () {
    const r = await check(cluster());
    expect(r.ok, r.text).to.equal(true);

  });
});
