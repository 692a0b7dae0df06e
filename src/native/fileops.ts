// Typed loader for the fileops native addon (built by node-gyp into build/Release).
import { createRequire } from 'node:module';

export interface FileOps {
  /** Deallocate [offset, offset+length); later reads return zeros. */
  punchHole(fd: number, offset: number, length: number): void;
  /** Zero [offset, offset+length) without writing data blocks. */
  zeroRange(fd: number, offset: number, length: number): void;
  /** Next offset >= offset that holds data, or -1 if none. */
  seekData(fd: number, offset: number): number;
  /** Next offset >= offset that is a hole (EOF counts as one), or -1. */
  seekHole(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_END): with offset 0, the size of a file or block device. */
  seekEnd(fd: number, offset: number): number;
  /** posix_fadvise(fd, offset, length, advice); length 0 means to the end of the file. */
  fadvise(fd: number, offset: number, length: number, advice: FileAdvice): void;
  /** The buffer's data address modulo `align` (a power of two): 0 when aligned. */
  misalignment(buf: Buffer, align: number): number;
  /** What direct I/O on fd needs (statx STATX_DIOALIGN; 0 when not reported) and a block device's logical block size (0 otherwise). */
  dioAlignment(fd: number): { memory: number; offset: number; logicalBlock: number };
}

/** POSIX_FADV_* values (Linux). */
export const enum FileAdvice {
  Normal = 0,
  Random = 1,
  Sequential = 2,
  WillNeed = 3,
  DontNeed = 4,
}

const require = createRequire(import.meta.url);

function load(): FileOps {
  // Works from src/native (tsx) and dist/src/native (compiled).
  const candidates = ['../../build/Release/fileops.node', '../../../build/Release/fileops.node'];
  const errors: string[] = [];
  for (const c of candidates) {
    try {
      return require(c) as FileOps;
    } catch (e) {
      errors.push(`${c}: ${(e as Error).message}`);
    }
  }
  throw new Error(`fileops native addon not built (run npm run build): ${errors.join('; ')}`);
}

export const fileOps: FileOps = load();
