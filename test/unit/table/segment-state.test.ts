import { expect } from 'chai';
import {
  IoOp,
  SegmentState,
  inhibits,
  ioOpName,
  isReadOp,
  isSegmentState,
  parseIoOp,
  parseSegmentState,
  segmentStateName,
} from '../../../src/table/segment-state.js';

describe('table/segment-state', () => {
  it('has the wire values the design fixes', () => {
    expect([SegmentState.Normal, SegmentState.Zero, SegmentState.NoWrite, SegmentState.Invalid, SegmentState.Error]).to.deep.equal([
      0, 1, 2, 3, 4,
    ]);
  });

  it('names and parses states', () => {
    expect(segmentStateName(SegmentState.NoWrite)).to.equal('no-write');
    expect(segmentStateName(SegmentState.Zero)).to.equal('zero');
    expect(parseSegmentState('no-write')).to.equal(SegmentState.NoWrite);
    expect(parseSegmentState('NOWRITE')).to.equal(SegmentState.NoWrite);
    expect(parseSegmentState('no_write')).to.equal(SegmentState.NoWrite);
    expect(parseSegmentState(' Error ')).to.equal(SegmentState.Error);
    for (const s of [0, 1, 2, 3, 4] as SegmentState[]) expect(parseSegmentState(segmentStateName(s))).to.equal(s);
    expect(() => parseSegmentState('broken')).to.throw(RangeError, /unknown segment state "broken".*normal, zero/);
    expect(() => segmentStateName(9 as SegmentState)).to.throw(RangeError, /9/);
    expect(isSegmentState(4)).to.equal(true);
    expect(isSegmentState(5)).to.equal(false);
    expect(isSegmentState(1.5)).to.equal(false);
  });

  it('names and parses I/O operations', () => {
    expect(ioOpName(IoOp.CompareAndWrite)).to.equal('compare-and-write');
    expect(parseIoOp('write_same')).to.equal(IoOp.WriteSame);
    expect(parseIoOp('UNMAP')).to.equal(IoOp.Unmap);
    expect(() => parseIoOp('format')).to.throw(RangeError, /format/);
    expect(isReadOp(IoOp.Read)).to.equal(true);
    expect(isReadOp(IoOp.Verify)).to.equal(true);
    expect(isReadOp(IoOp.CompareAndWrite)).to.equal(false);
  });

  // Written from docs/architecture.md's "Segment states" table, one row per state.
  const expected: Record<string, Record<string, string>> = {
    normal: { read: 'proceed', write: 'proceed', unmap: 'proceed', 'compare-and-write': 'proceed', 'write-same': 'proceed', verify: 'proceed' },
    zero: { read: 'zero-read', write: 'fault', unmap: 'fault', 'compare-and-write': 'fault', 'write-same': 'fault', verify: 'zero-read' },
    'no-write': { read: 'proceed', write: 'fault', unmap: 'fault', 'compare-and-write': 'fault', 'write-same': 'fault', verify: 'proceed' },
    invalid: { read: 'fault', write: 'fault', unmap: 'fault', 'compare-and-write': 'fault', 'write-same': 'fault', verify: 'fault' },
    error: { read: 'fail', write: 'fail', unmap: 'fail', 'compare-and-write': 'fail', 'write-same': 'fail', verify: 'fail' },
  };
  for (const [stateName, row] of Object.entries(expected)) {
    for (const [opName, result] of Object.entries(row)) {
      it(`${stateName} + ${opName} -> ${result}`, () => {
        expect(inhibits(parseSegmentState(stateName), parseIoOp(opName))).to.equal(result);
      });
    }
  }

  it('rejects unknown states and operations', () => {
    expect(() => inhibits(7 as SegmentState, IoOp.Read)).to.throw(RangeError, /segment state 7/);
    expect(() => inhibits(SegmentState.Normal, 42 as IoOp)).to.throw(RangeError, /operation 42/);
  });
});
