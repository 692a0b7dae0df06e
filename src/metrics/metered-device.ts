// The agent's per-vdisk I/O counts: a thin wrapper around the device the
// agent builds for each export, so every LUN is counted in one place and the
// device itself knows nothing of metrics. The hot path bumps plain numbers
// on an object resolved when the device was made (no label lookups, no
// per-I/O objects); they become Prometheus samples only at scrape time.
import { BlockDeviceError, type ProvisioningStatus, type WriteOptions } from '../blockdev/block-device.js';
import type { AgentDevice } from '../agent/device-port.js';
import type { MappingTable, TableDelta } from '../table/index.js';

/** Counts of one vdisk on this agent since its device was made. */
export class VdiskIoStats {
  readIos = 0;
  readBytes = 0;
  writeIos = 0;
  writeBytes = 0;
  /** UNMAP and WRITE SAME with UNMAP; bytes deallocated. */
  unmapIos = 0;
  unmapBytes = 0;
  flushes = 0;
  /** Failed I/Os by BlockErrorKind ('other' for anything else). Rare: a Map is fine. */
  readonly errors = new Map<string, number>();

  constructor(
    readonly vdiskId: string,
    /** The vdisk's name: the `vdisk` label. */
    readonly vdisk: string,
  ) {}

  noteError(err: unknown): void {
    const kind = err instanceof BlockDeviceError ? err.kind : 'other';
    this.errors.set(kind, (this.errors.get(kind) ?? 0) + 1);
  }
}

/** An AgentDevice that counts what passes through it into `stats`. */
export class MeteredDevice implements AgentDevice {
  readonly #inner: AgentDevice;
  readonly #stats: VdiskIoStats;
  readonly #onClose: () => void;
  /** Made once: the hot path passes it to catch() without allocating a closure. */
  readonly #failed: (err: unknown) => never;
  readonly blockSize: number;
  readonly thin: boolean;
  /** Present when the inner device has it (counted as a read and a write). */
  readonly compareAndWrite?: (lba: number, verify: Buffer, data: Buffer, opts?: WriteOptions) => Promise<number>;

  constructor(inner: AgentDevice, stats: VdiskIoStats, onClose: () => void) {
    this.#inner = inner;
    this.#stats = stats;
    this.#onClose = onClose;
    this.blockSize = inner.blockSize;
    this.thin = inner.thin;
    this.#failed = (err: unknown): never => {
      stats.noteError(err);
      throw err;
    };
    const caw = inner.compareAndWrite;
    if (caw !== undefined) {
      this.compareAndWrite = (lba, verify, data, opts) => {
        stats.readIos++;
        stats.readBytes += verify.length;
        stats.writeIos++;
        stats.writeBytes += data.length;
        return caw.call(inner, lba, verify, data, opts).catch(this.#failed);
      };
    }
  }

  get blockCount(): number {
    return this.#inner.blockCount;
  }

  get version(): number {
    return this.#inner.version;
  }

  get fenced(): boolean {
    return this.#inner.fenced;
  }

  get heldCount(): number {
    return this.#inner.heldCount;
  }

  setSharing(exporters: number, ownerId: number): void {
    this.#inner.setSharing?.(exporters, ownerId);
  }

  read(lba: number, blocks: number): Promise<Buffer> {
    const s = this.#stats;
    s.readIos++;
    s.readBytes += blocks * this.blockSize;
    return this.#inner.read(lba, blocks).catch(this.#failed);
  }

  write(lba: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    const s = this.#stats;
    s.writeIos++;
    s.writeBytes += data.length;
    return this.#inner.write(lba, data, opts).catch(this.#failed);
  }

  flush(): Promise<void> {
    this.#stats.flushes++;
    return this.#inner.flush().catch(this.#failed);
  }

  unmap(lba: number, blocks: number): Promise<void> {
    const s = this.#stats;
    s.unmapIos++;
    s.unmapBytes += blocks * this.blockSize;
    return this.#inner.unmap(lba, blocks).catch(this.#failed);
  }

  /** With `deallocate` it counts as an unmap, else as a write (of zeros). */
  writeZeroes(lba: number, blocks: number, deallocate: boolean): Promise<void> {
    const s = this.#stats;
    if (deallocate) {
      s.unmapIos++;
      s.unmapBytes += blocks * this.blockSize;
    } else {
      s.writeIos++;
      s.writeBytes += blocks * this.blockSize;
    }
    return this.#inner.writeZeroes(lba, blocks, deallocate).catch(this.#failed);
  }

  provisioning(lba: number, maxBlocks: number): Promise<ProvisioningStatus> {
    return this.#inner.provisioning(lba, maxBlocks);
  }

  installTable(table: MappingTable): Promise<void> {
    return this.#inner.installTable(table);
  }

  applyDelta(delta: TableDelta): Promise<void> {
    return this.#inner.applyDelta(delta);
  }

  fence(): void {
    this.#inner.fence();
  }

  close(): Promise<void> {
    this.#onClose();
    return this.#inner.close();
  }
}
