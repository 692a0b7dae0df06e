// ALUA across agents at the SCSI layer: an LU's own port groups with their
// access states in REPORT TARGET PORT GROUPS (bytes built here by hand from
// SPC-4 6.36), ASYMMETRIC ACCESS STATE CHANGED when a state changes, and
// VPD 0x83 naming the path's own relative port and group.
import { expect } from 'chai';
import { AccessState } from '../../../src/scsi/lu-api.js';
import type { LogicalUnit } from '../../../src/scsi/logical-unit.js';
import { makeNexus } from '../../../src/scsi/port.js';
import { cdb, expectGood, expectSense, fixture, TARGET } from './helpers.js';

// Agent 1 with two portals (ports 17, 18) and agent 2 with one (port 33).
const groups = (b: AccessState) => [
  { id: 1, relativePortIds: [17, 18], state: AccessState.ActiveOptimized },
  { id: 2, relativePortIds: [33], state: b },
];
const onAgent1 = makeNexus('iqn.1994-05.com.example:a', 0x23d000000001, TARGET, 17, 17, 1);
const onAgent1Too = makeNexus('iqn.1994-05.com.example:b', 0x23d000000002, TARGET, 18, 18, 1);

function lu(f: ReturnType<typeof fixture>): LogicalUnit {
  return f.target.lu(0) as LogicalUnit;
}

describe('ALUA: port groups of a logical unit served by several agents', () => {
  it('REPORT TARGET PORT GROUPS lists every group with its state, PREF on the optimized, and the supported states', async () => {
    const f = fixture();
    lu(f).setPortGroups(groups(AccessState.ActiveNonOptimized));
    const r = (await f.run(cdb.rtpg(false), { nexus: onAgent1 })).dataIn!;
    // prettier-ignore
    expect([...r]).to.deep.equal([
      0, 0, 0, 28,                       // RETURN DATA LENGTH: two descriptors, 16 + 12
      0x80, 0x8b, 0, 1, 0, 0, 0, 2,      // PREF | active/optimized; T_SUP U_SUP AN_SUP AO_SUP; group 1; 2 ports
      0, 0, 0, 17, 0, 0, 0, 18,
      0x01, 0x8b, 0, 2, 0, 0, 0, 1,      // active/non-optimized; group 2; 1 port
      0, 0, 0, 33,
    ]);
  });

  it('the extended header: format type 1, the same descriptors after 8 bytes, the length counting from byte 4', async () => {
    const f = fixture();
    lu(f).setPortGroups(groups(AccessState.Unavailable));
    const e = (await f.run(cdb.rtpg(true), { nexus: onAgent1 })).dataIn!;
    expect(e.length).to.equal(8 + 28);
    expect([...e.subarray(0, 8)]).to.deep.equal([0, 0, 0, 32, 0x10, 0, 0, 0]);
    expect([...e.subarray(8 + 16, 8 + 20)]).to.deep.equal([0x03, 0x8b, 0, 2]);
    // clipped to the allocation length, the length field still says the whole
    const c = (await f.run(cdb.rtpg(true, 10), { nexus: onAgent1 })).dataIn!;
    expect(c.length).to.equal(10);
    expect(c.readUInt32BE(0)).to.equal(32);
    // transitioning: state 0xF
    lu(f).setPortGroups(groups(AccessState.Transitioning));
    expectSense(await f.run(cdb.tur(), { nexus: onAgent1 }), 0x6, 0x2a, 0x06);
    const t = (await f.run(cdb.rtpg(false, 4096), { nexus: onAgent1 })).dataIn!;
    expect(t[4 + 16]).to.equal(0x0f);
  });

  it('a state change raises ASYMMETRIC ACCESS STATE CHANGED once on every nexus; the same states again raise nothing', async () => {
    const f = fixture();
    lu(f).setPortGroups(groups(AccessState.ActiveOptimized));
    expectGood(await f.run(cdb.tur(), { nexus: onAgent1 }));
    expectGood(await f.run(cdb.tur(), { nexus: onAgent1Too }));
    expect(lu(f).setPortGroups(groups(AccessState.ActiveOptimized))).to.equal(false);
    expectGood(await f.run(cdb.tur(), { nexus: onAgent1 }));
    expect(lu(f).setPortGroups(groups(AccessState.Unavailable))).to.equal(true);
    for (const nexus of [onAgent1, onAgent1Too]) {
      expectSense(await f.run(cdb.tur(), { nexus }), 0x6, 0x2a, 0x06);
      expectGood(await f.run(cdb.tur(), { nexus }));
    }
  });

  it('VPD 0x83 gives the relative target port and group of the path the command came through', async () => {
    const f = fixture();
    lu(f).setPortGroups(groups(AccessState.ActiveOptimized));
    const d = (await f.run(cdb.inquiry(true, 0x83), { nexus: onAgent1Too })).dataIn!;
    const byType = new Map<number, Buffer>();
    for (let off = 4; off < d.length; off += 4 + d[off + 3]!) byType.set(d[off + 1]! & 0x3f, d.subarray(off + 4, off + 4 + d[off + 3]!));
    expect([...byType.get(0x14)!]).to.deep.equal([0, 0, 0, 18]);
    expect([...byType.get(0x15)!]).to.deep.equal([0, 0, 0, 1]);
    expect(byType.get(0x18)!.toString('utf8').replace(/\0+$/, '')).to.equal(`${TARGET},t,0x0012`);
  });
});
