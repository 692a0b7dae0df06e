// Test helpers for the controller: temp databases, a running controller on
// a loopback port, and a fake agent that speaks the real gRPC protocol and
// keeps its tables with src/table (so pushes are checked by applying them).

import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MappingTable, applyDelta, fromExtents } from '../../../src/table/index.js';
import { AgentServiceClient, type AgentStream } from '../../../src/wire/grpc.js';
import type {
  ContainerRef,
  CopyCommand,
  ControllerMessage,
  Fault,
  FaultReply,
  MalformedMessage,
  ReleaseReply,
  Welcome,
  ZeroCommand,
} from '../../../src/wire/proto-types.js';
import { startController, type ControllerHandle, type StartControllerOptions } from '../../../src/controller/daemon.js';
import { fromWireExtent } from '../../../src/controller/table-changes.js';

export const MiB = 1 << 20;
export const CA = 'aaaaaaaa-0000-4000-8000-00000000000a';
export const CB = 'bbbbbbbb-0000-4000-8000-00000000000b';
export const CC = 'cccccccc-0000-4000-8000-00000000000c';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tabula-ctl-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function startTestController(opts: Partial<StartControllerOptions> = {}): Promise<ControllerHandle & { cleanup: () => Promise<void> }> {
  const t = tempDir();
  const h = await startController({ dbPath: join(t.dir, 'controller.db'), listen: '127.0.0.1:0', ackTimeoutMs: 2000, ...opts });
  return Object.assign(h, {
    cleanup: async () => {
      await h.close();
      t.cleanup();
    },
  });
}

/** A container of `segments` 1 MiB segments after a 1 MiB data offset. */
export function containerRef(id: string, segments: number): ContainerRef {
  return { id, path: `/dev/fake/${id.slice(0, 8)}`, size: (segments + 1) * MiB, dataOffset: MiB };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

type Msg = ControllerMessage | MalformedMessage;

export interface FakeAgentOptions {
  containers?: ContainerRef[];
  autoAck?: boolean;
  token?: string;
  portals?: string[];
  /**
   * How CopyCommands are answered: 'ok' at once (default), 'manual' (the
   * test calls copyDone), or 'files': really copied between the container
   * files in `files` (id -> path, data area at containerRef's 1 MiB offset).
   */
  copy?: 'ok' | 'manual' | 'files';
  files?: Map<string, string>;
  /** How ZeroCommands (scrubs) are answered: 'ok' at once (default, and zeroed in `files` when there), or 'manual' (the test calls copyDone). */
  zero?: 'ok' | 'manual';
  /** Register.host_id (default: none, as an older agent). */
  hostId?: string;
}

export class FakeAgent {
  readonly name: string;
  readonly client: AgentServiceClient;
  readonly stream: AgentStream;
  readonly tables = new Map<string, MappingTable>();
  /** Everything received, in order. */
  readonly received: Msg[] = [];
  /** What happened, in order: `full <vdisk> v<n>`, `delta a->b`, `ack v<n>`, `reply <id> <action>`. */
  readonly events: string[] = [];
  autoAck: boolean;
  /** CopyCommands received, in order. */
  readonly copies: CopyCommand[] = [];
  /** Answer for the next 'ok'/'files' copies: null = success, else the error text. */
  copyError: string | null = null;
  /** ZeroCommands received, in order. */
  readonly zeros: ZeroCommand[] = [];
  /** Answer for the next 'ok' zeros: null = success, else the error text. */
  zeroError: string | null = null;
  #opts: FakeAgentOptions;
  #waiters: { pred: (m: Msg) => boolean; resolve: (m: Msg) => void; from: number }[] = [];
  #nextFault = 1;
  ended = false;

  constructor(address: string, name: string, opts: FakeAgentOptions = {}) {
    this.name = name;
    this.#opts = opts;
    this.autoAck = opts.autoAck ?? true;
    this.client = new AgentServiceClient(address, { token: opts.token });
    this.stream = this.client.connect();
    this.stream.on('data', (m: Msg) => this.#onMessage(m));
    this.stream.on('error', () => {
      this.ended = true;
    });
    this.stream.on('end', () => {
      this.ended = true;
    });
  }

  async register(tables: { vdiskId: string; version: number }[] = []): Promise<Welcome> {
    this.stream.write({
      body: 'register',
      register: {
        agentName: this.name,
        portals: this.#opts.portals ?? ['127.0.0.1:3260'],
        containers: this.#opts.containers ?? [],
        tables,
        softwareVersion: 'test',
        ...(this.#opts.hostId !== undefined ? { hostId: this.#opts.hostId } : {}),
      },
    });
    const m = await this.next((x) => x.body === 'welcome');
    return (m as { welcome: Welcome }).welcome;
  }

  #onMessage(m: Msg): void {
    this.received.push(m);
    if (m.body === 'tableFull') {
      const f = m.tableFull;
      const t = fromExtents(
        { segmentCount: f.segmentCount, segmentSize: f.segmentSize, blockSize: f.blockSize, version: f.version },
        f.extents.map(fromWireExtent),
      );
      this.tables.set(f.vdiskId, t);
      this.events.push(`full ${f.vdiskId} v${f.version}`);
      if (this.autoAck) this.ack(f.vdiskId, f.version);
    } else if (m.body === 'tableDelta') {
      const d = m.tableDelta;
      const t = this.tables.get(d.vdiskId);
      this.events.push(`delta ${d.fromVersion}->${d.toVersion}`);
      if (t === undefined) throw new Error(`${this.name}: delta for a table it does not hold`);
      applyDelta(t, { fromVersion: d.fromVersion, toVersion: d.toVersion, segmentCount: d.segmentCount, extents: d.extents.map(fromWireExtent) });
      if (this.autoAck) this.ack(d.vdiskId, d.toVersion);
    } else if (m.body === 'faultReply') {
      this.events.push(`reply ${m.faultReply.faultId} ${m.faultReply.action}`);
    } else if (m.body === 'fence') {
      this.events.push(`fence ${m.fence.vdiskId}`);
    } else if (m.body === 'copyCommand') {
      const c = m.copyCommand;
      this.copies.push(c);
      this.events.push(`copy ${c.commandId}`);
      const mode = this.#opts.copy ?? 'ok';
      if (mode === 'ok') this.copyDone(c.commandId, this.copyError);
      else if (mode === 'files') this.copyDone(c.commandId, this.copyError ?? this.#copyFiles(c));
    } else if (m.body === 'zeroCommand') {
      const z = m.zeroCommand;
      this.zeros.push(z);
      this.events.push(`zero ${z.commandId}`);
      if ((this.#opts.zero ?? 'ok') === 'ok') this.copyDone(z.commandId, this.zeroError ?? this.#zeroFile(z));
    }
    const idx = this.received.length - 1;
    for (const w of [...this.#waiters]) {
      if (idx >= w.from && w.pred(m)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  }

  /** Answers a CopyCommand (error null = success). */
  copyDone(commandId: number, error: string | null = null): void {
    this.events.push(`copyDone ${commandId}`);
    this.stream.write({ body: 'copyDone', copyDone: { commandId, ok: error === null, error: error ?? '' } });
  }

  #copyFiles(c: CopyCommand): string | null {
    const src = this.#opts.files?.get(c.srcContainer);
    const dst = this.#opts.files?.get(c.dstContainer);
    if (src === undefined || dst === undefined) return `container ${src === undefined ? c.srcContainer : c.dstContainer} not here`;
    const buf = Buffer.alloc(c.length);
    const fs = openSync(src, 'r');
    const fd = openSync(dst, 'r+');
    try {
      readSync(fs, buf, 0, c.length, MiB + c.srcOffset);
      writeSync(fd, buf, 0, c.length, MiB + c.dstOffset);
    } finally {
      closeSync(fs);
      closeSync(fd);
    }
    return null;
  }

  #zeroFile(z: ZeroCommand): string | null {
    const path = this.#opts.files?.get(z.container);
    if (path === undefined) return null;
    const fd = openSync(path, 'r+');
    try {
      writeSync(fd, Buffer.alloc(z.length), 0, z.length, MiB + z.offset);
    } finally {
      closeSync(fd);
    }
    return null;
  }

  /** Sends ContainerUpdate: the agent's whole container list now. */
  containerUpdate(containers: ContainerRef[]): void {
    this.stream.write({ body: 'containerUpdate', containerUpdate: { containers } });
  }

  ack(vdiskId: string, version: number): void {
    this.events.push(`ack v${version}`);
    this.stream.write({ body: 'tableAck', tableAck: { vdiskId, version } });
  }

  /** The first message (already received or future) matching pred. */
  next(pred: (m: Msg) => boolean, timeoutMs = 5000, from = 0): Promise<Msg> {
    const have = this.received.slice(from).find(pred);
    if (have) return Promise.resolve(have);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve, from };
      this.#waiters.push(w);
      setTimeout(() => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) {
          this.#waiters.splice(i, 1);
          reject(new Error(`${this.name}: no matching message within ${timeoutMs} ms; got ${this.received.map((x) => x.body).join(',')}`));
        }
      }, timeoutMs);
    });
  }

  /** Sends a fault; resolves with the first reply that is not WAIT (or WAIT itself when acceptWait). */
  sendFault(f: Partial<Fault> & { vdiskId: string; segment: number }): { faultId: number; reply: (acceptWait?: boolean) => Promise<FaultReply> } {
    const faultId = this.#nextFault++;
    const from = this.received.length;
    this.stream.write({
      body: 'fault',
      fault: { faultId, tableVersion: 0, op: 1, lba: 0, blocks: 1, state: 1, detail: '', ...f },
    });
    return {
      faultId,
      reply: async (acceptWait = false) => {
        const m = await this.next(
          (x) => x.body === 'faultReply' && x.faultReply.faultId === faultId && (acceptWait || x.faultReply.action !== 2),
          5000,
          from,
        );
        return (m as { faultReply: FaultReply }).faultReply;
      },
    };
  }

  async release(vdiskId: string, firstSegment: number, segmentCount: number, requestId = 1): Promise<ReleaseReply> {
    const from = this.received.length;
    this.stream.write({ body: 'release', release: { requestId, vdiskId, tableVersion: 0, firstSegment, segmentCount } });
    const m = await this.next((x) => x.body === 'releaseReply' && x.releaseReply.requestId === requestId, 5000, from);
    return (m as { releaseReply: ReleaseReply }).releaseReply;
  }

  close(): void {
    try {
      this.stream.end();
    } catch {
      // already closed
    }
    this.client.close();
  }
}

/** Polls `cond` every 20 ms until true (or fails after `ms`). */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  for (let t = 0; t < ms; t += 20) {
    if (cond()) return;
    await sleep(20);
  }
  throw new Error(`${what} not reached within ${ms} ms`);
}
