// Test fixtures for the table-driven device: real temp-file containers, a
// driver wrapper that records calls and can hold them, a scriptable fault
// sink, and raw file access that computes container offsets independently.
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ContainerDriver, ContainerResolver, ContainerWriteOptions } from '../../../src/container/driver.js';
import { FileContainerDriver } from '../../../src/container/file-driver.js';
import { initContainer } from '../../../src/container/init.js';
import type { ContainerLabel } from '../../../src/container/label.js';
import type { Fault, FaultDecision, FaultSink, ReleaseRequest, ReleaseResult } from '../../../src/agent/fault.js';

export const SEG = 64 << 10; // smallest segment size: small files
export const BS = 512;
export const BPS = SEG / BS; // 128 blocks per segment
export const DATA_OFFSET = 1 << 20; // the label's default
export const C1 = '11111111-0000-4000-8000-000000000001';
export const C2 = '22222222-0000-4000-8000-000000000002';
/** Only in fixtures made with three containers. */
export const C3 = '33333333-0000-4000-8000-000000000003';

export interface Call {
  op: 'read' | 'write' | 'flush' | 'discard' | 'zero';
  container: string;
  offset: number;
  length: number;
  fua?: boolean;
}

/** A latch: `wait()` resolves once `open()` is called. */
export class Latch {
  #open!: () => void;
  readonly promise = new Promise<void>((r) => {
    this.#open = r;
  });
  open(): void {
    this.#open();
  }
}

/** Delegates to a real driver, recording every call; writes can be held on a latch. */
export class SpyDriver implements ContainerDriver {
  readonly kind = 'spy';
  holdWrites: Latch | null = null;
  /** Called when a write reaches the driver (before it is held). */
  onWrite: ((c: Call) => void) | null = null;
  failWith: Error | null = null;

  constructor(
    readonly inner: ContainerDriver,
    readonly calls: Call[],
  ) {}

  get id(): string {
    return this.inner.id;
  }
  get path(): string {
    return this.inner.path;
  }
  get label(): ContainerLabel {
    return this.inner.label;
  }
  get dataSize(): number {
    return this.inner.dataSize;
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.calls.push({ op: 'read', container: this.id, offset, length });
    return this.inner.read(offset, length);
  }
  async readInto(offset: number, target: Buffer, targetOffset: number, length: number): Promise<void> {
    this.calls.push({ op: 'read', container: this.id, offset, length });
    if (this.failWith) throw this.failWith;
    return this.inner.readInto(offset, target, targetOffset, length);
  }
  async write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void> {
    const c: Call = { op: 'write', container: this.id, offset, length: data.length, fua: opts?.fua === true };
    this.calls.push(c);
    this.onWrite?.(c);
    if (this.holdWrites) await this.holdWrites.promise;
    if (this.failWith) throw this.failWith;
    return this.inner.write(offset, data, opts);
  }
  async flush(): Promise<void> {
    this.calls.push({ op: 'flush', container: this.id, offset: -1, length: 0 });
    if (this.failWith) throw this.failWith;
    return this.inner.flush();
  }
  async discard(offset: number, length: number): Promise<void> {
    this.calls.push({ op: 'discard', container: this.id, offset, length });
    if (this.failWith) throw this.failWith;
    return this.inner.discard(offset, length);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.calls.push({ op: 'zero', container: this.id, offset, length });
    if (this.failWith) throw this.failWith;
    return this.inner.writeZeroes(offset, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface Fixture {
  dir: string;
  paths: Record<string, string>;
  drivers: Record<string, SpyDriver>;
  calls: Call[];
  resolver: ContainerResolver;
  cleanup(): Promise<void>;
}

/** Two (or three) containers of `segments` segments each, in a fresh temp dir. */
export async function fixture(segments = 16, containers: 2 | 3 = 2): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'tabula-vdisk-'));
  const calls: Call[] = [];
  const paths: Record<string, string> = {};
  const drivers: Record<string, SpyDriver> = {};
  const all = [
    ['c1', C1],
    ['c2', C2],
    ['c3', C3],
  ] as const;
  for (const [name, id] of all.slice(0, containers)) {
    const path = join(dir, `${name}.img`);
    await initContainer(path, { size: DATA_OFFSET + segments * SEG, id, segmentSize: SEG });
    paths[id] = path;
    drivers[id] = new SpyDriver(await FileContainerDriver.open(path), calls);
  }
  return {
    dir,
    paths,
    drivers,
    calls,
    resolver: { get: (id) => drivers[id] },
    async cleanup() {
      for (const d of Object.values(drivers)) await d.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Bytes straight from a container file: data offset + segment offset × SEG + byte within. */
export function raw(path: string, containerSeg: number, withinBytes: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, DATA_OFFSET + containerSeg * SEG + withinBytes);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Deterministic, position-dependent bytes (so a misplaced block shows). */
export function pattern(blocks: number, seed: number): Buffer {
  const b = Buffer.alloc(blocks * BS);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

type FaultHandler = (f: Fault) => Promise<FaultDecision>;
type ReleaseHandler = (r: ReleaseRequest) => Promise<ReleaseResult>;

/** Records faults and releases; answers with the handler given (default: never answers). */
export class FakeSink implements FaultSink {
  readonly faults: Fault[] = [];
  readonly releases: ReleaseRequest[] = [];
  onFault: FaultHandler = () => new Promise<FaultDecision>(() => undefined);
  onRelease: ReleaseHandler | null = null;
  release?: (r: ReleaseRequest) => Promise<ReleaseResult>;

  constructor(withRelease = false) {
    if (withRelease) {
      this.release = (r) => {
        this.releases.push(r);
        if (this.onRelease === null) return new Promise<ReleaseResult>(() => undefined);
        return this.onRelease(r);
      };
    }
  }

  fault(f: Fault): Promise<FaultDecision> {
    this.faults.push(f);
    return this.onFault(f);
  }
}

/** Lets pending promise callbacks and fs callbacks run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((r) => setImmediate(r));
}

export { rejects } from '../../support/rejects.js';
