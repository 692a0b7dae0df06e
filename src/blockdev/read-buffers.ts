// Buffers that READ data is read into and then handed to the socket. A 4 KiB
// Buffer.allocUnsafe is not served from Node's 8 KiB pool (only pieces under
// 4 KiB are), so every small READ created its own ArrayBuffer: a backing-store
// allocation, and external memory that sets off extra garbage collections.
// Without them 4 KiB random reads at depth 32 take ~20% less CPU per I/O
// (docs/performance.md, "What each optimisation bought"). Small reads are carved from a
// shared slab instead, the way Node's pool works: a piece is never handed out
// twice, and a slab is freed by the GC once none of its pieces is referenced,
// so nothing has to be given back and a slow socket write cannot see its data
// reused.

/** Bytes per slab. */
export const SLAB_BYTES = 256 * 1024;
/** Largest piece carved from a slab; larger reads get their own buffer (a slab holds at least 16). */
export const MAX_PIECE_BYTES = 16 * 1024;

let slab: Buffer | null = null;
let used = 0;

/** An uninitialised buffer of `length` bytes for data about to be read into it. */
export function readBuffer(length: number): Buffer {
  if (length > MAX_PIECE_BYTES || length === 0) return Buffer.allocUnsafe(length);
  if (slab === null || used + length > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    used = 0;
  }
  const piece = slab.subarray(used, used + length);
  // Keep every piece 8-byte aligned, as Node's pool does.
  used += (length + 7) & ~7;
  return piece;
}
