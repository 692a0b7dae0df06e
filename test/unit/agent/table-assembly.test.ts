// The agent's TableAssembly with mirrored legs: the run form and the extents
// form build the controller's table (legs included, their offsets advancing
// across the slices of a long run), and malformed legs are refused with the
// reason.
import { expect } from 'chai';
import { TableAssembly } from '../../../src/agent/table-assembly.js';
import { MappingTable, SegmentState, tableRuns, toExtents } from '../../../src/table/index.js';
import type { TableFull } from '../../../src/wire/proto-types.js';
import { wireExtent } from '../../../src/wire/table-extents.js';

const C1 = '11111111-aaaa-4bbb-8ccc-000000000001';
const C2 = '22222222-aaaa-4bbb-8ccc-000000000002';
const C3 = '33333333-aaaa-4bbb-8ccc-000000000003';
const N = SegmentState.Normal;

function runForm(t: MappingTable, maxRuns: number): TableFull[] {
  const pieces = [...tableRuns(t, maxRuns)];
  return pieces.map((r, i) => ({
    vdiskId: 'v',
    version: t.version,
    segmentSize: t.segmentSize,
    blockSize: t.blockSize,
    segmentCount: t.segmentCount,
    containers: [...t.containers],
    extents: [],
    firstSegment: r.firstSegment,
    runCounts: r.counts,
    runStates: r.states,
    runContainers: r.containers,
    runOffsets: r.offsets,
    ...(r.legCounts !== undefined ? { runLegCounts: r.legCounts, runLegContainers: r.legContainers, runLegOffsets: r.legOffsets } : {}),
    more: i < pieces.length - 1,
  }));
}

async function assemble(msgs: TableFull[]): Promise<MappingTable> {
  const a = new TableAssembly(msgs[0]!, 'v');
  for (const m of msgs) {
    expect(a.mismatch(m)).to.equal(null);
    await a.add(m);
  }
  return a.finish();
}

/** 2^20 segments: a run longer than the assembly's slices, with two extra legs, then a fragmented tail. */
function sample(): MappingTable {
  const t = new MappingTable({ segmentCount: 1 << 20, version: 7, name: 'v' });
  t.setRange(0, 900_000, { state: N, container: C1, offset: 5, legs: [{ container: C2, offset: 100 }, { container: C3, offset: 0 }] });
  for (let s = 900_000; s < 900_100; s++) t.set(s, { state: N, container: C2, offset: s % 2, legs: [{ container: C1, offset: s }] });
  t.setRange(900_100, 10, { state: SegmentState.NoWrite, container: C3, offset: 1 });
  return t;
}

describe('agent: table assembly of mirrored tables', function () {
  this.timeout(60_000);

  it('builds the table from the run form, legs advancing across slices', async () => {
    const t = sample();
    const u = await assemble(runForm(t, 40));
    expect(u.equals(t)).to.equal(true);
    expect(u.locationsOf(899_999)).to.deep.equal([
      { container: C1, offset: 900_004 },
      { container: C2, offset: 900_099 },
      { container: C3, offset: 899_999 },
    ]);
  });

  it('builds the table from the extents form', async () => {
    const t = sample();
    const [first] = runForm(t, 1);
    const u = await assemble([{ ...first!, firstSegment: 0, runCounts: [], runStates: [], runContainers: [], runOffsets: [], runLegCounts: [], runLegContainers: [], runLegOffsets: [], extents: toExtents(t).map(wireExtent), more: false }]);
    expect(u.equals(t)).to.equal(true);
  });

  it('refuses legs on unknown or repeated containers, offsets out of range, legs without a container', async () => {
    const t = new MappingTable({ segmentCount: 4, version: 1 });
    t.setRange(0, 4, { state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 3 }] });
    const [m] = runForm(t, 10);
    const refused = async (msg: TableFull, why: RegExp): Promise<void> => {
      let err: unknown = null;
      try {
        await assemble([msg]);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(msg)).to.be.instanceOf(RangeError);
      expect((err as Error).message).to.match(why);
    };
    const bad = (x: Partial<TableFull>, why: RegExp): Promise<void> => refused({ ...m!, ...x }, why);
    await bad({ runLegContainers: [3] }, /run 0 leg 1 names container 3 of 2/);
    await bad({ runLegContainers: [1] }, /leg 1 is on the container of leg 0/);
    await bad({ runLegOffsets: [2 ** 32 - 2] }, /leg 1 container offset 4294967297 exceeds 4294967295/);
    await bad({ runLegCounts: [1], runLegOffsets: [] }, /1 extra legs counted, 1 leg containers, 0 leg offsets/);
    await bad({ runContainers: [0], runStates: [SegmentState.Error] }, /run 0 has extra legs but no container/);
    const ext = (legs: { container: string; offset: number }[]): TableFull => ({
      ...m!,
      runCounts: [],
      runLegCounts: [],
      runLegContainers: [],
      runLegOffsets: [],
      extents: [{ first: 0, count: 4, state: N, container: C1, offset: 0, legs: { list: legs } }],
    });
    await refused(ext([{ container: '', offset: 0 }]), /leg 1 has no container/);
    await refused(ext([{ container: C2, offset: 0 }, { container: C2, offset: 9 }]), /leg 2 is on container .*, as leg 1 is/);
    await refused(ext([{ container: C2, offset: 0 }, { container: C3, offset: 1 }, { container: '4', offset: 2 }]), /4 legs: a segment has at most 3/);
  });
});
