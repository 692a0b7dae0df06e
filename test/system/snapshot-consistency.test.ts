// A snapshot taken while writers keep writing through two agents is one
// point in time. Four write chains run through raw iSCSI sessions on agents
// a and b; each chain writes sequence-numbered blocks one after the other,
// alternating agents, each block at its own LBA spread over every segment
// (allocated ones, which the snapshot turns copy-on-write, and zero ones,
// which allocate). Then, reading the snapshot:
// - every chain's blocks present are a prefix of its sequence (no holes);
// - every write acknowledged before the snapshot command started is in it,
//   none issued after the command returned is;
// - across chains: no write is in it while another acknowledged before that
//   write was issued is missing.
import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { requireTools } from '../support/tools.js';
import { iqnOf, useCluster } from './cluster.js';
import { sleep } from '../support/process.js';
import { writeP } from './clients.js';
import { GOOD, LunSession, describeIo, pattern } from './scsi-client.js';
import { check } from './table.js';

const MiB = 1 << 20;
const VDISK = 'seq';
const SNAP = 'seq-snap';
const SIZE = 32 * MiB;
const BLOCKS = SIZE / 512;
const CHAINS = 4;
/** Odd, so k -> k * STRIDE mod BLOCKS is a bijection on the block numbers. */
const STRIDE = 2053;

const lbaOf = (chain: number, n: number): number => ((n * CHAINS + chain) * STRIDE) % BLOCKS;
const tagOf = (chain: number, n: number): number => ((chain + 1) << 24) | n;

interface Write {
  issued: number;
  acked: number;
}

describe('system: a snapshot under concurrent writers through two agents is one point in time', function () {
  this.timeout(150_000);
  const cluster = useCluster('snapshot-consistency', async (c) => {
    requireTools(['timeout', 'qemu-io']);
    await c.serveVdisk({ vdisk: VDISK, size: '32MiB', containerSize: '160MiB', agents: { a: {}, b: {} } });
    // Half the segments hold data before the writers start (zeros written are data too).
    await writeP(c.url('a', VDISK), 0, 0, 16 * MiB);
  });

  it('holds a prefix of every chain and nothing after the snapshot command returned', async function () {
    const c = cluster();
    const sessions = await Promise.all([LunSession.open(c.agent('a').portal, iqnOf(VDISK)), LunSession.open(c.agent('b').portal, iqnOf(VDISK))]);
    const log: Write[][] = Array.from({ length: CHAINS }, () => []);
    let stop = false;
    const chain = async (j: number): Promise<void> => {
      for (let n = 0; !stop && n * CHAINS < BLOCKS; n++) {
        const lba = lbaOf(j, n);
        const issued = performance.now();
        const r = await sessions[(n + j) % 2]!.write(lba, pattern(tagOf(j, n), lba, 1), 30_000);
        if (r.status !== GOOD) throw new Error(`chain ${j} write ${n} at LBA ${lba}: ${describeIo(r)}`);
        log[j]!.push({ issued, acked: performance.now() });
      }
    };
    let t0 = 0;
    let t1 = 0;
    try {
      const running = Array.from({ length: CHAINS }, (_, j) => chain(j));
      const failed = Promise.race(running).then(() => undefined);
      // Enough writes on either side of the snapshot, however loaded the machine is.
      const until = async (cond: () => boolean): Promise<void> => {
        const deadline = Date.now() + 20_000;
        while (!cond() && Date.now() < deadline) await Promise.race([sleep(50), failed]);
      };
      const acked = (): number => log.reduce((n, l) => n + l.length, 0);
      await until(() => acked() >= 200);
      t0 = performance.now();
      await c.cliOk(['vdisk', 'snapshot', VDISK, SNAP]);
      t1 = performance.now();
      const atT1 = acked();
      await until(() => acked() >= atT1 + 200);
      stop = true;
      await Promise.all(running);
    } finally {
      stop = true;
      for (const s of sessions) s.close();
    }
    const total = log.reduce((n, l) => n + l.length, 0);
    const before = log.flat().filter((w) => w.acked < t0).length;
    const after = log.flat().filter((w) => w.issued > t1).length;
    const counts = `${total} writes: ${before} acknowledged before the snapshot started, ${after} issued after it returned (snapshot took ${Math.round(t1 - t0)} ms)`;
    expect(before, counts).to.be.greaterThan(20);
    expect(after, counts).to.be.greaterThan(20);

    // Read the snapshot (read-only export on agent b) and the vdisk, whole.
    await c.cliOk(['export', 'add', SNAP, '--agent', 'b']);
    await c.waitServed(SNAP, ['b']);
    const readAll = async (vdisk: string, agent: string): Promise<Buffer> => {
      const s = await LunSession.open(c.agent(agent).portal, iqnOf(vdisk));
      try {
        const parts: Buffer[] = [];
        for (let lba = 0; lba < BLOCKS; lba += 2048) {
          const r = await s.read(lba, 2048);
          if (r.status !== GOOD) throw new Error(`${vdisk} READ lba=${lba}: ${describeIo(r)}`);
          parts.push(r.data);
        }
        return Buffer.concat(parts);
      } finally {
        s.close();
      }
    };
    const [snap, live] = await Promise.all([readAll(SNAP, 'b'), readAll(VDISK, 'a')]);

    const zero = Buffer.alloc(512);
    /** Whether chain j's write n is in `img`; anything but it or zeros at its LBA is an error. */
    const present = (img: Buffer, j: number, n: number): boolean => {
      const lba = lbaOf(j, n);
      const blk = img.subarray(lba * 512, lba * 512 + 512);
      if (blk.equals(zero)) return false;
      if (blk.equals(pattern(tagOf(j, n), lba, 1))) return true;
      throw new Error(`LBA ${lba} (chain ${j} write ${n}) holds neither zeros nor its block: ${blk.subarray(0, 16).toString('hex')}`);
    };

    let inSnap = 0;
    let minAckMissing = Infinity;
    let maxIssueIn = -Infinity;
    for (let j = 0; j < CHAINS; j++) {
      const l = log[j]!;
      // Every acknowledged write is in the vdisk.
      for (let n = 0; n < l.length; n++) expect(present(live, j, n), `vdisk: chain ${j} write ${n}`).to.equal(true);
      let prefix = 0;
      while (prefix < l.length && present(snap, j, prefix)) prefix++;
      for (let n = prefix; n < l.length; n++) expect(present(snap, j, n), `snapshot: chain ${j} write ${n} after a hole at ${prefix}`).to.equal(false);
      inSnap += prefix;
      for (let n = 0; n < l.length; n++) {
        const w = l[n]!;
        if (n < prefix) {
          expect(w.issued, `chain ${j} write ${n} is in the snapshot but was issued after it returned`).to.be.at.most(t1);
          maxIssueIn = Math.max(maxIssueIn, w.issued);
        } else {
          expect(w.acked, `chain ${j} write ${n} was acknowledged before the snapshot started but is missing`).to.be.at.least(t0);
          minAckMissing = Math.min(minAckMissing, w.acked);
        }
      }
    }
    expect(minAckMissing, 'a write missing from the snapshot was acknowledged before one in it was issued').to.be.at.least(maxIssueIn);
    expect(inSnap).to.be.within(before, total - after);
    const r = await check(c);
    expect(r.ok, r.text).to.equal(true);
  });
});
