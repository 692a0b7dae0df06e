import { expect } from 'chai';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JsonFileReservationStore, MemoryReservationStore } from '../../../src/scsi/reservation-store.js';
import {
  Reservations,
  persistentReserveIn,
  persistentReserveOut,
  release6,
  release10,
  reserve6,
  reserve10,
} from '../../../src/scsi/reservations.js';
import { FakeLu, FakeTarget, INQUIRY, MODE_SENSE, READ, WRITE, exec, nexus, spec } from './fake-lu.js';
import type { Result } from './fake-lu.js';

const PRIN = spec('PERSISTENT RESERVE IN', persistentReserveIn);
const PROUT = spec('PERSISTENT RESERVE OUT', persistentReserveOut, 'allowed', true);
const RESERVE6 = spec('RESERVE(6)', reserve6);
const RELEASE6 = spec('RELEASE(6)', release6);
const RESERVE10 = spec('RESERVE(10)', reserve10);
const RELEASE10 = spec('RELEASE(10)', release10);

const i1 = nexus('iqn.2007-10.test:one', 0x23d000000001);
const i2 = nexus('iqn.2007-10.test:two', 0x23d000000002);
const i3 = nexus('iqn.2007-10.test:three', 0x23d000000003);

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function prinCdb(sa: number, alloc = 8192): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x5e;
  c[1] = sa;
  c[7] = alloc >> 8;
  c[8] = alloc & 0xff;
  return c;
}

function proutCdb(sa: number, type = 0, len = 24, scope = 0): Buffer {
  const c = Buffer.alloc(10);
  c[0] = 0x5f;
  c[1] = sa;
  c[2] = (scope << 4) | type;
  c[5] = (len >>> 24) & 0xff;
  c[6] = (len >>> 16) & 0xff;
  c[7] = (len >>> 8) & 0xff;
  c[8] = len & 0xff;
  return c;
}

function params(key: bigint, sark: bigint, flags = 0): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64BE(key, 0);
  b.writeBigUInt64BE(sark, 8);
  b[20] = flags;
  return b;
}

const EA = 3;
const WE = 1;
const WERO = 5;
const EARO = 6;
const WEAR = 7;
const EAAR = 8;

describe('persistent reservations', () => {
  let target: FakeTarget;
  let lu: FakeLu;
  beforeEach(() => {
    target = new FakeTarget();
    lu = new FakeLu(target, 0);
  });

  const register = (n = i1, key = 0xabcn, flags = 0): Promise<Result> => exec(lu, n, proutCdb(6), PROUT, params(0n, key, flags));
  const reserve = (n: typeof i1, key: bigint, type: number): Promise<Result> => exec(lu, n, proutCdb(1, type), PROUT, params(key, 0n));
  const release = (n: typeof i1, key: bigint, type: number): Promise<Result> => exec(lu, n, proutCdb(2, type), PROUT, params(key, 0n));
  const prin = async (n: typeof i1, sa: number, alloc = 8192): Promise<Buffer> => {
    const r = await exec(lu, n, prinCdb(sa, alloc), PRIN);
    expect(r.status).to.equal(0);
    return r.data!;
  };

  it('READ KEYS reports generation and keys, and truncates to the allocation length', async () => {
    expect(await prin(i1, 0)).to.deep.equal(hex('00000000 00000000'));
    expect((await register(i1, 0x0102030405060708n)).status).to.equal(0);
    expect((await register(i2, 0x1111n)).status).to.equal(0);
    expect(await prin(i1, 0)).to.deep.equal(hex('00000002 00000010 0102030405060708 0000000000001111'));
    // ADDITIONAL LENGTH is not reduced by the allocation length.
    expect(await prin(i1, 0, 8)).to.deep.equal(hex('00000002 00000010'));
  });

  it('REGISTER needs the current key; re-registering with key 0 conflicts; SARK 0 unregisters', async () => {
    expect((await register(i1, 0x10n)).status).to.equal(0);
    // libiscsi prout_reregister_key_fails: REGISTER with RK=0 and a new SARK from a registered nexus
    expect((await exec(lu, i1, proutCdb(0), PROUT, params(0n, 0x11n))).status).to.equal(0x18);
    expect((await exec(lu, i1, proutCdb(0), PROUT, params(0x10n, 0x12n))).status).to.equal(0);
    expect(await prin(i1, 0)).to.deep.equal(hex('00000002 00000008 0000000000000012'));
    expect((await exec(lu, i1, proutCdb(0), PROUT, params(0x12n, 0n))).status).to.equal(0);
    expect(await prin(i1, 0)).to.deep.equal(hex('00000003 00000000'));
    // Unregistered nexus: REGISTER with a non-zero RK conflicts; SARK 0 is a no-op.
    expect((await exec(lu, i2, proutCdb(0), PROUT, params(5n, 6n))).status).to.equal(0x18);
    expect((await exec(lu, i2, proutCdb(0), PROUT, params(0n, 0n))).status).to.equal(0);
    expect(await prin(i1, 0)).to.deep.equal(hex('00000003 00000000'));
  });

  it('REPORT CAPABILITIES advertises the six types, CRH, ATP_C, PTPL_C and PTPL_A', async () => {
    expect(await prin(i1, 2)).to.deep.equal(hex('0008 15 80 ea01 0000'));
    await register(i1, 1n, 0x01);
    expect(await prin(i1, 2)).to.deep.equal(hex('0008 15 81 ea01 0000'));
  });

  it('PERSISTENT RESERVE IN rejects service actions beyond READ FULL STATUS', async () => {
    for (let sa = 4; sa < 0x20; sa++) {
      const r = await exec(lu, i1, prinCdb(sa), PRIN);
      expect(r.sense, `sa ${sa}`).to.deep.equal({ key: 5, asc: 0x24, ascq: 0, descriptor: false });
    }
  });

  it('READ RESERVATION reports the holder key, scope and type', async () => {
    await register(i1, 0x1122334455667788n);
    expect(await prin(i1, 1)).to.deep.equal(hex('00000001 00000000'));
    expect((await reserve(i1, 0x1122334455667788n, EA)).status).to.equal(0);
    expect(await prin(i2, 1)).to.deep.equal(hex('00000001 00000010 1122334455667788 00000000 00 03 0000'));
  });

  // Access by an I_T nexus that does not hold the reservation (SPC-4 table 5.13.1), written out by hand:
  // [type, registered can read, registered can write, unregistered can read, unregistered can write]
  const access: [string, number, boolean, boolean, boolean, boolean][] = [
    ['WE', WE, true, false, true, false],
    ['EA', EA, false, false, false, false],
    ['WE-RO', WERO, true, true, true, false],
    ['EA-RO', EARO, true, true, false, false],
    ['WE-AR', WEAR, true, true, true, false],
    ['EA-AR', EAAR, true, true, false, false],
  ];
  for (const [name, type, regRead, regWrite, unregRead, unregWrite] of access) {
    it(`${name}: holder has full access; registrants and others as SPC-4 table 5.13.1`, async () => {
      await register(i1, 0xa1n);
      await register(i2, 0xa2n);
      expect((await reserve(i1, 0xa1n, type)).status).to.equal(0);
      const expected = [type === WEAR || type === EAAR ? '0000000000000000' : '00000000000000a1'];
      expect((await prin(i1, 1)).subarray(8, 16).toString('hex')).to.equal(expected[0]);
      expect((await exec(lu, i1, [0x28], READ)).status).to.equal(0);
      expect((await exec(lu, i1, [0x2a], WRITE)).status).to.equal(0);
      expect((await exec(lu, i2, [0x28], READ)).status).to.equal(regRead ? 0 : 0x18);
      expect((await exec(lu, i2, [0x2a], WRITE)).status).to.equal(regWrite ? 0 : 0x18);
      expect((await exec(lu, i3, [0x28], READ)).status).to.equal(unregRead ? 0 : 0x18);
      expect((await exec(lu, i3, [0x2a], WRITE)).status).to.equal(unregWrite ? 0 : 0x18);
      expect((await exec(lu, i3, [0x12], INQUIRY)).status).to.equal(0);
      expect((await release(i1, 0xa1n, type)).status).to.equal(0);
      expect((await exec(lu, i3, [0x2a], WRITE)).status).to.equal(0);
    });
  }

  it('RESERVE: only registrants with the right key; a second RESERVE by the holder with the same type is GOOD', async () => {
    expect((await reserve(i1, 0n, EA)).status).to.equal(0x18);
    await register(i1, 7n);
    await register(i2, 8n);
    expect((await reserve(i1, 8n, EA)).status).to.equal(0x18);
    expect((await reserve(i1, 7n, 2)).sense).to.deep.include({ key: 5, asc: 0x24, ascq: 0 });
    expect((await exec(lu, i1, proutCdb(1, EA, 24, 1), PROUT, params(7n, 0n))).sense).to.deep.include({ key: 5, asc: 0x24 });
    expect((await reserve(i1, 7n, EA)).status).to.equal(0);
    expect((await reserve(i1, 7n, EA)).status).to.equal(0);
    expect((await reserve(i1, 7n, WE)).status).to.equal(0x18);
    expect((await reserve(i2, 8n, EA)).status).to.equal(0x18);
    // RESERVE does not change the generation
    expect((await prin(i1, 0)).readUInt32BE(0)).to.equal(2);
  });

  it('RELEASE: type mismatch is INVALID RELEASE; non-holder release is a no-op; RO/AR release notifies the other registrants', async () => {
    await register(i1, 1n);
    await register(i2, 2n);
    await register(i3, 3n);
    await reserve(i1, 1n, WERO);
    expect((await release(i1, 1n, WE)).sense).to.deep.include({ key: 5, asc: 0x26, ascq: 0x04 });
    expect((await release(i2, 2n, WERO)).status).to.equal(0);
    expect((await prin(i1, 1)).readUInt32BE(4)).to.equal(16);
    expect((await release(i1, 1n, WERO)).status).to.equal(0);
    expect((await prin(i1, 1)).readUInt32BE(4)).to.equal(0);
    expect(lu.uasFor(i2).map((c) => c.ascq)).to.deep.equal([0x04]);
    expect(lu.uasFor(i3).map((c) => c.ascq)).to.deep.equal([0x04]);
    expect(lu.uasFor(i1)).to.deep.equal([]);
  });

  it('the holder unregistering ends WE/EA/RO reservations, but not all-registrants ones', async () => {
    for (const [type, survives] of [[EA, false], [WE, false], [EARO, false], [WERO, false], [EAAR, true], [WEAR, true]] as const) {
      lu = new FakeLu(new FakeTarget(), 0);
      await register(i1, 1n);
      await register(i2, 2n);
      await reserve(i1, 1n, type);
      expect((await exec(lu, i1, proutCdb(0), PROUT, params(1n, 0n))).status).to.equal(0);
      const rr = await prin(i2, 1);
      expect(rr.readUInt32BE(4), `type ${type}`).to.equal(survives ? 16 : 0);
      if (survives) {
        expect(rr[21]).to.equal(type);
        expect((await release(i2, 2n, type)).status).to.equal(0);
        expect((await prin(i2, 1)).readUInt32BE(4)).to.equal(0);
      }
      // registrants-only: the other registrants learn that the reservation was released
      expect(lu.uasFor(i2).length, `type ${type}`).to.equal(type === EARO || type === WERO ? 1 : 0);
    }
  });

  it('CLEAR removes everything, bumps the generation once and preempts the others', async () => {
    await register(i1, 1n);
    await register(i2, 2n);
    const gen = (await prin(i1, 0)).readUInt32BE(0);
    await reserve(i1, 1n, EA);
    expect((await exec(lu, i1, proutCdb(3), PROUT, params(1n, 0n))).status).to.equal(0);
    expect(await prin(i1, 0)).to.deep.equal(Buffer.from([0, 0, 0, gen + 1, 0, 0, 0, 0]));
    expect((await prin(i1, 1)).readUInt32BE(4)).to.equal(0);
    expect(lu.uasFor(i2).map((c) => [c.key, c.asc, c.ascq])).to.deep.equal([[6, 0x2a, 0x03]]);
    expect(lu.uasFor(i1)).to.deep.equal([]);
    expect((await exec(lu, i3, proutCdb(3), PROUT, params(0n, 0n))).status).to.equal(0x18);
  });

  it('PREEMPT without a reservation removes the registrations with that key (libiscsi ProutPreempt)', async () => {
    await register(i1, 0x11n);
    await register(i2, 0x22n);
    const gen = (await prin(i1, 0)).readUInt32BE(0);
    expect((await exec(lu, i2, proutCdb(4, EA), PROUT, params(0x22n, 0x11n))).status).to.equal(0);
    expect(await prin(i2, 0)).to.deep.equal(Buffer.concat([Buffer.from([0, 0, 0, gen + 1, 0, 0, 0, 8]), hex('0000000000000022')]));
    expect(lu.uasFor(i1).map((c) => c.ascq)).to.deep.equal([0x05]);
    // no such key → conflict; key 0 → invalid field in parameter list
    expect((await exec(lu, i2, proutCdb(4, EA), PROUT, params(0x22n, 0x99n))).status).to.equal(0x18);
    expect((await exec(lu, i2, proutCdb(4, EA), PROUT, params(0x22n, 0n))).sense).to.deep.include({ key: 5, asc: 0x26 });
  });

  it('PREEMPT of the holder key takes over the reservation; a type change notifies the remaining registrants', async () => {
    await register(i1, 1n);
    await register(i2, 2n);
    await register(i3, 3n);
    await reserve(i1, 1n, WE);
    expect((await exec(lu, i2, proutCdb(5, EA), PROUT, params(2n, 1n))).status).to.equal(0);
    expect(await prin(i3, 1)).to.deep.equal(hex('00000004 00000010 0000000000000002 00000000 00 03 0000'));
    expect(lu.uasFor(i1).map((c) => c.ascq)).to.deep.equal([0x05]);
    expect(lu.uasFor(i3).map((c) => c.ascq)).to.deep.equal([0x04]);
    expect((await exec(lu, i1, [0x28], READ)).status).to.equal(0x18);
  });

  it('PREEMPT with key 0 under an all-registrants reservation removes every other registrant', async () => {
    await register(i1, 1n);
    await register(i2, 2n);
    await register(i3, 3n);
    await reserve(i1, 1n, EAAR);
    expect((await exec(lu, i2, proutCdb(4, EA), PROUT, params(2n, 0n))).status).to.equal(0);
    expect(await prin(i2, 0)).to.deep.equal(hex('00000004 00000008 0000000000000002'));
    expect((await prin(i2, 1)).subarray(8, 22)).to.deep.equal(hex('0000000000000002 00000000 00 03'));
  });

  it('READ FULL STATUS lists each registration with an iSCSI TransportID (format 01b, padded)', async () => {
    await register(i1, 0x5n);
    await register(i2, 0x6n, 0x04); // ALL_TG_PT
    await reserve(i1, 0x5n, WE);
    // "iqn.2007-10.test:one,i,0x23d000000001" is 37 bytes + NUL = 38, padded to 40.
    const tid1 = Buffer.concat([hex('45 00 0028'), Buffer.from('iqn.2007-10.test:one,i,0x23d000000001'), Buffer.alloc(3)]);
    const tid2 = Buffer.concat([hex('45 00 0028'), Buffer.from('iqn.2007-10.test:two,i,0x23d000000002'), Buffer.alloc(3)]);
    const d1 = Buffer.concat([hex('0000000000000005 00000000 01 01 00000000 0001'), hex('0000002c'), tid1]);
    const d2 = Buffer.concat([hex('0000000000000006 00000000 02 00 00000000 0000'), hex('0000002c'), tid2]);
    const expected = Buffer.concat([hex('00000002'), Buffer.from([0, 0, 0, d1.length + d2.length]), d1, d2]);
    expect(await prin(i1, 3)).to.deep.equal(expected);
    // ALL_TG_PT covers the same initiator port on another target port
    const i2other = nexus('iqn.2007-10.test:two', 0x23d000000002, 2);
    expect(lu.reservations.conflicts({ ...reqOf(i2other) }, READ)).to.equal(false);
    expect(lu.reservations.conflicts({ ...reqOf(i2other) }, WRITE)).to.equal(true);
  });

  it('REGISTER AND MOVE hands the reservation to the I_T nexus named by the TransportID', async () => {
    await register(i1, 1n);
    await reserve(i1, 1n, EA);
    const tid = Buffer.concat([hex('45 00 0028'), Buffer.from('iqn.2007-10.test:two,i,0x23d000000002'), Buffer.alloc(3)]);
    const p = Buffer.alloc(24 + tid.length);
    p.writeBigUInt64BE(1n, 0);
    p.writeBigUInt64BE(0x77n, 8);
    p[17] = 0x02; // UNREG
    p.writeUInt16BE(i1.relativeTargetPortId, 18);
    p.writeUInt32BE(tid.length, 20);
    tid.copy(p, 24);
    expect((await exec(lu, i1, proutCdb(7, 0, p.length), PROUT, p)).status).to.equal(0);
    expect(await prin(i2, 1)).to.deep.equal(hex('00000002 00000010 0000000000000077 00000000 00 03 0000'));
    expect(await prin(i2, 0)).to.deep.equal(hex('00000002 00000008 0000000000000077'));
    expect((await exec(lu, i2, [0x2a], WRITE)).status).to.equal(0);
    expect((await exec(lu, i1, [0x28], READ)).status).to.equal(0x18);
    // from a non-holder: conflict
    expect((await exec(lu, i1, proutCdb(7, 0, p.length), PROUT, p)).status).to.equal(0x18);
  });

  it('refuses SPEC_I_PT and wrong parameter list lengths', async () => {
    expect((await exec(lu, i1, proutCdb(6), PROUT, params(0n, 1n, 0x08))).sense).to.deep.include({ key: 5, asc: 0x26 });
    expect((await exec(lu, i1, proutCdb(6, 0, 23), PROUT, params(0n, 1n).subarray(0, 23))).sense).to.deep.include({ key: 5, asc: 0x1a });
    expect((await exec(lu, i1, proutCdb(6, 0, 28), PROUT, Buffer.concat([params(0n, 1n), Buffer.alloc(4)]))).sense).to.deep.include({
      key: 5,
      asc: 0x1a,
    });
    expect((await exec(lu, i1, proutCdb(9), PROUT, params(0n, 1n))).sense).to.deep.include({ key: 5, asc: 0x24 });
  });

  it('keeps APTPL state in the JSON store and drops it when APTPL is cleared', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tabula-pr-'));
    try {
      const path = join(dir, 'lun0.pr.json');
      lu = new FakeLu(new FakeTarget(), 0, undefined, new Reservations(new JsonFileReservationStore(path)));
      await register(i1, 0xfeedn, 0x01);
      await reserve(i1, 0xfeedn, WERO);
      expect(existsSync(path)).to.equal(true);
      // "power cycle": a new LU over the same store
      lu = new FakeLu(new FakeTarget(), 0, undefined, new Reservations(new JsonFileReservationStore(path)));
      expect(await prin(i1, 1)).to.deep.equal(hex('00000001 00000010 000000000000feed 00000000 00 05 0000'));
      expect((await exec(lu, i3, [0x2a], WRITE)).status).to.equal(0x18);
      expect((await exec(lu, i1, proutCdb(0), PROUT, params(0xfeedn, 0xbeefn, 0))).status).to.equal(0);
      expect(existsSync(path)).to.equal(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the memory store returns what was saved', async () => {
    const store = new MemoryReservationStore();
    lu = new FakeLu(new FakeTarget(), 0, undefined, new Reservations(store));
    await register(i1, 9n);
    expect(store.load()!.registrations.map((r) => [r.key, r.nexus.id])).to.deep.equal([[9n, i1.id]]);
  });
});

describe('SPC-2 RESERVE / RELEASE', () => {
  let lu: FakeLu;
  beforeEach(() => {
    lu = new FakeLu(new FakeTarget(), 0);
  });

  it('follows libiscsi Reserve6.2Initiators', async () => {
    expect((await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0);
    expect((await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0);
    expect((await exec(lu, i2, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0x18);
    expect((await exec(lu, i2, [0x17, 0, 0, 0, 0, 0], RELEASE6)).status).to.equal(0);
    expect((await exec(lu, i1, [0x1a], MODE_SENSE)).status).to.equal(0);
    expect((await exec(lu, i2, [0x1a], MODE_SENSE)).status).to.equal(0x18);
    expect((await exec(lu, i2, [0x28], READ)).status).to.equal(0x18);
    expect((await exec(lu, i2, [0x12], INQUIRY)).status).to.equal(0);
    expect((await exec(lu, i1, [0x17, 0, 0, 0, 0, 0], RELEASE6)).status).to.equal(0);
    expect((await exec(lu, i2, [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], RESERVE10)).status).to.equal(0);
    expect((await exec(lu, i2, [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], RELEASE10)).status).to.equal(0);
    expect((await exec(lu, i1, [0x28], READ)).status).to.equal(0);
  });

  it('is released by a reset and by the loss of the holding nexus', async () => {
    await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6);
    lu.reservations.onNexusLost(i2);
    expect((await exec(lu, i2, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0x18);
    lu.reservations.onNexusLost(i1);
    expect((await exec(lu, i2, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0);
    lu.reservations.onReset();
    expect((await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0);
  });

  it('conflicts with persistent reservations in both directions', async () => {
    await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6);
    expect((await exec(lu, i1, prinCdb(0), PRIN)).status).to.equal(0x18);
    expect((await exec(lu, i2, proutCdb(6), PROUT, params(0n, 1n))).status).to.equal(0x18);
    await exec(lu, i1, [0x17, 0, 0, 0, 0, 0], RELEASE6);
    expect((await exec(lu, i2, proutCdb(6), PROUT, params(0n, 1n))).status).to.equal(0);
    expect((await exec(lu, i1, [0x16, 0, 0, 0, 0, 0], RESERVE6)).status).to.equal(0x18);
  });

  it('refuses third-party reservations', async () => {
    expect((await exec(lu, i1, [0x56, 0x10, 0, 5, 0, 0, 0, 0, 0, 0], RESERVE10)).sense).to.deep.include({ key: 5, asc: 0x24 });
  });
});

function reqOf(n: typeof i1) {
  return { nexus: n, lun: 0, cdb: Buffer.alloc(10), attr: 1, tag: 1, dataOut: null, expectedLength: 0 };
}
