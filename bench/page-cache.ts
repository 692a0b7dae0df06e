// Puts every backing file's page cache in the same state before the matrix.
//
// How a file's pages entered the cache changes what a 4 KiB write costs:
// pages filled by large writes or readahead sit in large folios, and a 4 KiB
// write then dirties (and later writes back) a whole folio. Measured on this
// kernel (6.18, ext4): 25-30 us per random 4 KiB pwrite into a file filled by
// 1 MiB writes, 4-6 us into the same data cached page by page. tgtd's and
// `tabula target`'s files are copies (copy_file_range fills the cache page by
// page) while the thick vdisk's container is filled through iSCSI with large
// writes, so without this step the comparison measured the kernel's folios,
// not the targets. Each file is synced, evicted, then read back in 4 KiB
// pages with readahead off (POSIX_FADV_RANDOM): the data regions only, so a
// sparse container costs nothing for its holes.
import { closeSync, fstatSync, fsyncSync, openSync, readSync } from 'node:fs';
import { FileAdvice, fileOps } from '../src/native/fileops.js';

const PAGE = 4096;

export interface NormalizeResult {
  path: string;
  bytesRead: number;
  seconds: number;
}

/** Syncs, evicts and re-reads `path` page by page; returns what it read. */
export function normalizePageCache(path: string): NormalizeResult {
  const t0 = process.hrtime.bigint();
  const fd = openSync(path, 'r');
  let bytesRead = 0;
  try {
    fsyncSync(fd); // dirty pages cannot be evicted
    fileOps.fadvise(fd, 0, 0, FileAdvice.DontNeed);
    fileOps.fadvise(fd, 0, 0, FileAdvice.Random);
    const size = fstatSync(fd).size;
    const buf = Buffer.allocUnsafe(PAGE);
    let off = 0;
    while (off < size) {
      const data = fileOps.seekData(fd, off);
      if (data === -1 || data >= size) break;
      let hole = fileOps.seekHole(fd, data);
      if (hole === -1 || hole > size) hole = size;
      for (let p = data - (data % PAGE); p < hole; p += PAGE) bytesRead += readSync(fd, buf, 0, PAGE, p);
      off = hole;
    }
  } finally {
    closeSync(fd);
  }
  return { path, bytesRead, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}
