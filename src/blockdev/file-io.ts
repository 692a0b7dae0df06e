// Positioned I/O on raw descriptors, shared by the file driver, init and
// scan: callback fs calls wrapped once (cheaper than FileHandle promises on
// the hot path), with the short read/write loops every caller needs.
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { fileOps } from '../native/fileops.js';

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

export type ContainerMedium = 'file' | 'block';

/** Kind and byte size of an open regular file or block device; throws for anything else. */
export async function sizeOf(fd: number, path: string): Promise<{ medium: ContainerMedium; size: number }> {
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
