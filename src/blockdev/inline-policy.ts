// When to do small positioned I/O inline (readSync/writeSync on the event
// loop) instead of through libuv's thread pool. A page-cache hit costs a few
// microseconds inline, against a thread-pool round trip of two context
// switches and ~35 us of CPU (measured under qemu-img 4 KiB random I/O at
// depth 32: 68 -> 22 us of target CPU per read, 64 -> 26 per write;
// docs/performance.md). SLOW_STREAK inline calls in a row slower than
// SLOW_MS mean the medium itself is being waited for (one slow call alone is
// more often the thread being preempted on a busy machine), so I/O goes
// through the thread pool for the next BACKOFF_MS: a disk holds the event
// loop for at most a few accesses per window. Used by OpenFile (file-io.ts),
// under both `tabula target`'s file device and the agent's container driver.
import { performance } from 'node:perf_hooks';

export const INLINE_MAX_BYTES = 64 * 1024;
const SLOW_MS = 0.2;
const SLOW_STREAK = 3;
const BACKOFF_MS = 50;

export class InlinePolicy {
  /** performance.now() until which I/O avoids the inline path (a recent inline call was slow). */
  #after = 0;
  /** Consecutive slow inline calls. */
  #slowStreak = 0;

  /** @param maxBytes largest transfer done inline (0: never inline). */
  constructor(readonly maxBytes: number = INLINE_MAX_BYTES) {}

  /** Whether an I/O of `len` bytes may run inline now. */
  allows(len: number): boolean {
    if (len > this.maxBytes) return false;
    if (this.#after !== 0) {
      if (performance.now() < this.#after) return false;
      this.#after = 0;
    }
    return true;
  }

  /** Start time for took(). */
  start(): number {
    return performance.now();
  }

  /** Records how long an inline call that began at `start` took; a slow streak starts a back-off window. */
  took(start: number): void {
    const end = performance.now();
    if (end - start <= SLOW_MS) {
      this.#slowStreak = 0;
    } else if (++this.#slowStreak >= SLOW_STREAK) {
      this.#slowStreak = 0;
      this.#after = end + BACKOFF_MS;
    }
  }

  /** True while a back-off window is open (for tests and metrics). */
  get backingOff(): boolean {
    return this.#after !== 0 && performance.now() < this.#after;
  }
}
