// A BlockDevice over a plain (sparse) file or a Linux block device: what
// `tabula target` serves. The file I/O itself (inline fast path, FUA
// descriptor, hole punching) is file-io.ts, shared with the agent's
// container driver; this file adds blocks, range checks and error kinds.
import { BlockDeviceError } from './block-device.js';
import { OpenFile, PartialIoError, ShortReadError, errnoName } from './file-io.js';
import { readBuffer } from './read-buffers.js';
import type { BlockDevice, BlockErrorKind, ProvisioningStatus, WriteOptions } from './block-device.js';

export interface FileBlockDeviceOptions {
  /** Capacity in bytes: create the file sparse, or extend an existing smaller one. */
  size?: number;
  blockSize?: 512 | 4096;
  readOnly?: boolean;
  /** Largest read or buffered write done inline while fast (default INLINE_MAX_BYTES; 0: always the thread pool). */
  inlineMaxBytes?: number;
}

type IoOp = 'read' | 'write' | 'flush' | 'unmap' | 'zero';

export class FileBlockDevice implements BlockDevice {
  readonly thin = true;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly file: OpenFile,
    readonly blockSize: number,
    readonly blockCount: number,
    readonly readOnly: boolean,
  ) {}

  static async open(path: string, opts: FileBlockDeviceOptions = {}): Promise<FileBlockDevice> {
    const blockSize = opts.blockSize ?? 512;
    if (blockSize !== 512 && blockSize !== 4096) throw new Error(`${path}: block size ${String(blockSize)} is not 512 or 4096`);
    const readOnly = opts.readOnly ?? false;
    if (opts.size !== undefined) {
      if (!Number.isSafeInteger(opts.size) || opts.size <= 0) throw new Error(`${path}: size ${opts.size} is not a positive whole number of bytes`);
      if (opts.size % blockSize !== 0) throw new Error(`${path}: size ${opts.size} is not a multiple of the ${blockSize}-byte block size`);
      if (readOnly) throw new Error(`${path}: cannot create or extend a file opened read-only`);
    }
    let file: OpenFile;
    try {
      file = await OpenFile.open(path, { readOnly, create: opts.size !== undefined, inlineMaxBytes: opts.inlineMaxBytes });
    } catch (e) {
      throw new Error(`cannot open ${path}${readOnly ? ' read-only' : ' read-write'}: ${(e as Error).message}`);
    }
    try {
      const stat = await file.stat();
      let size = stat.size;
      if (stat.medium === 'block') {
        if (opts.size !== undefined && opts.size !== size) throw new Error(`${path}: block device is ${size} bytes, not ${opts.size}`);
      } else if (opts.size !== undefined && opts.size > size) {
        await file.truncate(opts.size);
        size = opts.size;
      } else if (opts.size !== undefined && opts.size < size) {
        throw new Error(`${path}: file is ${size} bytes, larger than the requested ${opts.size} (refusing to shrink)`);
      }
      if (size === 0) throw new Error(`${path}: empty file (give a size to create it)`);
      if (size % blockSize !== 0) throw new Error(`${path}: size ${size} is not a multiple of the ${blockSize}-byte block size`);
      return new FileBlockDevice(path, file, blockSize, size / blockSize, readOnly);
    } catch (e) {
      file.closeSync();
      throw e;
    }
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    this.check(lba, blocks, 'read');
    const len = blocks * this.blockSize;
    const buf = readBuffer(len);
    try {
      const pending = this.file.read(buf, 0, len, lba * this.blockSize);
      if (pending !== undefined) await pending;
    } catch (e) {
      throw this.ioError('read', e, lba);
    }
    return buf;
  }

  readNow(lba: number, blocks: number): Buffer | undefined {
    this.check(lba, blocks, 'read');
    const len = blocks * this.blockSize;
    if (!this.file.inlineNow(len)) return undefined;
    const buf = readBuffer(len);
    try {
      this.file.readNow(buf, 0, len, lba * this.blockSize);
    } catch (e) {
      throw this.ioError('read', e, lba);
    }
    return buf;
  }

  writeNow(lba: number, data: Buffer, opts?: WriteOptions): boolean {
    if (opts?.fua === true) return false;
    this.checkWrite(lba, data);
    if (!this.file.inlineNow(data.length)) return false;
    try {
      this.file.writeNow(data, 0, data.length, lba * this.blockSize);
    } catch (e) {
      throw this.ioError('write', e, lba);
    }
    return true;
  }

  async write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.checkWrite(lba, data);
    try {
      const pending = this.file.write(data, 0, data.length, lba * this.blockSize, opts?.fua === true);
      if (pending !== undefined) await pending;
    } catch (e) {
      throw this.ioError('write', e, lba);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    try {
      await this.file.flush();
    } catch (e) {
      throw this.ioError('flush', e);
    }
  }

  async unmap(lba: number, blocks: number): Promise<void> {
    await this.writeZeroes(lba, blocks, true);
  }

  async writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void> {
    if (this.readOnly) throw new BlockDeviceError('write-protected', `UNMAP ${this.path} lba=${lba}: opened read-only`, lba);
    this.check(lba, blocks, 'write');
    try {
      await this.file.zero(lba * this.blockSize, blocks * this.blockSize, deallocate);
    } catch (e) {
      throw this.ioError(deallocate ? 'unmap' : 'zero', e, lba);
    }
  }

  async provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus> {
    this.check(lba, 1, 'read');
    const limit = Math.max(1, Math.min(maxBlocks, this.blockCount - lba));
    const off = lba * this.blockSize;
    const end = this.blockCount * this.blockSize;
    let data: number;
    try {
      data = this.file.seekData(off);
    } catch {
      return { mapped: true, blocks: limit }; // no SEEK_DATA support: everything counts as mapped
    }
    if (data === -1 || data >= end) return { mapped: false, blocks: limit };
    if (data > off) {
      // Holes are file-system-block aligned; a partially covered logical block counts as mapped.
      const holeBlocks = Math.floor((data - off) / this.blockSize);
      if (holeBlocks > 0) return { mapped: false, blocks: Math.min(limit, holeBlocks) };
    }
    let hole = this.file.seekHole(Math.max(off, data));
    if (hole === -1 || hole > end) hole = end;
    const mappedBlocks = Math.ceil((hole - off) / this.blockSize);
    return { mapped: true, blocks: Math.min(limit, Math.max(1, mappedBlocks)) };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.file.close();
  }

  private checkWrite(lba: number, data: Buffer): void {
    if (this.readOnly) throw new BlockDeviceError('write-protected', `WRITE ${this.path} lba=${lba}: opened read-only`, lba);
    if (data.length % this.blockSize !== 0) {
      throw new Error(`WRITE ${this.path} lba=${lba}: ${data.length} bytes is not a whole number of ${this.blockSize}-byte blocks`);
    }
    this.check(lba, data.length / this.blockSize, 'write');
  }

  private check(lba: number, blocks: number, op: 'read' | 'write'): void {
    if (this.closed) throw new Error(`${op.toUpperCase()} ${this.path}: device is closed`);
    if (!Number.isSafeInteger(lba) || lba < 0 || blocks < 0 || lba + blocks > this.blockCount) {
      throw new BlockDeviceError('out-of-range', `${op.toUpperCase()} ${this.path} lba=${lba} len=${blocks}: beyond the last block ${this.blockCount - 1}`, lba);
    }
  }

  /** The failure of `op` at `lba`, moved on to the block the error hit when the bytes before it completed. */
  private ioError(op: IoOp, e: unknown, lba?: number): BlockDeviceError {
    const at = lba !== undefined && (e instanceof PartialIoError || e instanceof ShortReadError) ? lba + Math.floor(e.done / this.blockSize) : lba;
    const where = at === undefined ? '' : ` lba=${at}`;
    if (e instanceof ShortReadError) {
      return new BlockDeviceError('read-error', `READ ${this.path}${where}: unexpected end of file`, lba);
    }
    const code = errnoName(e);
    return new BlockDeviceError(errorKind(op, code), `${op.toUpperCase()} ${this.path}${where}: ${code} ${(e as Error).message}`, at);
  }
}

function errorKind(op: IoOp, code: string): BlockErrorKind {
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return 'no-space';
    case 'EROFS':
    case 'EPERM':
    case 'EACCES':
      return op === 'read' ? 'read-error' : 'write-protected';
    default:
      return op === 'read' ? 'read-error' : 'write-error';
  }
}
