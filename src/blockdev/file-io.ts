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
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { fileOps } from '../native/fileops.js';
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

export interface OpenFileOptions {
  readOnly?: boolean;
  /** Create a missing file (O_CREAT, mode 0644). */
  create?: boolean;
  /** Largest read or buffered write done inline while fast (default INLINE_MAX_BYTES; 0: always the thread pool). */
  inlineMaxBytes?: number;
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

  private constructor(
    readonly path: string,
    private readonly fd: number,
    /** O_DSYNC descriptor for FUA writes; -1 when read-only. */
    private readonly syncFd: number,
    readonly readOnly: boolean,
    inlineMaxBytes: number | undefined,
  ) {
    this.#inline = new InlinePolicy(inlineMaxBytes);
  }

  /** Opens `path` (and its O_DSYNC descriptor unless read-only); throws the fs error. */
  static async open(path: string, opts: OpenFileOptions = {}): Promise<OpenFile> {
    const readOnly = opts.readOnly ?? false;
    const { O_RDWR, O_RDONLY, O_CREAT, O_DSYNC } = fs.constants;
    const flags = readOnly ? O_RDONLY : O_RDWR | (opts.create === true ? O_CREAT : 0);
    const fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
    let syncFd = -1;
    try {
      if (!readOnly) syncFd = await call<number>((cb) => fs.open(path, O_RDWR | O_DSYNC, cb));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return new OpenFile(path, fd, syncFd, readOnly, opts.inlineMaxBytes);
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
    if (this.#inline.allows(len)) {
      const t0 = this.#inline.start();
      readFullySync(this.fd, buf, off, len, pos);
      this.#inline.took(t0);
      return undefined;
    }
    return readFully(this.fd, buf, off, len, pos);
  }

  /** Writes exactly `len` bytes of buf[off..] at `pos`; FUA ones through the O_DSYNC descriptor, never inline (they wait for the medium). */
  write(buf: Buffer, off: number, len: number, pos: number, fua: boolean): Promise<void> | undefined {
    if (!fua && this.#inline.allows(len)) {
      const t0 = this.#inline.start();
      writeFullySync(this.fd, buf, off, len, pos);
      this.#inline.took(t0);
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
    const zero = (zeroChunk ??= Buffer.alloc(ZERO_CHUNK));
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
