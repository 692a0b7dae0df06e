// The judge of the thin durability system test: what it accepts after a
// process crash and after a power loss, from a writer's log.
import { expect } from 'chai';
import { BLOCK, decodeBlock, encodeBlocks, VdiskModel } from '../../support/durability-model.js';

const id = (n: number): number => 2 ** 32 + n;
const block = (tag: number, lba: number, n: number) => decodeBlock(encodeBlocks(tag, lba, 1, id(n)));
const ZERO = decodeBlock(Buffer.alloc(BLOCK));

describe('durability-model (the thin durability test judge)', () => {
  it('decodes what it encodes, and sees a flipped byte as garbage', () => {
    expect(block(2, 77, 5)).to.deep.equal({ kind: 'data', tag: 2, lba: 77, id: id(5) });
    const b = encodeBlocks(2, 77, 1, id(5));
    b[300] = b[300]! ^ 1;
    expect(decodeBlock(b).kind).to.equal('garbage');
  });

  it('process crash: the last GOOD write or a later unfinished one; never zeros, older data or another vdisk', () => {
    const m = new VdiskModel('v', 1);
    m.ingest([`WI ${id(1)} 0 8 0`, `W ${id(1)} GOOD`, `WI ${id(2)} 0 8 0`, `W ${id(2)} GOOD`, `WI ${id(3)} 0 8 0`, `W ${id(3)} LOST`].join('\n'));
    expect(m.judge(3, block(1, 3, 2), 'process')).to.equal(undefined);
    expect(m.judge(3, block(1, 3, 3), 'process')).to.equal(undefined);
    expect(m.judge(3, block(1, 3, 1), 'process')).to.match(/older write/);
    expect(m.judge(3, ZERO, 'process')).to.match(/zeros/);
    expect(m.judge(3, block(2, 3, 2), 'process')).to.match(/another vdisk/);
    expect(m.judge(3, block(1, 4, 2), 'process')).to.match(/another LBA/);
    expect(m.judge(9, ZERO, 'process')).to.equal(undefined);
  });

  it('power loss: synced and FUA writes stay; unsynced ones may be zeros; a failed sync promises nothing later', () => {
    const m = new VdiskModel('v', 1);
    const r = m.ingest(
      [
        `WI ${id(1)} 0 1 0`, `W ${id(1)} GOOD`, 'SI 1', `WI ${id(2)} 8 1 0`, 'S 1 GOOD', `W ${id(2)} GOOD`,
        `WI ${id(3)} 16 1 1`, `W ${id(3)} GOOD`, `WI ${id(4)} 24 1 0`, `W ${id(4)} GOOD`, 'SI 2', 'S 2 CHECK 03/0c/00', 'SI 3', 'S 3 GOOD',
      ].join('\n'),
    );
    expect(r.syncFailures).to.deep.equal(['CHECK 03/0c/00']);
    expect(m.judge(0, ZERO, 'power')).to.match(/durable/);
    expect(m.judge(8, ZERO, 'power'), 'completed after the sync was issued').to.equal(undefined);
    expect(m.judge(16, ZERO, 'power'), 'FUA').to.match(/durable/);
    expect(m.judge(24, ZERO, 'power'), 'covered by the failed sync only').to.equal(undefined);
    expect(m.judge(24, block(1, 24, 4), 'power')).to.equal(undefined);
    expect(m.durableWrites).to.equal(2);
  });

  it('settle: what was read becomes the only history, zeros included', () => {
    const m = new VdiskModel('v', 1);
    m.ingest([`WI ${id(1)} 0 1 1`, `W ${id(1)} GOOD`, `WI ${id(2)} 8 1 1`, `W ${id(2)} GOOD`].join('\n'));
    expect(m.judge(0, ZERO, 'power')).to.match(/durable/);
    m.settle(new Map([[8, block(1, 8, 2)]]));
    expect(m.judge(0, ZERO, 'power')).to.equal(undefined);
    expect(m.judge(8, ZERO, 'power')).to.match(/durable/);
  });
});
