// The agent's metrics. Three hooks, all set up by startAgent: the device
// factory (each export's device is wrapped to count I/O and its fault sink
// to count faults), the controller link's events (connection, reconnects,
// WAIT replies), and scrape-time reads of the agent (held I/Os, table
// versions). Nothing here runs per I/O except MeteredDevice's increments.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Agent } from '../agent/agent.js';
import type { DeviceFactory } from '../agent/device-port.js';
import type { FaultDecision, FaultSink } from '../agent/fault.js';
import { SEGMENT_STATE_NAMES } from '../table/segment-state.js';
import { FaultAction } from '../wire/proto-types.js';
import { MeteredDevice, VdiskIoStats } from './metered-device.js';
import { LATENCY_BUCKETS, newRegistry, stateLabel } from './registry.js';

/** What the metrics read of the agent at scrape time, and the link events they count. */
export type AgentView = Pick<Agent, 'heldIos' | 'exports' | 'link'>;

/** How a fault ended as the agent saw it: the controller's answers, or the agent giving up. */
export const AGENT_FAULT_OUTCOMES = ['retry', 'fail', 'wait', 'done', 'timeout'] as const;
type Outcome = (typeof AGENT_FAULT_OUTCOMES)[number];

type Child = { inc(value?: number): void };

export class AgentMetrics {
  readonly registry: Registry;
  readonly #vdisks = new Map<string, VdiskIoStats>();
  readonly #faultsByState = new Map<string, Child>();
  readonly #faults: Counter<'state'>;
  readonly #outcomes: Record<Outcome, Child>;
  readonly #roundTrip: Histogram;
  readonly #reconnects: Counter;
  #agent: AgentView | null = null;
  #welcomes = 0;

  constructor() {
    const registry = newRegistry();
    this.registry = registry;
    const registers = [registry];
    const vdisks = this.#vdisks;
    new Counter({
      name: 'tabula_agent_ios_total',
      help: 'I/Os submitted to each exported vdisk, by operation (read, write, unmap, flush).',
      labelNames: ['vdisk', 'op'],
      registers,
      collect(this: Counter<'vdisk' | 'op'>) {
        this.reset();
        for (const s of vdisks.values()) {
          this.inc({ vdisk: s.vdisk, op: 'read' }, s.readIos);
          this.inc({ vdisk: s.vdisk, op: 'write' }, s.writeIos);
          this.inc({ vdisk: s.vdisk, op: 'unmap' }, s.unmapIos);
          this.inc({ vdisk: s.vdisk, op: 'flush' }, s.flushes);
        }
      },
    });
    new Counter({
      name: 'tabula_agent_io_bytes_total',
      help: 'Bytes of I/O submitted to each exported vdisk, by operation (read, write, unmap: bytes deallocated).',
      labelNames: ['vdisk', 'op'],
      registers,
      collect(this: Counter<'vdisk' | 'op'>) {
        this.reset();
        for (const s of vdisks.values()) {
          this.inc({ vdisk: s.vdisk, op: 'read' }, s.readBytes);
          this.inc({ vdisk: s.vdisk, op: 'write' }, s.writeBytes);
          this.inc({ vdisk: s.vdisk, op: 'unmap' }, s.unmapBytes);
        }
      },
    });
    new Counter({
      name: 'tabula_agent_io_errors_total',
      help: 'Failed I/Os on each exported vdisk, by kind (read-error, write-error, not-ready, no-space, write-protected, out-of-range, lu-not-supported, internal-failure, unreachable, other-sense; other: not a block error).',
      labelNames: ['vdisk', 'kind'],
      registers,
      collect(this: Counter<'vdisk' | 'kind'>) {
        this.reset();
        for (const s of vdisks.values()) for (const [kind, n] of s.errors) this.inc({ vdisk: s.vdisk, kind }, n);
      },
    });
    const held: Gauge = new Gauge({
      name: 'tabula_agent_held_ios',
      help: 'I/O pieces held now, waiting for a fault answer or a table install.',
      registers,
      collect: () => {
        held.set(this.#agent?.heldIos ?? 0);
      },
    });
    const versions: Gauge<'vdisk'> = new Gauge({
      name: 'tabula_agent_table_version',
      help: 'Version of the mapping table installed for each exported vdisk (absent until the first table, and while fenced).',
      labelNames: ['vdisk'],
      registers,
      collect: () => {
        versions.reset();
        for (const e of this.#agent?.exports() ?? []) if (e.tableVersion !== null) versions.set({ vdisk: e.vdiskName }, e.tableVersion);
      },
    });
    const fenced: Gauge<'vdisk'> = new Gauge({
      name: 'tabula_agent_vdisk_fenced',
      help: '1 while the controller has fenced this agent for the vdisk, else 0.',
      labelNames: ['vdisk'],
      registers,
      collect: () => {
        fenced.reset();
        for (const e of this.#agent?.exports() ?? []) fenced.set({ vdisk: e.vdiskName }, e.fenced ? 1 : 0);
      },
    });
    const connected: Gauge = new Gauge({
      name: 'tabula_agent_controller_connected',
      help: '1 while a registered stream to the controller is up, else 0.',
      registers,
      collect: () => {
        connected.set(this.#agent?.link.connected === true ? 1 : 0);
      },
    });
    this.#reconnects = new Counter({
      name: 'tabula_agent_controller_reconnects_total',
      help: 'Registrations with the controller after the first (the stream broke and came back).',
      registers,
    });
    this.#faults = new Counter({
      name: 'tabula_agent_faults_total',
      help: 'Faults reported to the controller, by the inhibiting segment state.',
      labelNames: ['state'],
      registers,
    });
    for (const s of SEGMENT_STATE_NAMES) this.#stateChild(s);
    const outcomes = new Counter({
      name: 'tabula_agent_fault_outcomes_total',
      help: 'Fault answers by outcome: the controller said retry, fail, wait or done, or the agent gave up (timeout: hold timeout or shutdown).',
      labelNames: ['outcome'],
      registers,
    });
    const byOutcome = {} as Record<Outcome, Child>;
    for (const o of AGENT_FAULT_OUTCOMES) {
      byOutcome[o] = outcomes.labels(o);
      byOutcome[o].inc(0);
    }
    this.#outcomes = byOutcome;
    this.#roundTrip = new Histogram({
      name: 'tabula_agent_fault_round_trip_seconds',
      help: 'From reporting a fault to the controller to its final answer (retry, fail or done).',
      buckets: [...LATENCY_BUCKETS],
      registers,
    });
  }

  /** Wraps a device factory: each device counts its I/O, and its faults are counted on their way out. */
  deviceFactory(inner: DeviceFactory): DeviceFactory {
    return (spec) => {
      const device = inner({ ...spec, faults: this.faultSink(spec.faults) });
      const stats = new VdiskIoStats(spec.vdiskId, spec.vdiskName);
      this.#vdisks.set(spec.vdiskId, stats);
      return new MeteredDevice(device, stats, () => {
        // The export went away: its series go with it (a re-export starts from zero).
        if (this.#vdisks.get(spec.vdiskId) === stats) this.#vdisks.delete(spec.vdiskId);
      });
    };
  }

  /** A FaultSink that counts faults by state, final answers by outcome, and their round-trip time. */
  faultSink(inner: FaultSink): FaultSink {
    const sink: FaultSink = {
      fault: (f) => {
        this.#stateChild(stateLabel(f.state)).inc();
        const start = performance.now();
        return inner.fault(f).then(
          (d: FaultDecision) => {
            this.#outcomes[d.action].inc();
            if (d.action !== 'wait') this.#roundTrip.observe((performance.now() - start) / 1000);
            return d;
          },
          (err: unknown) => {
            this.#outcomes.timeout.inc();
            throw err;
          },
        );
      },
    };
    const release = inner.release;
    // Only when the inner sink has one: a device without release zeroes in place.
    if (release !== undefined) sink.release = (r) => release.call(inner, r);
    return sink;
  }

  /** Starts reading `agent` at scrape time and counting its link's events. Call once, right after the agent starts. */
  observe(agent: AgentView): void {
    this.#agent = agent;
    if (agent.link.connected) this.#welcomes = 1;
    agent.link.on('welcome', () => {
      if (this.#welcomes++ > 0) this.#reconnects.inc();
    });
    // WAIT keeps a fault held in the fault channel, so the sink never sees it: count it off the wire.
    agent.link.on('faultReply', (r) => {
      if (r.action === FaultAction.Wait) this.#outcomes.wait.inc();
    });
  }

  #stateChild(state: string): Child {
    let c = this.#faultsByState.get(state);
    if (c === undefined) {
      c = this.#faults.labels(state);
      c.inc(0);
      this.#faultsByState.set(state, c);
    }
    return c;
  }
}
