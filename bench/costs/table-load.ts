// Table load in an agent (issue 5): time from a TableFull's arrival to the
// table being installed (the ack), and the agent's memory per segment, for
// 1 TiB (1 M segments of 1 MiB) and 16 TiB tables of several shapes; while
// each loads, READs on another vdisk of the same agent run back to back and
// their worst latency shows whether the load blocks I/O.
//
// The agent is real (agent-worker.ts: src/agent with its gRPC link, in its
// own process); the controller is a stub speaking AgentService over gRPC
// (stub-controller.ts), since the real one stores one SQLite row per segment.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { initContainer } from '../../src/container/init.js';
import type { Export } from '../../src/wire/proto-types.js';
import { LunSession } from '../../test/system/scsi-client.js';
import { onCleanup, sleep } from '../proc.js';
import { TABLE_RUNS_PER_MESSAGE } from '../../src/wire/grpc.js';
import { checkEncoding, encodeTableFull, encodeTableFullRuns, makeShape, type ShapeKind, type TableShape } from './table-wire.js';
import type { WorkerCommand, WorkerEvent } from './agent-worker.js';
import { StubController } from './stub-controller.js';
import { percentile } from '../report.js';

const SEG = 1 << 20;
const BLOCK = 512;
const SMALL_SEGMENTS = 64;

export interface TableLoadResult {
  table: string;
  segments: number;
  extents: number;
  messageBytes: number;
  ok: boolean;
  error?: string;
  /** TableFull written by the stub -> TableAck received by the stub. */
  sendToAckMs?: number;
  /** In the agent: whole message received -> decoded (protobuf). */
  decodeMs?: number;
  /** In the agent: whole message received -> TableAck sent (decode, build, install). */
  loadMs?: number;
  /** Agent heap + external memory after the load (after GC) minus before the export, per segment. */
  bytesPerSegment?: number;
  /** Peak RSS increase during the load, per segment. */
  peakRssBytesPerSegment?: number;
  /** READs of 4 KiB on another vdisk of the agent during the load. */
  reads?: number;
  readMaxMs?: number;
  readP99Ms?: number;
  /** Worst READ latency on that vdisk with no load, just before. */
  idleReadMaxMs?: number;
}

export interface TableLoadOptions {
  dir: string;
  /** Cases as KIND:SEGMENTS. */
  cases: { kind: ShapeKind; segments: number }[];
  timeoutMs: number;
  log: (msg: string) => void;
}

export const DEFAULT_LOAD_CASES: { kind: ShapeKind; segments: number }[] = [
  { kind: 'thick', segments: 1 << 20 },
  { kind: 'aged', segments: 1 << 20 },
  { kind: 'fragmented', segments: 1 << 20 },
  { kind: 'thick', segments: 16 << 20 },
  { kind: 'aged', segments: 16 << 20 },
];

function workerEntry(): { file: string; execArgv: string[] } {
  const self = fileURLToPath(import.meta.url);
  const ts = self.endsWith('.ts');
  return { file: join(self, '..', ts ? 'agent-worker.ts' : 'agent-worker.js'), execArgv: [...(ts ? ['--import', 'tsx'] : []), '--expose-gc', ...(process.env.BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean)] };
}

class Worker {
  readonly events: WorkerEvent[] = [];
  #waiters: ((e: WorkerEvent) => boolean)[] = [];

  constructor(readonly child: ChildProcess) {
    child.on('message', (e: WorkerEvent) => {
      this.events.push(e);
      this.#waiters = this.#waiters.filter((w) => !w(e));
    });
  }

  next<K extends WorkerEvent['kind']>(kind: K, timeoutMs: number, pred: (e: Extract<WorkerEvent, { kind: K }>) => boolean = () => true): Promise<Extract<WorkerEvent, { kind: K }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`agent worker: no ${kind} within ${timeoutMs} ms`)), timeoutMs);
      const onExit = (): void => reject(new Error(`agent worker exited (${this.child.exitCode ?? this.child.signalCode})`));
      this.child.once('exit', onExit);
      this.#waiters.push((e) => {
        if (e.kind !== kind || !pred(e as Extract<WorkerEvent, { kind: K }>)) return false;
        clearTimeout(timer);
        this.child.off('exit', onExit);
        resolve(e as Extract<WorkerEvent, { kind: K }>);
        return true;
      });
    });
  }

  async mem(): Promise<Extract<WorkerEvent, { kind: 'mem' }>> {
    const p = this.next('mem', 60_000);
    this.child.send({ kind: 'mem' } satisfies WorkerCommand);
    return p;
  }

  /**
   * The TableFull messages of `version` seen so far as one: received when
   * the first was, decode time summed over the pieces (decodedAt - receivedAt).
   */
  tableFull(version: number): Extract<WorkerEvent, { kind: 'tableFull' }> | undefined {
    const all = this.events.filter((e): e is Extract<WorkerEvent, { kind: 'tableFull' }> => e.kind === 'tableFull' && e.version === version);
    const first = all[0];
    if (first === undefined) return undefined;
    const decode = all.reduce((n, e) => n + (e.decodedAt - e.receivedAt), 0);
    return { ...first, bytes: all.reduce((n, e) => n + e.bytes, 0), decodedAt: first.receivedAt + decode };
  }

  ack(vdiskId: string, version: number): Extract<WorkerEvent, { kind: 'ack' }> | undefined {
    return this.events.find((e): e is Extract<WorkerEvent, { kind: 'ack' }> => e.kind === 'ack' && e.vdiskId === vdiskId && e.version === version);
  }
}

/** READs of 8 blocks back to back on one LUN, each timed with its start time. */
class Reader {
  readonly samples: { at: number; ms: number }[] = [];
  #stop = false;
  #done: Promise<void> = Promise.resolve();

  constructor(readonly session: LunSession) {}

  start(): void {
    this.#stop = false;
    this.samples.length = 0;
    this.#done = (async () => {
      let lba = 0;
      while (!this.#stop) {
        const at = performance.timeOrigin + performance.now();
        const r = await this.session.read(lba, 8, 60_000);
        const ms = performance.timeOrigin + performance.now() - at;
        if (r.status !== 0) throw new Error(`READ lba ${lba} on the other vdisk: status ${r.status}`);
        this.samples.push({ at, ms });
        lba = (lba + 2056) % (SMALL_SEGMENTS * (SEG / BLOCK) - 8);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#done;
  }
}

/** RSS of a process (kB in /proc, returned in bytes). */
function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function exportOf(id: string, name: string, segments: number): Export {
  return { vdiskId: id, vdiskName: name, targetIqn: `iqn.2026-11.org.tabula.bench:${name}`, lun: 0, blockSize: BLOCK, size: segments * SEG, segmentSize: SEG, readOnly: false, allowedInitiators: [] };
}

export async function measureTableLoad(opts: TableLoadOptions): Promise<TableLoadResult[]> {
  checkEncoding();
  const dir = join(opts.dir, 'table-load');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  await initContainer(join(dir, 'c0.img'), { size: (SMALL_SEGMENTS + 2) * SEG });

  const stub = new StubController();
  await stub.start();
  onCleanup(() => stub.close());
  const w = workerEntry();
  const child = fork(w.file, [stub.address, join(dir, '*.img')], { execArgv: w.execArgv, stdio: ['ignore', 'ignore', 'inherit', 'ipc'], env: { ...process.env, TABULA_LOG_LEVEL: 'warn' } });
  onCleanup(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const worker = new Worker(child);
  const ready = await worker.next('ready', 60_000);

  // The other vdisk: SMALL_SEGMENTS normal segments on the agent's real container.
  const small = exportOf(randomUUID(), 'small', SMALL_SEGMENTS);
  const containers = await stub.registered();
  const c0 = containers[0];
  if (c0 === undefined) throw new Error('the agent registered no container');
  const smallTable: TableShape = { name: 'small', segmentCount: SMALL_SEGMENTS, containers: [c0.id], extents: [{ first: 0, count: SMALL_SEGMENTS, state: 0, container: 0, offset: 0 }] };
  let version = 1;
  const setUpSmall = async (): Promise<void> => {
    stub.exportSet([small]);
    await stub.tableFull(small.vdiskId, version, encodeTableFull(smallTable, small.vdiskId, version, SEG, BLOCK), 30_000);
  };
  await setUpSmall();
  const session = await LunSession.open(ready.portal, small.targetIqn, BLOCK);
  const reader = new Reader(session);
  // Warm the read path (JIT) so the idle baseline is not the first reads.
  reader.start();
  await sleep(1000);
  await reader.stop();

  const results: TableLoadResult[] = [];
  for (const c of opts.cases) {
    const tib = (c.segments * SEG) / 2 ** 40;
    const label = `${c.kind}-${tib >= 1 ? `${tib}TiB` : `${(c.segments * SEG) / 2 ** 30}GiB`}`;
    const shape = makeShape(c.kind, c.segments);
    const big = exportOf(randomUUID(), `big-${results.length}`, c.segments);
    version++;
    // BENCH_TABLE_FORM=extents: the old one-message form (what an older controller sends).
    const encoded =
      process.env.BENCH_TABLE_FORM === 'extents'
        ? [encodeTableFull(shape, big.vdiskId, version, SEG, BLOCK)]
        : encodeTableFullRuns(shape, big.vdiskId, version, SEG, BLOCK, TABLE_RUNS_PER_MESSAGE);
    const messageBytes = encoded.reduce((n, b) => n + b.length, 0);
    const r: TableLoadResult = { table: label, segments: c.segments, extents: shape.extents.length, messageBytes, ok: false };
    results.push(r);
    opts.log(`bench: table load ${label}: ${shape.extents.length} extents, ${(messageBytes / 1e6).toFixed(1)} MB TableFull in ${encoded.length} messages`);
    try {
      const mem0 = await worker.mem();
      const rss0 = rssOf(child.pid!);
      stub.exportSet([small, big]);
      // Let the agent make the export's device (placeholder table) first: the idle window is then idle.
      await sleep(1500);
      reader.start();
      await sleep(300);
      const idle = reader.samples.slice();
      let peak = rss0;
      const sampler = setInterval(() => (peak = Math.max(peak, rssOf(child.pid!))), 10);
      const t0 = Date.now();
      let ackAt: number;
      try {
        ackAt = await stub.tableFull(big.vdiskId, version, encoded, opts.timeoutMs);
      } finally {
        clearInterval(sampler);
        peak = Math.max(peak, rssOf(child.pid!));
        await sleep(100);
        await reader.stop();
      }
      const tf = worker.tableFull(version);
      const ack = worker.ack(big.vdiskId, version);
      const mem1 = await worker.mem();
      const during = reader.samples.filter((s) => s.at + s.ms >= t0 && s.at <= ackAt).map((s) => s.ms);
      Object.assign(r, {
        ok: true,
        sendToAckMs: ackAt - t0,
        decodeMs: tf ? tf.decodedAt - tf.receivedAt : undefined,
        loadMs: tf && ack ? ack.at - tf.receivedAt : undefined,
        bytesPerSegment: (mem1.heapUsed + mem1.external - (mem0.heapUsed + mem0.external)) / c.segments,
        peakRssBytesPerSegment: (peak - rss0) / c.segments,
        reads: during.length,
        readMaxMs: during.length ? Math.max(...during) : undefined,
        readP99Ms: percentile(during, 0.99),
        idleReadMaxMs: idle.length ? Math.max(...idle.map((s) => s.ms)) : undefined,
      } satisfies Partial<TableLoadResult>);
      opts.log(
        `bench: table load ${label}: agent load ${r.loadMs?.toFixed(0)} ms (decode ${r.decodeMs?.toFixed(0)} ms), send->ack ${r.sendToAckMs} ms, ` +
          `${r.bytesPerSegment!.toFixed(2)} B/segment (peak RSS +${r.peakRssBytesPerSegment!.toFixed(1)} B/segment); ` +
          `other-LUN READ max ${r.readMaxMs?.toFixed(1)} ms over ${r.reads} reads (idle max ${r.idleReadMaxMs?.toFixed(1)} ms)`,
      );
    } catch (e) {
      // The agent's side says why a stream broke (e.g. a message over its gRPC receive limit).
      const why = worker.events.filter((x): x is Extract<WorkerEvent, { kind: 'disconnected' }> => x.kind === 'disconnected').pop();
      r.error = why ? `agent link: ${why.reason}` : (e as Error).message;
      opts.log(`bench: table load ${label} failed: ${r.error}`);
      await reader.stop().catch(() => undefined);
    }
    // Drop the big vdisk; after a broken stream, register and set up again.
    stub.forget(big.vdiskId);
    try {
      if (r.ok) stub.exportSet([small]);
      else {
        await stub.registered();
        version++;
        await setUpSmall();
      }
    } catch (e) {
      opts.log(`bench: table load: cannot reset the agent: ${(e as Error).message}`);
      break;
    }
    await sleep(500);
  }
  session.close();
  child.send({ kind: 'exit' } satisfies WorkerCommand);
  await new Promise((r) => child.once('exit', r));
  await stub.close();
  return results;
}
