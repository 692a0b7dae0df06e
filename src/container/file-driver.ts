// Container driver for regular files and block devices.
//
// Buffered I/O by default: on one host every agent goes through the same
// page cache, so a read always sees the latest write and durability comes from
// FUA (a second O_DSYNC descriptor) and flush (fdatasync). A block device
// shared by agents on SEVERAL hosts (a SAN LUN) needs O_DIRECT instead, or one
// host's page cache serves data another host has overwritten
// (docs/architecture.md, "What the I/O path guarantees"): `direct: true` opens
// it so, every transfer through block-aligned buffers (file-io.ts, direct
// mode); the controller says which containers are shared.
//
// The file I/O itself (inline fast path, FUA descriptor, hole punching) is
// src/blockdev/file-io.ts, the same code as `tabula target`'s file device;
// this file adds the label, the data area and ContainerIoError.
import { OpenFile, PartialIoError, ShortReadError, errnoName, type FileMedium } from '../blockdev/file-io.js';
import { MAX_PIECE_BYTES, readBuffer } from '../blockdev/read-buffers.js';
import { ContainerIoError, checkContainerIo, checkContainerWritable, type ContainerDriver, type ContainerOp, type ContainerWriteOptions } from './driver.js';
import { LABEL_SIZE, LabelError, dataAreaSize, decodeLabel, type ContainerLabel } from './label.js';

export interface FileDriverOptions {
  readOnly?: boolean;
  /** Largest read or buffered write done inline while fast (default INLINE_MAX_BYTES; 0: always the thread pool). */
  inlineMaxBytes?: number;
  /** O_DIRECT with aligned buffers: a container that agents on several hosts reach (falls back to buffered, with a warning, where unsupported). */
  direct?: boolean;
  /** Direct mode's alignment in bytes (default: what the kernel reports, at least 512, else 4096). */
  directAlignment?: number;
}

export class FileContainerDriver implements ContainerDriver {
  #closed = false;
  readonly dataSize: number;
  readonly #base: number;

  private constructor(
    readonly kind: FileMedium,
    readonly path: string,
    readonly label: ContainerLabel,
    private readonly file: OpenFile,
    readonly readOnly: boolean,
  ) {
    this.dataSize = dataAreaSize(label);
    this.#base = label.dataOffset;
  }

  get id(): string {
    return this.label.id;
  }

  /** Opened with O_DIRECT (false when buffered, also when direct was asked for and refused by the file system). */
  get direct(): boolean {
    return this.file.direct;
  }

  /**
   * Opens a labelled container. Throws LabelError when the label is missing,
   * damaged, or says the container is larger than the file or device
   * (kind 'truncated'), and ContainerIoError when it cannot be opened or read.
   */
  static async open(path: string, opts: FileDriverOptions = {}): Promise<FileContainerDriver> {
    const readOnly = opts.readOnly ?? false;
    let file: OpenFile;
    try {
      file = await OpenFile.open(path, { readOnly, inlineMaxBytes: opts.inlineMaxBytes, direct: opts.direct, directAlignment: opts.directAlignment });
    } catch (e) {
      throw new ContainerIoError('open', path, -1, errnoName(e), (e as Error).message);
    }
    try {
      const { medium, size } = await file.stat();
      const block = Buffer.alloc(Math.min(LABEL_SIZE, size));
      try {
        await file.read(block, 0, block.length, 0);
      } catch (e) {
        throw new ContainerIoError('read', path, -1, errnoName(e), `reading the label: ${(e as Error).message}`);
      }
      const label = decodeLabel(block, path);
      if (size < label.size) {
        throw new LabelError('truncated', `label says ${label.size} bytes but the ${medium === 'block' ? 'device' : 'file'} has ${size}`, path);
      }
      return new FileContainerDriver(medium, path, label, file, readOnly);
    } catch (e) {
      file.closeSync();
      throw e;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    // Direct mode: a large read lands in aligned memory (no bounce copy); a small one copies less than it would allocate.
    const buf = this.file.direct && length > MAX_PIECE_BYTES ? this.file.allocReadBuffer(length) : readBuffer(length);
    await this.readInto(offset, buf, 0, length);
    return buf;
  }

  async readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void> {
    this.#check('read', offset, length);
    if (targetOffset < 0 || targetOffset + length > target.length) {
      throw new RangeError(`read ${this.path} offset ${offset}: ${length} bytes do not fit the buffer at ${targetOffset}`);
    }
    try {
      const pending = this.file.read(target, targetOffset, length, this.#base + offset);
      if (pending !== undefined) await pending;
    } catch (e) {
      throw this.#ioError('read', offset, e);
    }
  }

  readIntoNow(offset: number, target: Buffer, targetOffset: number, length: number): boolean {
    this.#check('read', offset, length);
    if (targetOffset < 0 || targetOffset + length > target.length) {
      throw new RangeError(`read ${this.path} offset ${offset}: ${length} bytes do not fit the buffer at ${targetOffset}`);
    }
    if (!this.file.inlineNow(length)) return false;
    try {
      this.file.readNow(target, targetOffset, length, this.#base + offset);
    } catch (e) {
      throw this.#ioError('read', offset, e);
    }
    return true;
  }

  writeNow(offset: number, data: Buffer): boolean {
    this.#checkWritable('write', offset);
    this.#check('write', offset, data.length);
    if (!this.file.inlineNow(data.length)) return false;
    try {
      this.file.writeNow(data, 0, data.length, this.#base + offset);
    } catch (e) {
      throw this.#ioError('write', offset, e);
    }
    return true;
  }

  async write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void> {
    this.#checkWritable('write', offset);
    this.#check('write', offset, data.length);
    try {
      const pending = this.file.write(data, 0, data.length, this.#base + offset, opts?.fua === true);
      if (pending !== undefined) await pending;
    } catch (e) {
      throw this.#ioError('write', offset, e);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.#closed) return;
    try {
      await this.file.flush();
    } catch (e) {
      throw this.#ioError('flush', -1, e);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#checkWritable('discard', offset);
    this.#check('discard', offset, length);
    try {
      await this.file.zero(this.#base + offset, length, true);
    } catch (e) {
      throw this.#ioError('discard', offset, e);
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#checkWritable('zero', offset);
    this.#check('zero', offset, length);
    try {
      await this.file.zero(this.#base + offset, length, false);
    } catch (e) {
      throw this.#ioError('zero', offset, e);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.file.close();
    } catch (e) {
      throw this.#ioError('close', -1, e);
    }
  }

  #check(op: ContainerOp, offset: number, length: number): void {
    checkContainerIo(this, this.#closed, op, offset, length);
  }

  #checkWritable(op: ContainerOp, offset: number): void {
    checkContainerWritable(this, this.readOnly, op, offset);
  }

  #ioError(op: ContainerOp, offset: number, e: unknown): ContainerIoError {
    if (e instanceof ShortReadError) {
      return new ContainerIoError(op, this.path, offset + e.done, 'SHORT', e.message);
    }
    const at = e instanceof PartialIoError && offset >= 0 ? offset + e.done : offset;
    return new ContainerIoError(op, this.path, at, errnoName(e), (e as Error).message);
  }
}

/** Opens a container driver for a path (files and block devices); `{ direct: true }` for one shared across hosts. */
export function openContainer(path: string, opts: FileDriverOptions = {}): Promise<FileContainerDriver> {
  return FileContainerDriver.open(path, opts);
}
