// Container driver for regular files and block devices.
//
// Buffered I/O, not O_DIRECT: on one host every agent goes through the same
// page cache, so a read always sees the latest write and durability comes from
// FUA (a second O_DSYNC descriptor) and flush (fdatasync). A block device
// shared by agents on SEVERAL hosts (a SAN LUN) needs O_DIRECT instead, or one
// host's page cache serves data another host has overwritten (design notes
// §3): that mode must open with O_DIRECT and use block-aligned buffers, and
// is left for the shared-device driver.
//
// Small reads and buffered writes run inline while they are fast, as in
// `tabula target`'s file device (src/blockdev/inline-policy.ts): a page-cache
// hit costs microseconds there against a thread-pool round trip.
import * as fs from 'node:fs';
import { InlinePolicy } from '../blockdev/inline-policy.js';
import { readBuffer } from '../blockdev/read-buffers.js';
import { fileOps } from '../native/fileops.js';
import { ContainerIoError, type ContainerDriver, type ContainerOp, type ContainerWriteOptions } from './driver.js';
import {
  PartialIoError,
  ShortReadError,
  call,
  callVoid,
  errnoName,
  readFully,
  readFullySync,
  sizeOf,
  tryNative,
  writeFully,
  writeFullySync,
  type ContainerMedium,
} from '../blockdev/file-io.js';
import { LABEL_SIZE, LabelError, dataAreaSize, decodeLabel, type ContainerLabel } from './label.js';

export interface FileDriverOptions {
  readOnly?: boolean;
  /** Largest read or buffered write done inline while fast (default INLINE_MAX_BYTES; 0: always the thread pool). */
  inlineMaxBytes?: number;
}

/** Largest zero buffer for media that cannot zero a range natively. */
const ZERO_CHUNK = 1 << 20;
let zeroChunk: Buffer | undefined;

export class FileContainerDriver implements ContainerDriver {
  #closed = false;
  readonly dataSize: number;
  readonly #base: number;
  readonly #inline: InlinePolicy;

  private constructor(
    readonly kind: ContainerMedium,
    readonly path: string,
    readonly label: ContainerLabel,
    private readonly fd: number,
    /** O_DSYNC descriptor for FUA writes; -1 when read-only. */
    private readonly syncFd: number,
    readonly readOnly: boolean,
    inlineMaxBytes: number | undefined,
  ) {
    this.dataSize = dataAreaSize(label);
    this.#base = label.dataOffset;
    this.#inline = new InlinePolicy(inlineMaxBytes);
  }

  get id(): string {
    return this.label.id;
  }

  /**
   * Opens a labelled container. Throws LabelError when the label is missing,
   * damaged, or says the container is larger than the file or device
   * (kind 'truncated'), and ContainerIoError when it cannot be opened or read.
   */
  static async open(path: string, opts: FileDriverOptions = {}): Promise<FileContainerDriver> {
    const readOnly = opts.readOnly ?? false;
    const { O_RDWR, O_RDONLY, O_DSYNC } = fs.constants;
    let fd: number;
    try {
      fd = await call<number>((cb) => fs.open(path, readOnly ? O_RDONLY : O_RDWR, cb));
    } catch (e) {
      throw new ContainerIoError('open', path, -1, errnoName(e), (e as Error).message);
    }
    let syncFd = -1;
    try {
      const { medium, size } = await sizeOf(fd, path);
      const block = Buffer.alloc(Math.min(LABEL_SIZE, size));
      try {
        await readFully(fd, block, 0, block.length, 0);
      } catch (e) {
        throw new ContainerIoError('read', path, -1, errnoName(e), `reading the label: ${(e as Error).message}`);
      }
      const label = decodeLabel(block, path);
      if (size < label.size) {
        throw new LabelError('truncated', `label says ${label.size} bytes but the ${medium === 'block' ? 'device' : 'file'} has ${size}`, path);
      }
      if (!readOnly) syncFd = await call<number>((cb) => fs.open(path, O_RDWR | O_DSYNC, cb));
      return new FileContainerDriver(medium, path, label, fd, syncFd, readOnly, opts.inlineMaxBytes);
    } catch (e) {
      fs.closeSync(fd);
      if (syncFd >= 0) fs.closeSync(syncFd);
      throw e;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = readBuffer(length);
    await this.readInto(offset, buf, 0, length);
    return buf;
  }

  async readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void> {
    this.#check('read', offset, length);
    if (targetOffset < 0 || targetOffset + length > target.length) {
      throw new RangeError(`read ${this.path} offset ${offset}: ${length} bytes do not fit the buffer at ${targetOffset}`);
    }
    try {
      if (this.#inline.allows(length)) {
        const t0 = this.#inline.start();
        readFullySync(this.fd, target, targetOffset, length, this.#base + offset);
        this.#inline.took(t0);
      } else {
        await readFully(this.fd, target, targetOffset, length, this.#base + offset);
      }
    } catch (e) {
      throw this.#ioError('read', offset, e);
    }
  }

  async write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void> {
    this.#checkWritable('write', offset);
    this.#check('write', offset, data.length);
    try {
      // FUA writes wait for the medium: never inline.
      if (opts?.fua !== true && this.#inline.allows(data.length)) {
        const t0 = this.#inline.start();
        writeFullySync(this.fd, data, 0, data.length, this.#base + offset);
        this.#inline.took(t0);
      } else {
        await writeFully(opts?.fua ? this.syncFd : this.fd, data, 0, data.length, this.#base + offset);
      }
    } catch (e) {
      throw this.#ioError('write', offset, e);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.#closed) return;
    try {
      await callVoid((cb) => fs.fdatasync(this.fd, cb));
    } catch (e) {
      throw this.#ioError('flush', -1, e);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable('discard', offset);
    this.#check('discard', offset, length);
    if (length === 0) return;
    const at = this.#base + offset;
    try {
      // Punching a hole in a block device issues a zeroing discard (Linux >= 4.9).
      if (tryNative(() => fileOps.punchHole(this.fd, at, length))) return;
    } catch (e) {
      throw this.#ioError('discard', offset, e);
    }
    await this.writeZeroes(offset, length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWritable('zero', offset);
    this.#check('zero', offset, length);
    if (length === 0) return;
    const at = this.#base + offset;
    try {
      if (tryNative(() => fileOps.zeroRange(this.fd, at, length))) return;
    } catch (e) {
      throw this.#ioError('zero', offset, e);
    }
    // Neither the file system nor the device zeroes natively: write zeros.
    const zero = (zeroChunk ??= Buffer.alloc(ZERO_CHUNK));
    for (let done = 0; done < length; ) {
      const n = Math.min(zero.length, length - done);
      try {
        await writeFully(this.fd, zero, 0, n, at + done);
      } catch (e) {
        throw this.#ioError('zero', offset + done, e);
      }
      done += n;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await callVoid((cb) => fs.close(this.fd, cb));
      if (this.syncFd >= 0) await callVoid((cb) => fs.close(this.syncFd, cb));
    } catch (e) {
      throw this.#ioError('close', -1, e);
    }
  }

  #check(op: ContainerOp, offset: number, length: number): void {
    if (this.#closed) throw new ContainerIoError(op, this.path, offset, 'EBADF', 'container is closed');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.dataSize) {
      throw new ContainerIoError(op, this.path, offset, 'ERANGE', `${length} bytes beyond the data area of ${this.dataSize} bytes`);
    }
  }

  #checkWritable(op: ContainerOp, offset: number): void {
    if (this.readOnly) throw new ContainerIoError(op, this.path, offset, 'EROFS', 'container opened read-only');
  }

  #ioError(op: ContainerOp, offset: number, e: unknown): ContainerIoError {
    if (e instanceof ShortReadError) {
      return new ContainerIoError(op, this.path, offset + e.done, 'SHORT', e.message);
    }
    const at = e instanceof PartialIoError && offset >= 0 ? offset + e.done : offset;
    return new ContainerIoError(op, this.path, at, errnoName(e), (e as Error).message);
  }
}

/** Opens a container driver for a path (files and block devices today). */
export function openContainer(path: string, opts: FileDriverOptions = {}): Promise<FileContainerDriver> {
  return FileContainerDriver.open(path, opts);
}
