// Shared set-up for the agent daemon tests: a labelled container in a temp
// dir, an agent wired to a fake controller with the fake device, iSCSI
// helpers that build CDBs by hand.
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type AgentOptions } from '../../../src/agent/agent.js';
import { initContainer } from '../../../src/container/init.js';
import { SegmentState } from '../../../src/table/index.js';
import type { Export, TableFull, WireExtent } from '../../../src/wire/proto-types.js';
import { RawInitiator } from '../../support/raw-initiator.js';
import { FakeController } from './fake-controller.js';
import { vdiskDeviceFactory, type AgentDevice } from '../../../src/agent/device-port.js';
import type { ContainerDriver, ContainerResolver, ContainerWriteOptions } from '../../../src/container/driver.js';
import type { LegHints } from '../../../src/agent/vdisk-device.js';
export { read10, write10 } from '../../support/cdb.js';

export const KiB = 1024;
export const SEG = 64 * KiB;
export const BS = 512;
export const BPS = SEG / BS; // blocks per segment
export const SEGS = 8;
export const CONTAINER_ID = 'c0c0c0c0-0000-4000-8000-000000000001';
export const DATA_OFFSET = 1 << 20;
export const VDISK_ID = '5d1f2e3a-1111-4222-8333-444455556666';
export const IQN = 'iqn.2026-11.org.tabula:disk0';

export function exportOf(over: Partial<Export> = {}): Export {
  return {
    vdiskId: VDISK_ID,
    vdiskName: 'disk0',
    targetIqn: IQN,
    lun: 0,
    blockSize: BS,
    size: SEGS * SEG,
    segmentSize: SEG,
    readOnly: false,
    allowedInitiators: [],
    ...over,
  };
}

/** A version-1 TableFull of a vdisk in this rig's geometry; `over` sets the extents and anything else. */
export function tableFullOf(vdiskId: string, segmentCount: number, over: Partial<TableFull>): TableFull {
  return { vdiskId, version: 1, segmentSize: SEG, blockSize: BS, segmentCount, containers: [CONTAINER_ID], extents: [], ...over };
}

export function normal(first: number, count: number, offset = first): WireExtent {
  return { first, count, state: SegmentState.Normal, container: CONTAINER_ID, offset };
}

export function zero(first: number, count: number): WireExtent {
  return { first, count, state: SegmentState.Zero, container: '', offset: 0 };
}

export interface Rig {
  dir: string;
  containerPath: string;
  agent: Agent;
  devices: Map<string, AgentDevice>;
  /**
   * While `writes` is set, container writes wait for it (I/O in flight that a
   * table install must drain); writes to containers in `failing` fail EIO.
   */
  gate: { writes: Promise<void> | null; writesStarted: number; failing?: Set<string> };
  port: number;
  close(): Promise<void>;
}

export async function makeContainer(dir: string): Promise<string> {
  const path = join(dir, 'c0.img');
  await initContainer(path, { size: 4 << 20, id: CONTAINER_ID, segmentSize: SEG, dataOffset: DATA_OFFSET });
  return path;
}

export async function startRig(controller: string, over: Partial<AgentOptions> = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'tabula-agentd-'));
  const containerPath = await makeContainer(dir);
  const devices = new Map<string, AgentDevice>();
  const gate: Rig['gate'] = { writes: null, writesStarted: 0 };
  const agent = await Agent.start({
    controller,
    name: 'agent-a',
    portals: [{ host: '127.0.0.1', port: 0 }],
    containers: [join(dir, '*.img')],
    deviceFactory: (spec) => {
      const d = vdiskDeviceFactory({ ...spec, containers: new GatedResolver(spec.containers, gate) });
      devices.set(spec.vdiskId, d);
      return d;
    },
    backoff: { initialMs: 50, maxMs: 200, jitter: 0.5 },
    welcomeTimeoutMs: 2000,
    ...over,
  });
  return {
    dir,
    containerPath,
    agent,
    devices,
    gate,
    port: agent.portals[0]!.port,
    async close() {
      await agent.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** What useRig sets up before each test; tests push the initiators they log in to `initiators`. */
export class RigFixture {
  ctl!: FakeController;
  rig!: Rig;
  readonly initiators: RawInitiator[] = [];
}

/**
 * mocha hooks for one describe block: a fake controller and an agent rig on
 * it before each test; after it, the test's initiators are destroyed and both stopped.
 */
export function useRig(over: Partial<AgentOptions> = {}): RigFixture {
  const f = new RigFixture();
  beforeEach(async () => {
    f.ctl = await FakeController.start();
    f.rig = await startRig(f.ctl.address, over);
  });
  afterEach(async () => {
    for (const i of f.initiators.splice(0)) i.destroy();
    await f.rig.close();
    await f.ctl.stop();
  });
  return f;
}

export async function loginTo(port: number, targetName = IQN): Promise<RawInitiator> {
  const ini = await RawInitiator.connect(port);
  const r = await ini.login({ targetName });
  if (r.statusClass !== 0) {
    ini.destroy();
    throw new Error(`login to ${targetName} failed: class ${r.statusClass} detail ${r.statusDetail}`);
  }
  return ini;
}

/** Container file bytes at a data-area offset, read straight from the file (not through the code under test). */
export function readContainer(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, DATA_OFFSET + offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Writes straight into the container file at a data-area offset. */
export function writeContainer(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, DATA_OFFSET + offset);
  } finally {
    closeSync(fd);
  }
}

export function inquiryVpd(page: number, alloc = 255): Buffer {
  return Buffer.from([0x12, 0x01, page, 0x00, alloc, 0x00]);
}

/**
 * The NAA 6 designator a vdisk id must produce, built here from its
 * definition (OUI 5A-B1-E0, then SHA-256 of the id) rather than by the code under test.
 */
export function expectedNaa(vdiskId: string): Buffer {
  const h = createHash('sha256').update(vdiskId).digest();
  const naa = Buffer.alloc(16);
  naa[0] = 0x65;
  naa[1] = 0xab;
  naa[2] = 0x1e;
  naa[3] = 0x00 | (h[0]! & 0x0f);
  h.copy(naa, 4, 1, 13);
  return naa;
}

/** A block of recognisable bytes (block number and a tag in every byte pair). */
export function pattern(blocks: number, tag: number): Buffer {
  const b = Buffer.alloc(blocks * BS);
  for (let i = 0; i < b.length; i += 2) b.writeUInt16BE(((i / BS) << 8) ^ tag ^ (i & 0xff), i);
  return b;
}

export interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

export function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Container drivers whose writes can be held (or failed) by the test; the agent's leg hints pass through. */
class GatedResolver implements ContainerResolver, LegHints {
  readonly #wrapped = new Map<string, ContainerDriver>();

  constructor(
    private readonly inner: ContainerResolver & LegHints,
    private readonly gate: Rig['gate'],
  ) {}

  near(id: string): boolean {
    return this.inner.near?.(id) ?? false;
  }

  reachable(id: string): boolean {
    return this.inner.reachable?.(id) ?? true;
  }

  get(id: string): ContainerDriver | undefined {
    const d = this.inner.get(id);
    if (d === undefined) return undefined;
    let w = this.#wrapped.get(id);
    if (w === undefined) {
      const gate = this.gate;
      w = {
        kind: d.kind,
        id: d.id,
        path: d.path,
        label: d.label,
        dataSize: d.dataSize,
        read: (o, l) => d.read(o, l),
        readInto: (o, t, to, l) => d.readInto(o, t, to, l),
        async write(offset: number, data: Buffer, opts?: ContainerWriteOptions): Promise<void> {
          gate.writesStarted++;
          if (gate.writes) await gate.writes;
          if (gate.failing?.has(d.id) === true) throw Object.assign(new Error(`EIO: i/o error, write ${d.path}`), { code: 'EIO' });
          return d.write(offset, data, opts);
        },
        flush: () => d.flush(),
        discard: (o, l) => d.discard(o, l),
        writeZeroes: (o, l) => d.writeZeroes(o, l),
        close: () => d.close(),
      };
      this.#wrapped.set(id, w);
    }
    return w;
  }
}
