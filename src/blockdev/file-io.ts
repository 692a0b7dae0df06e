// Positioned I/O on a regular file or a Linux block device: the one
// implementation of file I/O under both `tabula target`'s file device
// (file-device.ts) and the agent's container driver and tools
// (src/container/). Raw descriptors with callback fs calls wrapped once
// (cheaper than FileHandle promises on the hot path), the short read/write
// loops every caller needs, the fallocate-style native calls with their
// fallbacks, and errno names.
//
// OpenFile is what both devices hold: FUA writes go through a second O_DSYNC
// descriptor (one thread-pool round trip instead of write + fdatasync,
// measured on ext4: 0.3-0.9 ms vs 0.5-1.9 ms per 4 KiB FUA write), and small
// reads and buffered writes run inline while they are fast (inline-policy.ts).
//
// Direct mode (O_DIRECT) is for a device that agents on several hosts reach
// (a SAN LUN): no page cache may serve one host data another has overwritten.
// Every transfer then goes through block-aligned memory at aligned offsets
// (aligned-buffers.ts): a caller's unaligned buffer is copied through a
// bounce buffer, and a write that covers part of a block is a read-modify-
// write of the blocks it touches, serialised against overlapping writes
// (RangeLock) so that no concurrent write to the rest of the block is lost.
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { fileOps } from '../native/fileops.js';
import { log } from '../util/log.js';
import { AlignedBufferPool, MAX_ALIGNMENT, alignedBuffer, canAlign, isAligned } from './aligned-buffers.js';
import { InlinePolicy } from './inline-policy.js';

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

export function call<T>(fn: (cb: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
}

export function callVoid(fn: (cb: (err: NodeJS.ErrnoException | null) => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => fn((err) => (err ? reject(err) : resolve())));
}

function readAt(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

function writeAt(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Thrown by readFully when the file ends first; `done` bytes were read. */
export class ShortReadError extends Error {
  constructor(readonly done: number) {
    super(`unexpected end of file after ${done} bytes`);
    this.name = 'ShortReadError';
  }
}

/** An I/O error with the number of bytes that completed before it. */
export class PartialIoError extends Error {
  constructor(
    readonly error: NodeJS.ErrnoException,
    readonly done: number,
  ) {
    super(error.message);
    this.name = 'PartialIoError';
  }
}

/** Reads exactly `len` bytes at `pos` into buf[off..]; short reads loop, EOF throws ShortReadError. */
export async function readFully(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0;
  while (done < len) {
    let n: number;
    try {
      n = await readAt(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new PartialIoError(e as NodeJS.ErrnoException, done);
    }
    if (n === 0) throw new ShortReadError(done);
    done += n;
  }
}

/** Writes exactly `len` bytes of buf[off..] at `pos`; short writes loop. */
export async function writeFully(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0;
  while (done < len) {
    try {
      done += await writeAt(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new PartialIoError(e as NodeJS.ErrnoException, done);
    }
  }
}

/** readFully done on the calling thread (readSync): for page-cache hits, see InlinePolicy. */
export function readFullySync(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new PartialIoError(e as NodeJS.ErrnoException, done);
    }
    if (n === 0) throw new ShortReadError(done);
    done += n;
  }
}

/**
 * Direct mode: reads aligned [pos, pos+buf.length) into an aligned buffer
 * until at least `need` bytes are in or the file ends; the bytes read.
 */
async function readCovering(fd: number, buf: Buffer, pos: number, need: number): Promise<number> {
  let done = 0;
  while (done < need) {
    let n: number;
    try {
      n = await readAt(fd, buf, done, buf.length - done, pos + done);
    } catch (e) {
      throw new PartialIoError(e as NodeJS.ErrnoException, done);
    }
    done += n;
    // A short direct read is the end of the file: what follows cannot be read at an aligned offset.
    if (n === 0 || done < buf.length) break;
  }
  return done;
}

/** writeFully done on the calling thread (writeSync): for buffered writes, see InlinePolicy. */
export function writeFullySync(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    try {
      done += fs.writeSync(fd, buf, off + done, len - done, pos + done);
    } catch (e) {
      throw new PartialIoError(e as NodeJS.ErrnoException, done);
    }
  }
}

/** errno name of an fs or native-addon error (the addon reports a number only). */
export function errnoName(e: unknown): string {
  const err = (e instanceof PartialIoError ? e.error : e) as NodeJS.ErrnoException;
  if (typeof err?.code === 'string') return err.code;
  if (typeof err?.errno === 'number') return ERRNO_NAMES.get(Math.abs(err.errno)) ?? `errno ${err.errno}`;
  return 'EIO';
}

/** What an open path is: a regular file or a block device. */
export type FileMedium = 'file' | 'block';

/** Kind and byte size of an open regular file or block device; throws for anything else. */
export async function sizeOf(fd: number, path: string): Promise<{ medium: FileMedium; size: number }> {
  const st = await call<fs.Stats>((cb) => fs.fstat(fd, cb));
  if (st.isFile()) return { medium: 'file', size: st.size };
  if (st.isBlockDevice()) {
    // fstat reports 0 for block devices and SEEK_HOLE is EINVAL on them: seek to the end.
    return { medium: 'block', size: fileOps.seekEnd(fd, 0) };
  }
  throw new Error(`${path}: not a regular file or block device`);
}

const UNSUPPORTED_ERRNOS = new Set([
  osConstants.errno.EOPNOTSUPP,
  osConstants.errno.ENOTSUP,
  osConstants.errno.EINVAL,
  osConstants.errno.ENOSYS,
  osConstants.errno.ENODEV,
]);

/** Runs a native fallocate-style call; false when the file system or device does not support it. */
export function tryNative(fn: () => void): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    const code = (e as { errno?: number }).errno;
    if (code !== undefined && UNSUPPORTED_ERRNOS.has(Math.abs(code))) return false;
    throw e;
  }
}

/** Largest zero buffer written when a medium cannot zero a range natively. */
const ZERO_CHUNK = 1 << 20;
let zeroChunk: Buffer | undefined;
let directZeroChunk: Buffer | undefined;

export interface OpenFileOptions {
  readOnly?: boolean;
  /** Create a missing file (O_CREAT, mode 0644). */
  create?: boolean;
  /** Largest read or buffered write done inline while fast (default INLINE_MAX_BYTES; 0: always the thread pool). */
  inlineMaxBytes?: number;
  /**
   * O_DIRECT: bypass the page cache (a device shared by several hosts). Falls
   * back to buffered I/O, with a warning, where the file system refuses it.
   */
  direct?: boolean;
  /** Direct mode's alignment in bytes (a power of two); default what the kernel reports, at least 512, else 4096. */
  directAlignment?: number;
}

/** Errors of open(O_DIRECT) that mean "this file system does not do direct I/O". */
const NO_DIRECT_ERRNOS = new Set(['EINVAL', 'EOPNOTSUPP', 'ENOTSUP']);

/** Direct mode's alignment for fd: the kernel's dio alignment, else a block device's logical block size, else 4096 (safe everywhere). */
export function directAlignmentOf(fd: number): number {
  const a = fileOps.dioAlignment(fd);
  const reported = Math.max(a.offset, a.memory, a.logicalBlock);
  return reported > 0 ? Math.max(512, reported) : 4096;
}

interface RangeHold {
  start: number;
  end: number;
  /** A read-modify-write: excludes every overlapping write, not only other RMWs. */
  rmw: boolean;
  done: Promise<void>;
}

/**
 * In-flight writes of a direct-mode file by byte range. An aligned write
 * waits only for overlapping read-modify-writes; a read-modify-write waits
 * for every overlapping write, so the bytes it reads back and rewrites are
 * not stale. Writes overlapping each other are the caller's to order, as on
 * any block device.
 */
export class RangeLock {
  readonly #held: RangeHold[] = [];

  get size(): number {
    return this.#held.length;
  }

  async acquire(start: number, end: number, rmw: boolean): Promise<() => void> {
    for (;;) {
      const blocker = this.#held.find((h) => h.start < end && start < h.end && (rmw || h.rmw));
      if (blocker === undefined) break;
      await blocker.done;
    }
    let release!: () => void;
    const hold: RangeHold = { start, end, rmw, done: new Promise<void>((r) => (release = r)) };
    this.#held.push(hold);
    return () => {
      const i = this.#held.indexOf(hold);
      if (i >= 0) this.#held.splice(i, 1);
      release();
    };
  }
}

/**
 * An open regular file or block device. Offsets are bytes from the start of
 * the file; failures are the fs or addon error, or PartialIoError /
 * ShortReadError saying how many bytes completed first: callers turn them
 * into their own error types.
 *
 * read and write return undefined when the I/O was done inline, and a promise
 * only when it went to the thread pool: a page-cache hit then costs its caller
 * no promise and no microtask.
 */
export class OpenFile {
  readonly #inline: InlinePolicy;
  /** Direct mode only: bounce buffers and the in-flight write ranges. */
  readonly #pool: AlignedBufferPool | null;
  readonly #writes = new RangeLock();

  private constructor(
    readonly path: string,
    private readonly fd: number,
    /** O_DSYNC descriptor for FUA writes; -1 when read-only. */
    private readonly syncFd: number,
    readonly readOnly: boolean,
    inlineMaxBytes: number | undefined,
    /** Alignment of direct I/O in bytes; 0 when buffered. */
    readonly alignment: number,
  ) {
    // Direct reads and writes wait for the device: never on the event loop.
    this.#inline = new InlinePolicy(alignment > 0 ? 0 : inlineMaxBytes);
    this.#pool = alignment > 0 ? new AlignedBufferPool(alignment) : null;
  }

  /** Opened with O_DIRECT (false also when direct mode was asked for but the file system refused it). */
  get direct(): boolean {
    return this.alignment > 0;
  }

  /**
   * Opens `path` (and its O_DSYNC descriptor unless read-only); throws the fs
   * error. With `direct`, both descriptors are O_DIRECT where the file system
   * allows it, else buffered with a warning naming the file.
   */
  static async open(path: string, opts: OpenFileOptions = {}): Promise<OpenFile> {
    const readOnly = opts.readOnly ?? false;
    const { O_RDWR, O_RDONLY, O_CREAT, O_DSYNC, O_DIRECT } = fs.constants;
    const flags = readOnly ? O_RDONLY : O_RDWR | (opts.create === true ? O_CREAT : 0);
    let direct = opts.direct === true;
    if (direct && !canAlign()) {
      log.warn(`${path}: O_DIRECT asked for, but the fileops addon is an older build without aligned buffers (npm run build): using buffered I/O`);
      direct = false;
    }
    let fd: number;
    if (direct) {
      try {
        fd = await call<number>((cb) => fs.open(path, flags | O_DIRECT, 0o644, cb));
      } catch (e) {
        if (!NO_DIRECT_ERRNOS.has(errnoName(e))) throw e;
        log.warn(
          `${path}: the file system refuses O_DIRECT (${errnoName(e)}); using buffered I/O, which is safe only while every agent reaching it shares this host's page cache`,
        );
        direct = false;
        fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
      }
    } else {
      fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
    }
    let syncFd = -1;
    let alignment = 0;
    try {
      if (direct) {
        alignment = opts.directAlignment ?? directAlignmentOf(fd);
        if (alignment < 512 || alignment > MAX_ALIGNMENT || (alignment & (alignment - 1)) !== 0) {
          throw new Error(`${path}: direct I/O alignment ${alignment} is not a power of two from 512 to ${MAX_ALIGNMENT}`);
        }
      }
      if (!readOnly) syncFd = await call<number>((cb) => fs.open(path, O_RDWR | O_DSYNC | (direct ? O_DIRECT : 0), cb));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    if (direct) log.info(`${path}: opened with O_DIRECT, ${alignment}-byte alignment`);
    return new OpenFile(path, fd, syncFd, readOnly, opts.inlineMaxBytes, alignment);
  }

  /** A buffer `read` fills without a bounce copy when offset and length are aligned (direct mode), else a plain one. */
  allocReadBuffer(length: number): Buffer {
    return this.alignment > 0 ? alignedBuffer(length, this.alignment) : Buffer.allocUnsafe(length);
  }

  /** Kind and byte size; throws for anything but a regular file or block device. */
  stat(): Promise<{ medium: FileMedium; size: number }> {
    return sizeOf(this.fd, this.path);
  }

  /** Sets a regular file's size (ftruncate). */
  truncate(size: number): Promise<void> {
    return callVoid((cb) => fs.ftruncate(this.fd, size, cb));
  }

  /** Reads exactly `len` bytes at `pos` into buf[off..]: inline (undefined) while fast, else through the thread pool. */
  read(buf: Buffer, off: number, len: number, pos: number): Promise<void> | undefined {
    if (this.#pool !== null) return this.#readDirect(this.#pool, buf, off, len, pos);
    if (this.#inline.allows(len)) {
      this.readNow(buf, off, len, pos);
      return undefined;
    }
    return readFully(this.fd, buf, off, len, pos);
  }

  /** Whether a read or buffered write of `len` bytes would run inline now (readNow/writeNow may be used). */
  inlineNow(len: number): boolean {
    return this.#pool === null && this.#inline.allows(len);
  }

  /** read() done inline; only after inlineNow(len) said so in the same turn. */
  readNow(buf: Buffer, off: number, len: number, pos: number): void {
    const t0 = this.#inline.start();
    readFullySync(this.fd, buf, off, len, pos);
    this.#inline.took(t0);
  }

  /** A buffered (not FUA) write() done inline; only after inlineNow(len) said so in the same turn. */
  writeNow(buf: Buffer, off: number, len: number, pos: number): void {
    const t0 = this.#inline.start();
    writeFullySync(this.fd, buf, off, len, pos);
    this.#inline.took(t0);
  }

  /** Writes exactly `len` bytes of buf[off..] at `pos`; FUA ones through the O_DSYNC descriptor, never inline (they wait for the medium). */
  write(buf: Buffer, off: number, len: number, pos: number, fua: boolean): Promise<void> | undefined {
    if (this.#pool !== null) return this.#writeDirect(this.#pool, buf, off, len, pos, fua);
    if (!fua && this.#inline.allows(len)) {
      this.writeNow(buf, off, len, pos);
      return undefined;
    }
    return writeFully(fua ? this.syncFd : this.fd, buf, off, len, pos);
  }

  /** Makes every completed write durable (fdatasync). */
  flush(): Promise<void> {
    return callVoid((cb) => fs.fdatasync(this.fd, cb));
  }

  /**
   * Makes [pos, pos+len) read as zeros: punches a hole when `deallocate`
   * (on a block device, a zeroing discard, Linux >= 4.9), else zeroes the range
   * natively, else writes zeros (a thick fallback is still correct).
   */
  async zero(pos: number, len: number, deallocate: boolean): Promise<void> {
    if (len === 0) return;
    if (deallocate && tryNative(() => fileOps.punchHole(this.fd, pos, len))) return;
    if (tryNative(() => fileOps.zeroRange(this.fd, pos, len))) return;
    // An aligned chunk spares direct mode a bounce copy per chunk.
    const zero = this.#pool !== null ? (directZeroChunk ??= alignedBuffer(ZERO_CHUNK, MAX_ALIGNMENT).fill(0)) : (zeroChunk ??= Buffer.alloc(ZERO_CHUNK));
    for (let done = 0; done < len; ) {
      const n = Math.min(zero.length, len - done);
      try {
        await this.write(zero, 0, n, pos + done, false);
      } catch (e) {
        // Count what the earlier chunks completed too.
        throw e instanceof PartialIoError ? new PartialIoError(e.error, done + e.done) : new PartialIoError(e as NodeJS.ErrnoException, done);
      }
      done += n;
    }
  }

  /** The aligned span [start, end) that covers [pos, pos+len). */
  #span(pos: number, len: number): { start: number; end: number } {
    const a = this.alignment;
    return { start: Math.floor(pos / a) * a, end: Math.ceil((pos + len) / a) * a };
  }

  async #readDirect(pool: AlignedBufferPool, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
    if (len === 0) return;
    const { start, end } = this.#span(pos, len);
    if (start === pos && end === pos + len && isAligned(buf.subarray(off), this.alignment)) return readFully(this.fd, buf, off, len, pos);
    const bounce = pool.take(end - start);
    try {
      const got = await readCovering(this.fd, bounce, start, pos + len - start);
      if (got < pos + len - start) throw new ShortReadError(Math.max(0, got - (pos - start)));
      bounce.copy(buf, off, pos - start, pos - start + len);
    } catch (e) {
      if (e instanceof PartialIoError) throw new PartialIoError(e.error, Math.max(0, e.done - (pos - start)));
      throw e;
    } finally {
      pool.give(bounce);
    }
  }

  async #writeDirect(pool: AlignedBufferPool, buf: Buffer, off: number, len: number, pos: number, fua: boolean): Promise<void> {
    if (len === 0) return;
    const fd = fua ? this.syncFd : this.fd;
    const { start, end } = this.#span(pos, len);
    const whole = start === pos && end === pos + len;
    const release = await this.#writes.acquire(start, end, !whole);
    let bounce: Buffer | undefined;
    try {
      if (whole && isAligned(buf.subarray(off), this.alignment)) return await writeFully(fd, buf, off, len, pos);
      bounce = pool.take(end - start);
      if (!whole) {
        // Read-modify-write of the blocks the write touches; past the end of the file reads as zeros.
        const got = await readCovering(this.fd, bounce, start, end - start);
        bounce.fill(0, got);
      }
      buf.copy(bounce, pos - start, off, off + len);
      try {
        await writeFully(fd, bounce, 0, end - start, start);
      } catch (e) {
        if (e instanceof PartialIoError) throw new PartialIoError(e.error, Math.min(len, Math.max(0, e.done - (pos - start))));
        throw e;
      }
    } finally {
      if (bounce !== undefined) pool.give(bounce);
      release();
    }
  }

  /** Next offset >= pos that holds data, or -1 (SEEK_DATA; throws where unsupported). */
  seekData(pos: number): number {
    return fileOps.seekData(this.fd, pos);
  }

  /** Next offset >= pos that is a hole, end of file included, or -1 (SEEK_HOLE). */
  seekHole(pos: number): number {
    return fileOps.seekHole(this.fd, pos);
  }

  async close(): Promise<void> {
    await callVoid((cb) => fs.close(this.fd, cb));
    if (this.syncFd >= 0) await callVoid((cb) => fs.close(this.syncFd, cb));
  }

  /** Closes both descriptors now: for an open that fails its checks. */
  closeSync(): void {
    fs.closeSync(this.fd);
    if (this.syncFd >= 0) fs.closeSync(this.syncFd);
  }
}
