import { expect } from 'chai';
import { MappingTable } from '../../../src/table/mapping-table.js';
import { formatExtent, formatTable } from '../../../src/table/format.js';
import { SegmentState } from '../../../src/table/segment-state.js';
import { C1, C2 } from './helpers.js';

describe('table/format', () => {
  const t = new MappingTable({ segmentCount: 4096, version: 12, name: 'disk0' });
  t.setRange(0, 1024, { state: SegmentState.Normal, container: C1, offset: 4096 });
  t.setRange(2048, 10, { state: SegmentState.NoWrite, container: C2, offset: 0 });
  t.set(2058, { state: SegmentState.Error, container: C2, offset: 77 });
  t.set(2059, { state: SegmentState.Error });
  t.setRange(4000, 96, { state: SegmentState.Invalid });

  it('prints one line per extent', () => {
    expect(formatTable(t)).to.equal(
      [
        '0-1023 normal c=11111111 off=4096',
        '1024-2047 zero',
        '2048-2057 no-write c=22222222 off=0',
        '2058-2058 error c=22222222 off=77',
        '2059-2059 error',
        '2060-3999 zero',
        '4000-4095 invalid',
      ].join('\n'),
    );
  });

  it('prints full ids and a header on request', () => {
    const lines = formatTable(t, { fullIds: true, header: true }).split('\n');
    expect(lines[0]).to.equal('# vdisk disk0 version 12: 4096 segments of 1048576 bytes, block size 512');
    expect(lines[1]).to.equal(`0-1023 normal c=${C1} off=4096`);
    expect(formatTable(new MappingTable({ segmentCount: 0 }), { header: true })).to.equal(
      '# version 0: 0 segments of 1048576 bytes, block size 512',
    );
  });

  it('formats a single extent', () => {
    expect(formatExtent({ first: 5, count: 1, state: SegmentState.Zero, container: null, offset: 0 })).to.equal('5-5 zero');
  });
});
