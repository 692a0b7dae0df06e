// The container driver interface (after tcmu-runner's handler): what the agent
// needs from a storage container, whatever kind it is. Files and block
// devices come first (file-driver.ts); remote kinds can be added behind the
// same interface. Offsets are bytes from the start of the container's DATA
// AREA (the label's data offset is the driver's business), which is what a
// mapping table's container offsets count from.
import type { ContainerLabel } from './label.js';

export interface ContainerWriteOptions {
  /** Durable on stable storage before the promise resolves (FUA). */
  fua?: boolean;
}

export interface ContainerDriver {
  /** Driver kind, for logs: 'file', 'block'. */
  readonly kind: string;
  /** Container UUID, from the label. */
  readonly id: string;
  /** Where this host opened it. */
  readonly path: string;
  readonly label: ContainerLabel;
  /** Bytes of the data area (label size minus data offset). */
  readonly dataSize: number;

  /** Reads `length` bytes at data-area `offset` into a new buffer. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Reads `length` bytes at `offset` into `target[targetOffset..]` (no intermediate copy). */
  readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void>;
  /** Writes all of `data` at `offset`. */
  write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void>;
  /** Optional synchronous readInto(): true once done inline (a page-cache hit), false with nothing done. Throws what readInto() would reject with. */
  readIntoNow?(offset: number, target: Buffer, targetOffset: number, length: number): boolean;
  /** Optional synchronous buffered (not FUA) write(): true once done inline, false with nothing done. */
  writeNow?(offset: number, data: Buffer): boolean;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Deallocates the range where the medium can; afterwards it reads as zeros. */
  discard(offset: number, length: number): Promise<void>;
  /** Makes the range read as zeros, keeping it allocated where the medium distinguishes. */
  writeZeroes(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

export type ContainerOp = 'open' | 'read' | 'write' | 'flush' | 'discard' | 'zero' | 'close';

/** A container operation failed: names the container, the operation and where. */
export class ContainerIoError extends Error {
  constructor(
    readonly op: ContainerOp,
    readonly path: string,
    /** Data-area offset of the failure (-1 when not about a range). */
    readonly offset: number,
    /** errno name ('EIO', 'ENOSPC', ...) or 'SHORT' for an unexpected end of file. */
    readonly code: string,
    message: string,
  ) {
    super(`${op} ${path}${offset >= 0 ? ` offset ${offset}` : ''}: ${message}`);
    this.name = 'ContainerIoError';
  }
}

/**
 * The checks every driver makes before an I/O: open, and the range inside
 * the data area.
 */
export function checkContainerIo(
  d: Pick<ContainerDriver, 'path' | 'dataSize'>,
  closed: boolean,
  op: ContainerOp,
  offset: number,
  length: number,
): void {
  if (closed) throw new ContainerIoError(op, d.path, offset, 'EBADF', 'container is closed');
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > d.dataSize) {
    throw new ContainerIoError(op, d.path, offset, 'ERANGE', `${length} bytes beyond the data area of ${d.dataSize} bytes`);
  }
}

/** A write-like op on a container opened read-only. */
export function checkContainerWritable(d: Pick<ContainerDriver, 'path'>, readOnly: boolean, op: ContainerOp, offset: number): void {
  if (readOnly) throw new ContainerIoError(op, d.path, offset, 'EROFS', 'container opened read-only');
}

/** Finds the open driver of a container id; the agent's daemon plugs its scan results in here. */
export interface ContainerResolver {
  get(id: string): ContainerDriver | undefined;
}

/** A resolver over a fixed map (tests, `tabula up`). */
export class MapResolver implements ContainerResolver {
  readonly #drivers = new Map<string, ContainerDriver>();

  constructor(drivers: Iterable<ContainerDriver> = []) {
    for (const d of drivers) this.add(d);
  }

  add(d: ContainerDriver): void {
    this.#drivers.set(d.id, d);
  }

  delete(id: string): boolean {
    return this.#drivers.delete(id);
  }

  get(id: string): ContainerDriver | undefined {
    return this.#drivers.get(id);
  }

  values(): IterableIterator<ContainerDriver> {
    return this.#drivers.values();
  }
}
