// Block-aligned memory for O_DIRECT (file-io.ts, direct mode). Direct I/O
// wants the buffer's address, the file offset and the length all multiples
// of the device's alignment, and Node has no aligned allocator: a buffer is
// over-allocated by one alignment and the aligned piece taken, its address
// read through the fileops addon. Bounce buffers (a caller's unaligned data
// copied in or out) live only for one I/O, so they are pooled by size class
// rather than allocated per I/O.
import { fileOps } from '../native/fileops.js';

/** Largest alignment honoured (direct I/O never asks for more than a page in practice). */
export const MAX_ALIGNMENT = 64 * 1024;

/** The addon of an older build lacks `misalignment`: direct I/O is then not available. */
export function canAlign(): boolean {
  return typeof (fileOps as Partial<typeof fileOps>).misalignment === 'function';
}

/** True when buf's first byte sits at a multiple of `align` (a power of two). */
export function isAligned(buf: Buffer, align: number): boolean {
  return fileOps.misalignment(buf, align) === 0;
}

/** A fresh buffer of `size` bytes (uninitialised) whose address is a multiple of `align`. */
export function alignedBuffer(size: number, align: number): Buffer {
  const raw = Buffer.allocUnsafeSlow(size + align);
  const shift = (align - fileOps.misalignment(raw, align)) % align;
  return raw.subarray(shift, shift + size);
}

/** Size classes are powers of two; larger transfers than this are not kept. */
const MAX_POOLED = 4 * 1024 * 1024;
/** Free buffers kept per class: enough for a queue of 32 small or 8 large I/Os. */
const keepFor = (size: number): number => (size <= 64 * 1024 ? 64 : 8);

/**
 * Aligned bounce buffers for one alignment. `take` hands out a buffer of
 * exactly `size` bytes (a view of a power-of-two class), `give` takes it back
 * once the I/O is over; a buffer not given back is left to the GC.
 */
export class AlignedBufferPool {
  readonly #free = new Map<number, Buffer[]>();

  constructor(readonly align: number) {
    if (align <= 0 || (align & (align - 1)) !== 0 || align > MAX_ALIGNMENT) throw new RangeError(`alignment ${align} is not a power of two up to ${MAX_ALIGNMENT}`);
  }

  static classOf(size: number, align: number): number {
    let c = align;
    while (c < size) c *= 2;
    return c;
  }

  take(size: number): Buffer {
    const cls = AlignedBufferPool.classOf(size, this.align);
    if (cls > MAX_POOLED) return alignedBuffer(size, this.align);
    const whole = this.#free.get(cls)?.pop() ?? alignedBuffer(cls, this.align);
    return whole.subarray(0, size);
  }

  give(buf: Buffer): void {
    const cls = AlignedBufferPool.classOf(buf.length, this.align);
    if (cls > MAX_POOLED) return;
    // The view starts where its class buffer starts (take() hands out a prefix).
    const whole = Buffer.from(buf.buffer, buf.byteOffset, cls);
    let list = this.#free.get(cls);
    if (list === undefined) this.#free.set(cls, (list = []));
    if (list.length < keepFor(cls)) list.push(whole);
  }
}
