// The iSCSI container driver against the real SCSI target stack, in process.
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { ContainerIoError } from '../../../src/container/driver.js';
import { ContainerInitError, initLun } from '../../../src/container/init.js';
import { IscsiContainerDriver } from '../../../src/container/iscsi-driver.js';
import { IscsiLun } from '../../../src/container/iscsi-lun.js';
import type { IscsiLocator } from '../../../src/container/iscsi-locator.js';
import { LabelError } from '../../../src/container/label.js';
import { TransportError } from '../../../src/iscsi/initiator/transport.js';
import { RIG_TARGET, checkCondition, rig, type Rig, type RigLun } from './iscsi-rig.js';

const MiB = 1 << 20;
const loc = (lun = 0): IscsiLocator => ({ host: '127.0.0.1', port: 3260, target: RIG_TARGET, lun, chap: { user: 'u', secret: 'topsecret' } });

async function labelled(spec: RigLun = {}, opts: { holdMs?: number; maxTransferBytes?: number; segmentSize?: number } = {}): Promise<{ r: Rig; d: IscsiContainerDriver }> {
  const r = rig([spec]);
  const lun = await IscsiLun.probe(r.transport, spec.lun ?? 0, 'iscsi://test', {});
  await initLun(lun, { segmentSize: opts.segmentSize ?? MiB });
  const d = await IscsiContainerDriver.open(r.transport, loc(spec.lun ?? 0), { holdMs: opts.holdMs ?? 2000, maxTransferBytes: opts.maxTransferBytes });
  return { r, d };
}

async function rejects(p: Promise<unknown>): Promise<ContainerIoError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ContainerIoError) return e;
    throw e;
  }
  expect.fail('expected a ContainerIoError');
}

describe('IscsiContainerDriver', () => {
  describe('open', () => {
    it('probes the LUN and reads the label at LBA 0', async () => {
      const { r, d } = await labelled({ blocks: 16384 });
      expect(d.kind).to.equal('iscsi');
      expect(d.path).to.equal(`iscsi://u@127.0.0.1:3260/${RIG_TARGET}/0`);
      expect(d.path).to.not.include('topsecret');
      expect(d.label.size).to.equal(16384 * 512);
      expect(d.dataSize).to.equal(16384 * 512 - MiB);
      expect(d.geometry).to.include({ blockSize: 512, blocks: 16384 });
      expect(d.geometry.provisioning).to.deep.equal({ unmap: true, writeSameUnmap: true, readsZeroWhenUnmapped: true });
      expect(d.geometry.limits?.maxTransferBlocks).to.equal(65536);
      const again = await IscsiContainerDriver.open(r.transport, loc(), { ownsTransport: false });
      expect(again.id).to.equal(d.id);
    });

    it('refuses an unlabelled LUN (LabelError) and closes the transport it owns', async () => {
      const r = rig([{}]);
      try {
        await IscsiContainerDriver.open(r.transport, loc());
        expect.fail('opened');
      } catch (e) {
        expect(e).to.be.instanceOf(LabelError);
        expect((e as LabelError).kind).to.equal('unlabelled');
      }
      expect(r.transport.closed).to.equal(1);
    });

    it('refuses a label larger than the LUN (truncated)', async () => {
      const { r } = await labelled({ blocks: 8192 });
      r.devs.get(0)!.resize(4096);
      try {
        await IscsiContainerDriver.open(r.transport, loc());
        expect.fail('opened');
      } catch (e) {
        expect((e as LabelError).kind).to.equal('truncated');
      }
    });

    it('refuses a LUN that is not there', async () => {
      const r = rig([{}]);
      const e = await rejects(IscsiContainerDriver.open(r.transport, loc(5)));
      expect(e.op).to.equal('open');
      expect(e.code).to.equal('ENXIO');
    });
  });

  describe('I/O over 512-byte blocks', () => {
    it('writes and reads back at any offset, in pieces split by the transfer limit, many at once', async () => {
      const { r, d } = await labelled({ blocks: 16384 }, { maxTransferBytes: 64 * 1024 });
      const data = randomBytes(300 * 1024);
      await d.write(4096, data);
      expect(Buffer.compare(await d.read(4096, data.length), data)).to.equal(0);
      // Straight from the medium: the data area starts 1 MiB in.
      const raw = await r.devs.get(0)!.read((MiB + 4096) / 512, data.length / 512);
      expect(Buffer.compare(raw, data)).to.equal(0);
      expect(r.transport.maxInFlight).to.be.greaterThan(1);
      const target = Buffer.alloc(10000, 0xee);
      await d.readInto(4096 + 512, target, 100, 1024);
      expect(Buffer.compare(target.subarray(100, 1124), data.subarray(512, 1536))).to.equal(0);
      expect(target[99]).to.equal(0xee);
      expect(target[1124]).to.equal(0xee);
    });

    it('reads and writes bytes that are not block aligned', async () => {
      const { d } = await labelled();
      const data = randomBytes(1000);
      await d.write(700, data);
      expect(Buffer.compare(await d.read(700, 1000), data)).to.equal(0);
      expect((await d.read(0, 700)).equals(Buffer.alloc(700))).to.equal(true);
    });

    it('sends FUA writes as WRITE(16) with FUA, and flush as SYNCHRONIZE CACHE(16)', async () => {
      const { r, d } = await labelled();
      const dev = r.devs.get(0)!;
      const fua0 = dev.stats.fuaWrites;
      await d.write(0, Buffer.alloc(4096, 1), { fua: true });
      expect(dev.stats.fuaWrites).to.equal(fua0 + 1);
      await d.write(4096, Buffer.alloc(4096, 1));
      expect(dev.stats.fuaWrites).to.equal(fua0 + 1);
      const f0 = dev.stats.flushes;
      await d.flush();
      expect(dev.stats.flushes).to.equal(f0 + 1);
      expect(r.transport.count('91')).to.be.greaterThan(0);
    });

    it('discards by WRITE SAME(16) with UNMAP on a thin LUN: zeros read back, blocks deallocated', async () => {
      const { r, d } = await labelled({ blocks: 16384 });
      const dev = r.devs.get(0)!;
      await d.write(0, randomBytes(2 * MiB));
      const mapped = dev.mappedBlocks();
      const ws = r.transport.count('93');
      await d.discard(MiB, MiB);
      expect(r.transport.count('93')).to.be.greaterThan(ws);
      expect(dev.mappedBlocks()).to.equal(mapped - MiB / 512);
      expect((await d.read(MiB, MiB)).equals(Buffer.alloc(MiB))).to.equal(true);
      // A ragged range: the partial blocks are zeroed by read-modify-write.
      await d.discard(100, 1000);
      const head = await d.read(0, 1200);
      expect(head.subarray(100, 1100).equals(Buffer.alloc(1000))).to.equal(true);
      expect(head.subarray(0, 100).equals(Buffer.alloc(100))).to.equal(false);
    });

    it('zeroes by WRITE SAME(16) on a thick LUN, and falls back to writing zeros when refused', async () => {
      const { r, d } = await labelled({ thin: false });
      expect(d.geometry.provisioning.writeSameUnmap).to.equal(false);
      await d.write(0, randomBytes(64 * 1024));
      const ws = r.transport.count('93');
      await d.writeZeroes(0, 32 * 1024);
      expect(r.transport.count('93')).to.equal(ws + 1);
      expect((await d.read(0, 32 * 1024)).equals(Buffer.alloc(32 * 1024))).to.equal(true);
      // Discard on a LUN that cannot deallocate: zeros all the same.
      await d.discard(32 * 1024, 16 * 1024);
      expect((await d.read(32 * 1024, 16 * 1024)).equals(Buffer.alloc(16 * 1024))).to.equal(true);

      r.transport.intercept = (req) => (req.cdb[0] === 0x93 ? checkCondition(0x05, 0x20, 0x00) : undefined);
      await d.write(0, randomBytes(64 * 1024));
      const writes = r.transport.count('8a');
      await d.writeZeroes(0, 64 * 1024);
      expect(r.transport.count('8a')).to.be.greaterThan(writes);
      expect((await d.read(0, 64 * 1024)).equals(Buffer.alloc(64 * 1024))).to.equal(true);
      // Refused once, never tried again.
      const ws2 = r.transport.count('93');
      await d.writeZeroes(0, 4096);
      expect(r.transport.count('93')).to.equal(ws2);
    });

    it('checks ranges and refuses I/O once closed', async () => {
      const { r, d } = await labelled();
      expect((await rejects(d.read(d.dataSize - 512, 1024))).code).to.equal('ERANGE');
      expect((await rejects(d.write(-512, Buffer.alloc(512)))).code).to.equal('ERANGE');
      await d.close();
      expect(r.transport.closed).to.equal(1);
      expect((await rejects(d.read(0, 512))).code).to.equal('EBADF');
    });
  });

  describe('I/O over 4096-byte blocks', () => {
    it('reads and writes 512-byte pieces by read-modify-write', async () => {
      const { r, d } = await labelled({ blockSize: 4096, blocks: 2048 });
      expect(d.geometry.blockSize).to.equal(4096);
      const data = randomBytes(512 * 3);
      await d.write(512, data);
      expect(Buffer.compare(await d.read(512, data.length), data)).to.equal(0);
      const raw = await r.devs.get(0)!.read(MiB / 4096, 1);
      expect(Buffer.compare(raw.subarray(512, 2048), data)).to.equal(0);
    });

    it('keeps every one of many concurrent 512-byte writes into the same blocks', async () => {
      const { d } = await labelled({ blockSize: 4096, blocks: 2048 });
      const pieces = Array.from({ length: 32 }, () => randomBytes(512));
      // Pieces 0..31 cover 4 blocks; whole-block writes of the next block run alongside.
      const whole = randomBytes(4096);
      await Promise.all([...pieces.map((p, i) => d.write(i * 512, p)), d.write(16384, whole)]);
      const back = await d.read(0, 16384 + 4096);
      pieces.forEach((p, i) => expect(Buffer.compare(back.subarray(i * 512, (i + 1) * 512), p), `piece ${i}`).to.equal(0));
      expect(Buffer.compare(back.subarray(16384), whole)).to.equal(0);
    });

    it('does not undo a whole-block write that overlaps a read-modify-write in flight', async () => {
      const { d } = await labelled({ blockSize: 4096, blocks: 2048 });
      const whole = randomBytes(8192);
      const piece = randomBytes(512);
      await Promise.all([d.write(512, piece), d.write(0, whole)]);
      const back = await d.read(0, 8192);
      // Whichever came last owns bytes 512..1023; the rest is the whole-block write's.
      expect(Buffer.compare(back.subarray(1024), whole.subarray(1024))).to.equal(0);
      expect(Buffer.compare(back.subarray(0, 512), whole.subarray(0, 512))).to.equal(0);
    });

    it('zeroes and discards ragged ranges', async () => {
      const { d } = await labelled({ blockSize: 4096, blocks: 2048 });
      await d.write(0, randomBytes(64 * 1024));
      await d.discard(512, 20 * 1024);
      await d.writeZeroes(30 * 1024 + 512, 1024);
      const back = await d.read(0, 64 * 1024);
      expect(back.subarray(512, 512 + 20 * 1024).equals(Buffer.alloc(20 * 1024))).to.equal(true);
      expect(back.subarray(30 * 1024 + 512, 31 * 1024 + 512).equals(Buffer.alloc(1024))).to.equal(true);
      expect(back.subarray(0, 512).equals(Buffer.alloc(512))).to.equal(false);
    });
  });

  describe('error mapping', () => {
    it('MEDIUM ERROR on read and write is EIO, at the failing data-area offset', async () => {
      const { r, d } = await labelled();
      const dev = r.devs.get(0)!;
      dev.injectFault('read', 'read-error', MiB / 512 + 8);
      const e = await rejects(d.read(0, 8192));
      expect(e.code).to.equal('EIO');
      expect(e.op).to.equal('read');
      expect(e.offset).to.equal(4096);
      expect(e.message).to.match(/MEDIUM ERROR 03\/11\/00/);
      dev.clearFault('read');
      dev.injectFault('write', 'write-error');
      expect((await rejects(d.write(0, Buffer.alloc(512)))).code).to.equal('EIO');
    });

    it('HARDWARE ERROR is EIO, DATA PROTECT is EROFS, ILLEGAL REQUEST is EINVAL, RESERVATION CONFLICT is EACCES', async () => {
      const { r, d } = await labelled();
      const answer = (res: ReturnType<typeof checkCondition>) => (r.transport.intercept = (req) => (req.cdb[0] === 0x8a ? res : undefined));
      answer(checkCondition(0x04, 0x44, 0x00));
      expect((await rejects(d.write(0, Buffer.alloc(512)))).code).to.equal('EIO');
      answer(checkCondition(0x05, 0x21, 0x00));
      expect((await rejects(d.write(0, Buffer.alloc(512)))).code).to.equal('EINVAL');
      answer({ status: 0x18 });
      expect((await rejects(d.write(0, Buffer.alloc(512)))).code).to.equal('EACCES');
      r.transport.intercept = undefined;
      expect((await d.read(0, 512)).length).to.equal(512);
    });

    it('a read-only LUN answers DATA PROTECT: EROFS', async () => {
      const { r } = await labelled();
      const ro = rig([{ readOnly: true }]);
      // The same medium behind a read-only LUN.
      ro.target.removeLun(0);
      ro.target.addLun(0, r.devs.get(0)!, { readOnly: true, lunId: 'ro' });
      const d = await IscsiContainerDriver.open(ro.transport, loc());
      const e = await rejects(d.write(0, Buffer.alloc(512)));
      expect(e.code).to.equal('EROFS');
      expect(e.message).to.match(/DATA PROTECT 07\/27\/00/);
    });

    it('retries UNIT ATTENTION, NOT READY, BUSY, TASK SET FULL and a timed-out command inside the hold', async () => {
      const { r, d } = await labelled();
      const answers = [
        checkCondition(0x06, 0x29, 0x00),
        checkCondition(0x02, 0x04, 0x0a),
        { status: 0x08 },
        { status: 0x28 },
        checkCondition(0x0b, 0x08, 0x00),
      ];
      let left = answers.length;
      let timedOut = false;
      r.transport.intercept = (req) => {
        if (req.cdb[0] !== 0x8a) return undefined;
        if (!timedOut) {
          timedOut = true;
          throw new TransportError('timeout', 'no answer in 5000 ms (aborted)');
        }
        return left > 0 ? answers[answers.length - left--] : undefined;
      };
      const data = randomBytes(4096);
      await d.write(0, data);
      expect(left).to.equal(0);
      expect(Buffer.compare(await d.read(0, 4096), data)).to.equal(0);
    });

    it('past the hold deadline a condition that persists is EUNREACHABLE, never EIO', async () => {
      const { r, d } = await labelled({}, { holdMs: 150 });
      r.transport.intercept = (req) => (req.cdb[0] === 0x88 ? { status: 0x08 } : undefined);
      const e = await rejects(d.read(0, 512));
      expect(e.code).to.equal('EUNREACHABLE');
      expect(e.message).to.match(/BUSY/);
      r.transport.intercept = (req) => (req.cdb[0] === 0x88 ? checkCondition(0x02, 0x04, 0x0a) : undefined);
      expect((await rejects(d.read(0, 512))).code).to.equal('EUNREACHABLE');
    });

    it('gives every command, and each of its retries, the hold counted from its first try as the deadline', async () => {
      const { r, d } = await labelled({}, { holdMs: 4000 });
      const seen: { op: string; deadline: number | undefined }[] = [];
      let busy = 2;
      r.transport.intercept = (req) => {
        seen.push({ op: req.cdb[0]!.toString(16), deadline: req.deadline });
        return req.cdb[0] === 0x8a && busy-- > 0 ? { status: 0x08 } : undefined;
      };
      const before = Date.now();
      await d.write(0, randomBytes(4096));
      await d.read(0, 4096);
      await d.flush();
      const after = Date.now();
      expect(seen.map((x) => x.op)).to.deep.equal(['8a', '8a', '8a', '88', '91']);
      for (const x of seen) expect(x.deadline, `deadline of ${x.op}`).to.be.within(before + 4000, after + 4000);
      // The retries after BUSY keep the first try's deadline: the hold is not started again.
      expect(new Set(seen.slice(0, 3).map((x) => x.deadline)).size).to.equal(1);
    });

    it('a target that keeps reporting UNIT ATTENTION is paced, then EUNREACHABLE', async () => {
      const { r, d } = await labelled({}, { holdMs: 300 });
      let n = 0;
      r.transport.intercept = (req) => (req.cdb[0] === 0x88 ? (n++, checkCondition(0x06, 0x29, 0x00)) : undefined);
      expect((await rejects(d.read(0, 512))).code).to.equal('EUNREACHABLE');
      // Unpaced, a loop over an in-process target would send thousands in that time.
      expect(n).to.be.within(5, 100);
    });

    it('a transport that lost the target is EUNREACHABLE at once; a closed one is EBADF', async () => {
      const { r, d } = await labelled();
      let calls = 0;
      r.transport.intercept = (req) => {
        if (req.cdb[0] !== 0x88) return undefined;
        calls++;
        throw new TransportError('unreachable', 'no connection to 127.0.0.1:3260 for 10000 ms');
      };
      const e = await rejects(d.read(0, 512));
      expect(e.code).to.equal('EUNREACHABLE');
      expect(calls).to.equal(1);
      r.transport.intercept = () => {
        throw new TransportError('closed', 'session closed');
      };
      expect((await rejects(d.read(0, 512))).code).to.equal('EBADF');
    });
  });

  describe('initLun', () => {
    it('labels a LUN at its capacity, or a given size, and refuses a labelled one without force', async () => {
      const r = rig([{ blocks: 8192 }]);
      const lun = await IscsiLun.probe(r.transport, 0, 'iscsi://t', {});
      const a = await initLun(lun, { size: 3 * MiB });
      expect(a.label.size).to.equal(3 * MiB);
      try {
        await initLun(lun, {});
        expect.fail('relabelled');
      } catch (e) {
        expect(e).to.be.instanceOf(ContainerInitError);
        expect((e as ContainerInitError).kind).to.equal('labelled');
        expect((e as ContainerInitError).existingId).to.equal(a.label.id);
      }
      const b = await initLun(lun, { force: true });
      expect(b.replaced).to.equal(a.label.id);
      expect(b.label.size).to.equal(8192 * 512);
      try {
        await initLun(lun, { force: true, size: 8193 * 512 });
        expect.fail('oversized');
      } catch (e) {
        expect((e as ContainerInitError).kind).to.equal('size');
      }
    });

    it('zeroes the data area of a LUN that held data', async () => {
      const r = rig([{ blocks: 8192, thin: false }]);
      const dev = r.devs.get(0)!;
      await dev.write(MiB / 512, randomBytes(512 * 64));
      const lun = await IscsiLun.probe(r.transport, 0, 'iscsi://t', {});
      await initLun(lun, {});
      const d = await IscsiContainerDriver.open(r.transport, loc());
      expect((await d.read(0, 512 * 64)).equals(Buffer.alloc(512 * 64))).to.equal(true);
    });
  });
});
