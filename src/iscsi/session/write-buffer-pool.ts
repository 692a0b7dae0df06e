// Reuses the Data-Out buffers of large WRITEs. Each fresh buffer counts as V8
// external memory, and tens of MB of it trigger a full mark-compact: with a
// new 1 MiB buffer per command, 1 MiB sequential writes at depth 8 ran a
// mark-compact every ~15 commands (docs/performance.md). Only the data of
// commands whose handler hands the buffer back when it completes is pooled
// (ScsiPort.releasesDataOut: WRITE(10/12/16) in the command table); other
// commands' parameter data may be kept (e.g. a SANITIZE pattern).

export class WriteBufferPool {
  /** Free buffers by length (initiators use a few transfer sizes). */
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;

  constructor(
    /** Smaller buffers come from Node's own pool or are cheap enough to collect. */
    readonly minBytes: number,
    private readonly maxPooledBytes: number,
  ) {}

  take(length: number): Buffer {
    const list = this.free.get(length);
    const b = list?.pop();
    if (!b) return Buffer.allocUnsafe(length);
    this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    if (this.bytes + b.length > this.maxPooledBytes) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.bytes += b.length;
  }
}

/** One pool for every session of the process. */
export const writeBuffers = new WriteBufferPool(64 * 1024, 32 * 1024 * 1024);
