import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { log } from '../../../src/util/log.js';
import { TmfCode, TmfResult, makeNexus } from '../../../src/scsi/port.js';
import { cdb, expectGood, expectSense, fixture, nexusA, nexusB, senseOf, TARGET } from './helpers.js';

describe('SCSI dispatch', () => {
  it('answers for a LUN that does not exist', async () => {
    const f = fixture();
    const inq = await f.run(cdb.inquiry(false, 0, 96), { lun: 5 });
    expectGood(inq);
    expect(inq.dataIn![0]).to.equal(0x7f); // qualifier 011b, type 1Fh
    const luns = await f.run(cdb.reportLuns(), { lun: 5 });
    expectGood(luns);
    expect([...luns.dataIn!]).to.deep.equal([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const rs = await f.run(cdb.requestSense(18), { lun: 5 });
    expectGood(rs);
    expect([rs.dataIn![0], rs.dataIn![2], rs.dataIn![12], rs.dataIn![13]]).to.deep.equal([0x70, 0x05, 0x25, 0x00]);
    expectSense(await f.run(cdb.tur(), { lun: 5 }), 0x5, 0x25, 0x00);
  });

  it('rejects unknown opcodes and service actions', async () => {
    const f = fixture();
    expectSense(await f.run([0xc0, 0, 0, 0, 0, 0]), 0x5, 0x20, 0x00);
    const r = await f.run([0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
    const s = senseOf(r);
    expect([s.key, s.asc, s.ascq]).to.deep.equal([0x5, 0x24, 0x00]);
    // SKSV, C/D (CDB), BPV, bit 4; field pointer byte 1
    expect(s.sks).to.deep.equal([0xc0 | 0x08 | 4, 0, 1]);
  });

  it('rejects NACA and LINK in the control byte', async () => {
    const f = fixture();
    expectSense(await f.run([0x00, 0, 0, 0, 0, 0x04]), 0x5, 0x24, 0x00);
    expectSense(await f.run([0x00, 0, 0, 0, 0, 0x01]), 0x5, 0x24, 0x00);
  });

  it('maps block device errors to one sense code each and survives other exceptions', async () => {
    const f = fixture();
    f.dev.injectFault('read', 'read-error', 7);
    const r = await f.run(cdb.read10(7, 1));
    expectSense(r, 0x3, 0x11, 0x00);
    expect(senseOf(r).info).to.equal(7n);
    f.dev.clearFault('read');
    f.dev.injectFault('write', 'no-space');
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x7, 0x27, 0x07);
    f.dev.injectFault('write', 'not-ready');
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x2, 0x04, 0x0a);
    f.dev.injectFault('write', 'write-error');
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x3, 0x0c, 0x00);
    f.dev.clearFault('write');
    // a device that throws something unexpected: HARDWARE ERROR, not a crash
    const broken = new MemoryBlockDevice(16);
    broken.read = async () => {
      throw new TypeError('boom');
    };
    f.target.addLun(1, broken);
    log.silent = true; // the expected error line
    try {
      expectSense(await f.run(cdb.read10(0, 1), { lun: 1 }), 0x4, 0x44, 0x00);
    } finally {
      log.silent = false;
    }
  });

  it('refuses medium writes on a read-only LU and reports WP', async () => {
    const f = fixture(64, { readOnly: true });
    expectSense(await f.run(cdb.write10(0, 1), { dataOut: Buffer.alloc(512) }), 0x7, 0x27, 0x00);
    expectSense(await f.run(cdb.writeSame10(0, 1), { dataOut: Buffer.alloc(512) }), 0x7, 0x27, 0x00);
    expectGood(await f.run(cdb.read10(0, 1)));
    expectGood(await f.run([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    const ms = await f.run(cdb.modeSense6(0x3f));
    expect(ms.dataIn![2]! & 0x80).to.equal(0x80);
  });

  it('reports NOT READY while busy, except for INQUIRY, REPORT LUNS and REQUEST SENSE', async () => {
    const f = fixture();
    const lu = f.target.lu(0)!;
    const busy = { sense: { key: 0x2, asc: 0x04, ascq: 0x1b }, progress: () => 0x4000 };
    lu.setBusy(busy);
    const t = await f.run(cdb.tur());
    expectSense(t, 0x2, 0x04, 0x1b);
    expectGood(await f.run(cdb.inquiry(false, 0, 96)));
    expectGood(await f.run(cdb.reportLuns()));
    const rs = await f.run(cdb.requestSense(18));
    expectGood(rs);
    const d = rs.dataIn!;
    expect([d[2], d[12], d[13], d[15], d[16], d[17]]).to.deep.equal([0x2, 0x04, 0x1b, 0x80, 0x40, 0x00]);
    lu.setBusy(null);
    expectGood(await f.run(cdb.tur()));
  });
});

describe('unit attentions', () => {
  it('raises a LUN reset once per nexus, oldest first, and skips INQUIRY', async () => {
    const f = fixture();
    expectGood(await f.run(cdb.tur(), { nexus: nexusA }));
    expectGood(await f.run(cdb.tur(), { nexus: nexusB }));
    expect(await f.target.taskManagement(TmfCode.LogicalUnitReset, nexusA, 0)).to.equal(TmfResult.Complete);
    f.dev.resize(4096); // capacity change queued behind the reset
    expectGood(await f.run(cdb.inquiry(false, 0, 96), { nexus: nexusA }));
    expectSense(await f.run(cdb.tur(), { nexus: nexusA }), 0x6, 0x29, 0x03);
    expectSense(await f.run(cdb.tur(), { nexus: nexusA }), 0x6, 0x2a, 0x09);
    expectGood(await f.run(cdb.tur(), { nexus: nexusA }));
    // B gets both too, through REQUEST SENSE for the first
    const rs = await f.run(cdb.requestSense(18), { nexus: nexusB });
    expectGood(rs);
    expect([rs.dataIn![2], rs.dataIn![12], rs.dataIn![13]]).to.deep.equal([0x6, 0x29, 0x03]);
    expectSense(await f.run(cdb.read10(0, 1), { nexus: nexusB }), 0x6, 0x2a, 0x09);
    expectGood(await f.run(cdb.read10(0, 1), { nexus: nexusB }));
  });

  it('gives a brand-new nexus no POWER ON, and a reconnecting one nothing it has seen', async () => {
    const f = fixture();
    expectGood(await f.run(cdb.tur(), { nexus: nexusA }));
    await f.target.taskManagement(TmfCode.LogicalUnitReset, nexusA, 0);
    f.target.nexusLost(nexusA);
    // same initiator port name (IQN + ISID) again: the pending UA is still there, once
    const again = makeNexus('iqn.1994-05.com.example:a', 0x23d000000001, TARGET, 1);
    expectSense(await f.run(cdb.tur(), { nexus: again }), 0x6, 0x29, 0x03);
    f.target.nexusLost(again);
    expectGood(await f.run(cdb.tur(), { nexus: again }));
    // a new ISID is a new nexus: nothing pending
    const fresh = makeNexus('iqn.1994-05.com.example:a', 0x23d000000009, TARGET, 1);
    expectGood(await f.run(cdb.read10(0, 1), { nexus: fresh }));
  });

  it('REPORT LUNS reports and clears REPORTED LUNS DATA HAS CHANGED', async () => {
    const f = fixture();
    expectGood(await f.run(cdb.tur()));
    f.target.addLun(3, new MemoryBlockDevice(8));
    const r = await f.run(cdb.reportLuns());
    expectGood(r);
    expect([...r.dataIn!]).to.deep.equal([0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0]);
    expectGood(await f.run(cdb.tur()));
    f.target.removeLun(3);
    expectSense(await f.run(cdb.tur()), 0x6, 0x3f, 0x0e);
  });

  it('target resets raise their own codes (warm: not to the issuer); CLEAR TASK SET tells the other initiators', async () => {
    const f = fixture();
    await f.run(cdb.tur(), { nexus: nexusA });
    await f.run(cdb.tur(), { nexus: nexusB });
    await f.target.taskManagement(TmfCode.TargetWarmReset, nexusA, 0);
    expectSense(await f.run(cdb.tur(), { nexus: nexusB }), 0x6, 0x29, 0x02);
    expectGood(await f.run(cdb.tur(), { nexus: nexusA })); // the issuer has its TMF response
    await f.target.taskManagement(TmfCode.TargetColdReset, nexusA, 0);
    expectSense(await f.run(cdb.tur(), { nexus: nexusA }), 0x6, 0x29, 0x01);
    expectSense(await f.run(cdb.tur(), { nexus: nexusB }), 0x6, 0x29, 0x01);
    await f.target.taskManagement(TmfCode.ClearTaskSet, nexusA, 0);
    expectGood(await f.run(cdb.tur(), { nexus: nexusA }));
    expectSense(await f.run(cdb.tur(), { nexus: nexusB }), 0x6, 0x2f, 0x00);
    expect(await f.target.taskManagement(TmfCode.LogicalUnitReset, nexusA, 9)).to.equal(TmfResult.LunDoesNotExist);
  });
});
