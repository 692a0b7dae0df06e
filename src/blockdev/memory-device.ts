// A sparse, thin block device held in memory: the stand-in for real storage
// in SCSI tests. Only written blocks take memory; unwritten or unmapped blocks
// read as zeros and report as deallocated (GET LBA STATUS).
import { BlockDeviceError } from './block-device.js';
import type { BlockDevice, BlockErrorKind, ProvisioningStatus, WriteOptions } from './block-device.js';

export interface MemoryBlockDeviceOptions {
  blockSize?: number;
  /** Supports deallocation (default true). A thick device keeps blocks mapped and writes zeros instead. */
  thin?: boolean;
}

type Op = 'read' | 'write' | 'flush' | 'unmap';

export class MemoryBlockDevice implements BlockDevice {
  readonly blockSize: number;
  readonly thin: boolean;
  private count: number;
  /** Mapped blocks by LBA. A block buffer is never shared with a caller. */
  private readonly blocks = new Map<number, Buffer>();
  private readonly faults = new Map<Op, BlockDeviceError>();
  /** Counters tests can inspect. */
  readonly stats = { reads: 0, writes: 0, fuaWrites: 0, flushes: 0, unmaps: 0, writeZeroes: 0 };
  closed = false;

  constructor(blockCount: number, opts: MemoryBlockDeviceOptions = {}) {
    this.blockSize = opts.blockSize ?? 512;
    this.thin = opts.thin ?? true;
    this.count = blockCount;
  }

  get blockCount(): number {
    return this.count;
  }

  /** Change the capacity (blocks beyond a shrunk end are dropped). */
  resize(blockCount: number): void {
    if (blockCount < this.count) for (const lba of [...this.blocks.keys()]) if (lba >= blockCount) this.blocks.delete(lba);
    this.count = blockCount;
  }

  /** Make every following `op` fail with `kind` until cleared with `clearFault`. */
  injectFault(op: Op, kind: BlockErrorKind, lba?: number): void {
    this.faults.set(op, new BlockDeviceError(kind, `injected ${kind} on ${op}`, lba));
  }

  clearFault(op: Op): void {
    this.faults.delete(op);
  }

  /** Number of blocks currently holding data. */
  mappedBlocks(): number {
    return this.blocks.size;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    this.fault('read');
    this.check(lba, blocks, 'read');
    this.stats.reads++;
    const out = Buffer.alloc(blocks * this.blockSize);
    for (let i = 0; i < blocks; i++) this.blocks.get(lba + i)?.copy(out, i * this.blockSize);
    return out;
  }

  async write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.fault('write');
    if (data.length % this.blockSize !== 0) throw new Error(`write of ${data.length} bytes is not a whole number of ${this.blockSize}-byte blocks`);
    const n = data.length / this.blockSize;
    this.check(lba, n, 'write');
    this.stats.writes++;
    if (opts?.fua) this.stats.fuaWrites++;
    for (let i = 0; i < n; i++) {
      const b = Buffer.allocUnsafe(this.blockSize);
      data.copy(b, 0, i * this.blockSize, (i + 1) * this.blockSize);
      this.blocks.set(lba + i, b);
    }
  }

  async flush(): Promise<void> {
    this.fault('flush');
    this.stats.flushes++;
  }

  async unmap(lba: number, blocks: number): Promise<void> {
    this.fault('unmap');
    this.check(lba, blocks, 'unmap');
    this.stats.unmaps++;
    this.zero(lba, blocks, true);
  }

  async writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void> {
    this.fault('write');
    this.check(lba, blocks, 'write zeroes');
    this.stats.writeZeroes++;
    this.zero(lba, blocks, deallocate);
  }

  async provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus> {
    this.check(lba, 1, 'provisioning');
    const limit = Math.min(maxBlocks, this.count - lba);
    const mapped = !this.thin || this.blocks.has(lba);
    let n = 1;
    while (n < limit && (!this.thin || this.blocks.has(lba + n)) === mapped) n++;
    return { mapped, blocks: n };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private zero(lba: number, blocks: number, deallocate: boolean): void {
    for (let i = 0; i < blocks; i++) {
      if (this.thin && deallocate) this.blocks.delete(lba + i);
      else if (this.thin && !this.blocks.has(lba + i)) continue; // already reads as zeros
      else this.blocks.set(lba + i, Buffer.alloc(this.blockSize));
    }
  }

  private fault(op: Op): void {
    const f = this.faults.get(op);
    if (f) throw f;
  }

  private check(lba: number, blocks: number, what: string): void {
    if (!Number.isInteger(lba) || !Number.isInteger(blocks) || lba < 0 || blocks < 0 || lba + blocks > this.count) {
      throw new BlockDeviceError('out-of-range', `${what} lba=${lba} blocks=${blocks} beyond ${this.count} blocks`, lba);
    }
  }
}
