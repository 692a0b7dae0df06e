// The controller's metrics. Every message between the controller and its
// agents passes through the AgentService.Connect stream, so a gRPC server
// interceptor on that method sees pushes, acks, fences, faults, fault
// answers and copies without a line in the controller's own code; it also
// pairs each push with its ack and each fault with its final answer for the
// latency histograms. Gauges are read from the controller at scrape time;
// allocations and frees come from the allocator's observer.
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Controller } from '../controller/controller.js';
import type { AllocationObserver } from '../controller/allocator.js';
import { SEGMENT_STATE_NAMES } from '../table/segment-state.js';
import { FAULT_ACTION_NAMES, FaultAction } from '../wire/proto-types.js';
import { EncodedMessage, agentServiceDefinition } from '../wire/grpc.js';
import { LATENCY_BUCKETS, newRegistry, stateLabel } from './registry.js';

type Child = { inc(value?: number): void };

/** The AgentService.Connect method path; other methods (admin) pass the interceptor untouched. */
function connectPath(): string {
  const def = agentServiceDefinition().Connect;
  if (def === undefined) throw new Error('AgentService has no Connect method');
  return def.path;
}

type Body = { body: string } & Record<string, unknown>;

function bodyOf(m: unknown): Body | null {
  if (m instanceof EncodedMessage) m = m.message; // a delta encoded once for all holders
  if (m === null || typeof m !== 'object') return null;
  const b = (m as { body?: unknown }).body;
  return typeof b === 'string' ? (m as Body) : null;
}

function partOf(m: Body): Record<string, unknown> | null {
  const p = m[m.body];
  return p !== null && typeof p === 'object' ? (p as Record<string, unknown>) : null;
}

const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v ?? NaN));

export class ControllerMetrics {
  readonly registry: Registry;
  /** Pass to the gRPC server's `interceptors` option. */
  readonly interceptor: grpc.ServerInterceptor;
  readonly #pushes: { full: Child; delta: Child };
  readonly #acks: Child;
  readonly #ackSeconds: Histogram;
  readonly #fences: Child;
  readonly #faults: Counter<'state'>;
  readonly #faultsByState = new Map<string, Child>();
  readonly #replies: Child[];
  readonly #decisionSeconds: Histogram;
  readonly #copyCommands: Child;
  readonly #copiesDone: { ok: Child; failed: Child };
  readonly #zeroCommands: Child;
  readonly #zerosDone: { ok: Child; failed: Child };
  readonly #allocated: Child;
  readonly #freed: Child;
  readonly #resyncBytes: Child;
  readonly #rebuildBytes: Child;
  #controller: Controller | null = null;

  constructor() {
    const registry = newRegistry();
    this.registry = registry;
    const registers = [registry];
    const ctrl = (): Controller | null => (this.#controller?.closed === false ? this.#controller : null);

    const agents: Gauge = new Gauge({
      name: 'tabula_controller_agents_connected',
      help: 'Agents with a registered stream to this controller.',
      registers,
      collect: () => {
        agents.set(ctrl()?.agents.onlineAgents().length ?? 0);
      },
    });
    const versions: Gauge<'vdisk'> = new Gauge({
      name: 'tabula_controller_table_version',
      help: 'Committed mapping table version of each vdisk (snapshots included).',
      labelNames: ['vdisk'],
      registers,
      collect: () => {
        versions.reset();
        for (const v of ctrl()?.db.vdisks() ?? []) versions.set({ vdisk: v.name }, v.version);
      },
    });
    const segments: Gauge<'container'> = new Gauge({
      name: 'tabula_controller_container_segments',
      help: 'Segments in each registered container.',
      labelNames: ['container'],
      registers,
      collect: () => {
        segments.reset();
        for (const c of ctrl()?.db.containers() ?? []) segments.set({ container: c.id }, c.segmentsTotal);
      },
    });
    const free: Gauge<'container'> = new Gauge({
      name: 'tabula_controller_container_free_segments',
      help: 'Free segments in each registered container (the allocator\'s free map).',
      labelNames: ['container'],
      registers,
      collect: () => {
        free.reset();
        const c = ctrl();
        for (const row of c?.db.containers() ?? []) free.set({ container: row.id }, c?.allocator.freeSegments(row.id) ?? 0);
      },
    });
    // Which agents reach which containers (issue 15: the storage network), as the agents report it.
    const reachable: Gauge<'agent' | 'container'> = new Gauge({
      name: 'tabula_agent_container_reachable',
      help: 'Whether the agent reaches the container now (1) or reports it unreachable (0), for every container each agent claims.',
      labelNames: ['agent', 'container'],
      registers,
      collect: () => {
        reachable.reset();
        const c = ctrl();
        if (c === null) return;
        for (const a of c.db.agents()) for (const r of c.db.agentClaims(a.name)) reachable.set({ agent: a.name, container: r.id }, r.reachable ? 1 : 0);
      },
    });
    /** Running migrations by vdisk name: what the three migration gauges read. */
    const running = (): { vdisk: string; total: number; done: number; bytes: number }[] => {
      const c = ctrl();
      if (c === null) return [];
      return c.db
        .migrations()
        .filter((m) => m.state === 'running')
        .map((m) => ({ vdisk: c.db.vdisk(m.vdiskId)?.name ?? m.vdiskId, total: m.segmentsTotal, done: m.segmentsDone, bytes: m.bytesDone }));
    };
    const migrationGauge = (name: string, help: string, pick: (m: ReturnType<typeof running>[number]) => number): void => {
      const g: Gauge<'vdisk'> = new Gauge({
        name,
        help,
        labelNames: ['vdisk'],
        registers,
        collect: () => {
          g.reset();
          for (const m of running()) g.set({ vdisk: m.vdisk }, pick(m));
        },
      });
    };
    migrationGauge('tabula_controller_migration_segments_total', 'Segments a running migration of the vdisk has to move.', (m) => m.total);
    migrationGauge('tabula_controller_migration_segments_done', 'Segments a running migration of the vdisk has moved so far.', (m) => m.done);
    migrationGauge('tabula_controller_migration_bytes_done', 'Bytes a running migration of the vdisk has copied so far.', (m) => m.bytes);

    // Mirrored vdisks: what is not redundant now (a one-copy vdisk is never degraded: 0, without a scan).
    const degraded: Gauge<'vdisk'> = new Gauge({
      name: 'tabula_vdisk_degraded_segments',
      help: 'Allocated segments of each vdisk with fewer copies (legs) than the vdisk has.',
      labelNames: ['vdisk'],
      registers,
      collect: () => {
        degraded.reset();
        const c = ctrl();
        for (const v of c?.db.vdisks() ?? []) degraded.set({ vdisk: v.name }, c?.rebuild.health(v.id, 0).degraded ?? 0);
      },
    });
    this.#rebuildBytes = zeroed(
      new Counter({
        name: 'tabula_rebuild_bytes_total',
        help: 'Bytes copied to new legs of degraded segments (rebuilds and set-copies).',
        registers,
      }),
    );

    const pushes = new Counter({
      name: 'tabula_controller_table_pushes_total',
      help: 'Table versions sent to agents, as whole tables (full) or deltas.',
      labelNames: ['kind'],
      registers,
    });
    this.#pushes = { full: zeroed(pushes.labels('full')), delta: zeroed(pushes.labels('delta')) };
    this.#acks = new Counter({ name: 'tabula_controller_table_acks_total', help: 'Table version acks received from agents.', registers });
    this.#ackSeconds = new Histogram({
      name: 'tabula_controller_table_ack_seconds',
      help: 'From sending a table version to an agent to its ack of that version (or a later one).',
      buckets: [...LATENCY_BUCKETS],
      registers,
    });
    this.#fences = new Counter({ name: 'tabula_controller_fences_total', help: 'Fence messages sent to agents.', registers });
    this.#faults = new Counter({
      name: 'tabula_controller_faults_total',
      help: 'Faults received from agents, by the inhibiting segment state they report.',
      labelNames: ['state'],
      registers,
    });
    for (const s of SEGMENT_STATE_NAMES) this.#stateChild(s);
    const replies = new Counter({
      name: 'tabula_controller_fault_replies_total',
      help: 'Fault answers sent, by outcome (retry, fail, wait, done).',
      labelNames: ['outcome'],
      registers,
    });
    this.#replies = FAULT_ACTION_NAMES.map((n) => zeroed(replies.labels(n)));
    this.#decisionSeconds = new Histogram({
      name: 'tabula_controller_fault_decision_seconds',
      help: 'From receiving a fault to sending its final answer (retry, fail or done).',
      buckets: [...LATENCY_BUCKETS],
      registers,
    });
    this.#copyCommands = new Counter({ name: 'tabula_controller_copy_commands_total', help: 'Copy commands sent to agents.', registers });
    const copiesDone = new Counter({
      name: 'tabula_controller_copies_done_total',
      help: 'Copy completions reported by agents, by result.',
      labelNames: ['result'],
      registers,
    });
    this.#copiesDone = { ok: zeroed(copiesDone.labels('ok')), failed: zeroed(copiesDone.labels('failed')) };
    this.#zeroCommands = new Counter({
      name: 'tabula_controller_zero_commands_total',
      help: 'Zero (scrub) commands sent to agents for freed container segments.',
      registers,
    });
    const zerosDone = new Counter({
      name: 'tabula_controller_zeros_done_total',
      help: 'Zero (scrub) completions reported by agents, by result.',
      labelNames: ['result'],
      registers,
    });
    this.#zerosDone = { ok: zeroed(zerosDone.labels('ok')), failed: zeroed(zerosDone.labels('failed')) };
    this.#allocated = new Counter({
      name: 'tabula_controller_segments_allocated_total',
      help: 'Container segments taken from the free map (thin first writes, copy-on-write, migration, thick creation).',
      registers,
    });
    this.#freed = new Counter({
      name: 'tabula_controller_segments_freed_total',
      help: 'Container segments returned to the free map.',
      registers,
    });
    this.#resyncBytes = zeroed(
      new Counter({
        name: 'tabula_resync_bytes_total',
        help: 'Bytes copied onto stale legs of mirrored vdisks when their failed container came back (only the segments written while it was away).',
        registers,
      }),
    );
    const path = connectPath();
    this.interceptor = (method, call) => (method.path === path ? this.#tap(call) : new grpc.ServerInterceptingCall(call));
  }

  /** Starts reading `controller` at scrape time and counting its allocations. */
  observe(controller: Controller): void {
    this.#controller = controller;
    const observer: AllocationObserver = {
      allocated: (n) => this.#allocated.inc(n),
      freed: (n) => this.#freed.inc(n),
    };
    controller.allocator.observer = observer;
    controller.mirrors.observer = { resyncBytes: (n) => this.#resyncBytes.inc(n) };
    controller.rebuild.observer = { copied: (bytes) => this.#rebuildBytes.inc(bytes) };
  }

  /** One agent stream: counts its messages, and times pushes to acks and faults to answers. */
  #tap(call: grpc.ServerInterceptingCallInterface): grpc.ServerInterceptingCall {
    /** Per vdisk: versions sent and not acked yet, with when. */
    const pushed = new Map<string, { version: number; at: number }[]>();
    /** Fault id -> when it arrived, until its final answer. */
    const faults = new Map<number, number>();
    // Zero commands are answered with CopyDone too (same id space): remember
    // their ids so their completions are not counted as copies.
    const zeroIds = new Set<number>();
    const received = (m: unknown): void => {
      const msg = bodyOf(m);
      const p = msg && partOf(msg);
      if (msg === null || p === null) return;
      switch (msg.body) {
        case 'tableAck': {
          this.#acks.inc();
          const vdiskId = String(p.vdiskId);
          const waiting = pushed.get(vdiskId);
          if (waiting === undefined) return;
          const version = num(p.version);
          const now = performance.now();
          const left = waiting.filter((w) => {
            if (w.version > version) return true;
            this.#ackSeconds.observe((now - w.at) / 1000);
            return false;
          });
          if (left.length === 0) pushed.delete(vdiskId);
          else pushed.set(vdiskId, left);
          return;
        }
        case 'fault':
          this.#stateChild(stateLabel(num(p.state))).inc();
          faults.set(num(p.faultId), performance.now());
          return;
        case 'copyDone': {
          const done = zeroIds.delete(num(p.commandId)) ? this.#zerosDone : this.#copiesDone;
          (p.ok === true ? done.ok : done.failed).inc();
          return;
        }
        default:
      }
    };
    const sent = (m: unknown): void => {
      const msg = bodyOf(m);
      const p = msg && partOf(msg);
      if (msg === null || p === null) return;
      switch (msg.body) {
        case 'tableFull':
        case 'tableDelta': {
          const full = msg.body === 'tableFull';
          (full ? this.#pushes.full : this.#pushes.delta).inc();
          const vdiskId = String(p.vdiskId);
          const entry = { version: num(full ? p.version : p.toVersion), at: performance.now() };
          const list = pushed.get(vdiskId);
          if (list === undefined) pushed.set(vdiskId, [entry]);
          else list.push(entry);
          return;
        }
        case 'fence':
          this.#fences.inc();
          return;
        case 'faultReply': {
          const action = num(p.action);
          this.#replies[action]?.inc();
          if (action === FaultAction.Wait) return;
          const id = num(p.faultId);
          const at = faults.get(id);
          if (at === undefined) return;
          faults.delete(id);
          this.#decisionSeconds.observe((performance.now() - at) / 1000);
          return;
        }
        case 'copyCommand':
          this.#copyCommands.inc();
          return;
        case 'zeroCommand':
          this.#zeroCommands.inc();
          zeroIds.add(num(p.commandId));
          return;
        default:
      }
    };
    return new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage: (m: unknown, pass: (m: unknown) => void) => {
            received(m);
            pass(m);
          },
        }),
      sendMessage: (m: unknown, pass: (m: unknown) => void) => {
        sent(m);
        pass(m);
      },
    });
  }

  #stateChild(state: string): Child {
    let c = this.#faultsByState.get(state);
    if (c === undefined) {
      c = zeroed(this.#faults.labels(state));
      this.#faultsByState.set(state, c);
    }
    return c;
  }
}

/** Makes the series exist at 0 before its first event, so rates work from the start. */
function zeroed(c: Child): Child {
  c.inc(0);
  return c;
}
