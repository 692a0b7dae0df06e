// Per-segment admission for table installs (device-mapper suspend/resume, per
// segment rather than per device): counts the container I/O in flight on each
// segment in a typed array, and lets an install suspend a set of segments
// and wait until the I/O already in flight on them has drained. New I/O
// checks `isSuspended` and waits for the device's next table swap instead of
// entering. One suspension at a time: the device serializes installs.

export interface SegmentRange {
  first: number;
  count: number;
}

export class SegmentGate {
  #inflight: Uint32Array;
  #suspended: Uint8Array;
  /** Container I/O in flight on all segments: with none, a suspension need not scan. */
  #total = 0;
  /** Suspended segments that still have I/O in flight. */
  #draining = 0;
  #onDrained: (() => void) | null = null;
  #ranges: readonly SegmentRange[] = [];

  constructor(segmentCount: number) {
    this.#inflight = new Uint32Array(segmentCount);
    this.#suspended = new Uint8Array(segmentCount);
  }

  get capacity(): number {
    return this.#inflight.length;
  }

  /** Makes room for at least `segmentCount` segments, keeping the counters (tables grow). */
  ensure(segmentCount: number): void {
    if (segmentCount <= this.#inflight.length) return;
    const inflight = new Uint32Array(segmentCount);
    inflight.set(this.#inflight);
    const suspended = new Uint8Array(segmentCount);
    suspended.set(this.#suspended);
    this.#inflight = inflight;
    this.#suspended = suspended;
  }

  /** Hot path: call only when the segment is not suspended, then do the container I/O. */
  enter(seg: number): void {
    this.#inflight[seg]++;
    this.#total++;
  }

  /** Hot path: the container I/O that `enter` counted has completed (successfully or not). */
  leave(seg: number): void {
    this.#total--;
    const left = --this.#inflight[seg];
    if (left === 0 && this.#suspended[seg] === 1 && --this.#draining === 0) {
      const done = this.#onDrained;
      this.#onDrained = null;
      done?.();
    }
  }

  isSuspended(seg: number): boolean {
    return this.#suspended[seg] === 1;
  }

  inflight(seg: number): number {
    return this.#inflight[seg] ?? 0;
  }

  /** True while a suspension is in place. */
  get suspending(): boolean {
    return this.#ranges.length > 0;
  }

  /**
   * True when no suspension is in place and no I/O is in flight on any
   * segment of `ranges`: a table change there has nothing to drain, and made
   * synchronously (no I/O can enter meanwhile) it needs no suspension.
   * Segments beyond capacity have nothing in flight.
   */
  idle(ranges: readonly SegmentRange[]): boolean {
    if (this.suspending) return false;
    if (this.#total === 0) return true;
    const inflight = this.#inflight;
    for (const r of ranges) {
      const end = Math.min(r.first + r.count, inflight.length);
      for (let s = Math.max(r.first, 0); s < end; s++) if (inflight[s] !== 0) return false;
    }
    return true;
  }

  /**
   * Suspends the segments in `ranges` (inside capacity) and resolves once
   * every I/O in flight on them when this was called has completed. Ranges
   * may overlap.
   */
  suspend(ranges: readonly SegmentRange[]): Promise<void> {
    if (this.suspending) throw new Error('segment gate: a suspension is already in place');
    const suspended = this.#suspended;
    const inflight = this.#inflight;
    let draining = 0;
    for (const r of ranges) {
      const end = r.first + r.count;
      if (r.first < 0 || end > suspended.length) {
        throw new RangeError(`segment gate: segments ${r.first}+${r.count} beyond capacity ${suspended.length}`);
      }
      if (this.#total === 0) {
        // Nothing in flight anywhere (a fenced device's first install): no drain to count.
        suspended.fill(1, r.first, end);
        continue;
      }
      for (let s = r.first; s < end; s++) {
        if (suspended[s] === 1) continue;
        suspended[s] = 1;
        if (inflight[s] !== 0) draining++;
      }
    }
    this.#ranges = ranges.length > 0 ? ranges : [{ first: 0, count: 0 }];
    this.#draining = draining;
    if (draining === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.#onDrained = resolve;
    });
  }

  /** Lifts the suspension. Held I/O is woken by the device's swap broadcast, not here. */
  resume(): void {
    for (const r of this.#ranges) {
      this.#suspended.fill(0, r.first, Math.min(r.first + r.count, this.#suspended.length));
    }
    this.#ranges = [];
    this.#draining = 0;
    this.#onDrained = null;
  }
}
