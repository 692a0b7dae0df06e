// The agent daemon's core: turns what the controller says into LUNs and
// tables, and keeps serving whatever it holds while the controller is away.
//
// - ExportSet: the complete set of LUNs; each vdisk gets one device (created
//   once, kept across reconnects and LUN moves) placed as a LUN of its target.
// - TableFull / TableDelta: applied strictly in arrival order per vdisk; the
//   ack for version V goes out only after the device reports that old-version
//   I/O on the changed segments has drained (docs/architecture.md, "Table changes and
//   acks"). A delta that
//   does not start at the held version asks for the whole table, once.
// - Fence: the vdisk's segments are invalid at once; deltas are ignored until
//   the full table that the TableRequest brings.
// - LU state (TableFull.lu_state, TableDelta.lu): installed in the vdisk's
//   reservation replica before the ack, and the delta's unit attentions
//   raised on this agent's nexuses (lu-channel.ts sends the requests).
// - CopyCommand: run, then CopyDone.
// - ZeroCommand (scrub of freed space): zero the range durably, then CopyDone.
// - Reconnect: Register lists the tables held (not fenced ones) so the
//   controller can send deltas; the fault channel re-sends held faults.
// - Containers: rescanned on Rescan (a container was added), on SIGHUP
//   (rescan) and every rescanIntervalMs; what changed, and any change of a
//   container's reachability, goes to the controller as ContainerUpdate.
//   ContainerSet says which are shared (reopened with O_DIRECT) and which
//   are near (this agent's failure domain); the devices ask AgentContainers
//   (their resolver) near() and reachable() to pick a mirrored read's leg.
// - Lease (Welcome.lease_ms): when it has expired, the link starts a resync
//   once the controller answers a heartbeat again (every table sent before
//   that answer has arrived); it is confirmed once those tables are
//   installed and acked and no vdisk still waits for a requested TableFull.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { VersionGapError, type Extent, type MappingTable, type TableDelta } from '../table/index.js';
import type { ContainerResolver } from '../container/driver.js';
import type { IscsiSettings } from '../iscsi/settings.js';
import type { ClientOptions } from '../wire/grpc.js';
import type { ContainerRef, CopyCommand, Export, ExportSet, Fence, LuChange, TableDeltaMsg, TableFull, TableVersion, WireExtent, ZeroCommand } from '../wire/proto-types.js';
import type { AccessState } from '../scsi/lu-api.js';
import { registerDrain } from '../util/graceful.js';
import { luEventFromWire, luStateFromWire, luStateToWire } from '../wire/lu-state.js';
import { fromWireExtent } from '../wire/table-extents.js';
import { Reservations, emptyLuReservationState } from '../scsi/reservations.js';
import { log } from '../util/log.js';
import type { BackoffOptions } from './backoff.js';
import { AgentContainers, type AgentContainersOptions } from './containers.js';
import { ControllerLink, DEFAULT_WELCOME_TIMEOUT_MS } from './controller-link.js';
import { runCopy } from './copy.js';
import { runZero } from './zero.js';
import { placeholderTable, vdiskDeviceFactory, type AgentDevice, type DeviceFactory } from './device-port.js';
import { LazyVersions, SyncChannel, wireSyncSink, type SyncSink } from './durable-sync.js';
import type { FaultSink } from './fault.js';
import { FaultChannel, wireFaultSink } from './fault-channel.js';
import { LuChannel } from './lu-channel.js';
import { TableAssembly, continuesTable } from './table-assembly.js';
import { DEFAULT_HOLD_TIMEOUT_MS } from './vdisk-device.js';
import { AgentTargets, formatAddress, type AgentIscsiAuth, type PortalAddress } from './targets.js';

const AGENT_NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

export interface AgentOptions extends ClientOptions {
  /** Controller address, HOST:PORT. */
  controller: string;
  name: string;
  portals: PortalAddress[];
  /** `--containers` locators: globs of files and block devices, iscsi:// URLs. */
  containers: string[];
  /** How iscsi:// locators are reached (initiator settings), and test hooks. */
  containerOptions?: AgentContainersOptions;
  /** Register.host_id (default: defaultHostId()). */
  hostId?: string;
  /** Scan the locators again this often (default 60 s; 0 = only on Rescan and SIGHUP). */
  rescanIntervalMs?: number;
  /** How often the containers' reachability is looked at (default 1 s). */
  reachabilityPollMs?: number;
  /** Overrides the controller's Welcome.hold_timeout_ms when set. */
  holdTimeoutMs?: number;
  /** Default: VdiskDevice. */
  deviceFactory?: DeviceFactory;
  backoff?: BackoffOptions;
  welcomeTimeoutMs?: number;
  iscsiSettings?: Partial<IscsiSettings>;
  /** CHAP for every target this agent serves and for discovery (agent-local, not from the controller). */
  iscsiAuth?: AgentIscsiAuth;
  softwareVersion?: string;
  /** How long a lazily committed table version waits before it is asked about in the background (default BACKGROUND_ASK_MS, 100 ms; 0: never). */
  backgroundSyncMs?: number;
}

/** One exported vdisk as the agent holds it. */
interface ServedVdisk {
  exp: Export;
  device: AgentDevice;
  /** Table operations of this vdisk, one after the other. */
  queue: Promise<void>;
  /** Operations in `queue` not yet finished: with none, a delta may be applied at once. */
  pending: number;
  fenced: boolean;
  /** A TableFull has been installed since the device was made or last fenced. */
  loaded: boolean;
  /** Counts fences: an install that a fence overtook must not lift it. */
  fences: number;
  /** A TableRequest is out; further gaps wait for its TableFull. */
  requested: boolean;
  removed: boolean;
  /** A TableFull arriving in pieces, until its last one. */
  assembly: TableAssembly | null;
  /** The LU's reservation state: the controller's, as last installed; changes go to the controller. */
  gate: Reservations;
  /** Versions that came lazy and are not confirmed durable (SYNCHRONIZE CACHE and FUA writes wait for them). */
  lazy: LazyVersions;
}

export interface ExportStatus {
  vdiskId: string;
  vdiskName: string;
  targetIqn: string;
  lun: number;
  tableVersion: number | null;
  fenced: boolean;
}

export const DEFAULT_RESCAN_INTERVAL_MS = 60_000;
/** How long Register waits for a rescan before going with the containers already open (at most half the Welcome timeout). */
const REGISTER_SCAN_WAIT_MS = 3000;
const DEFAULT_REACHABILITY_POLL_MS = 1000;

/**
 * The host this agent runs on, stable across restarts: /etc/machine-id
 * (systemd's, unique per installation), else the host name. Agents with the
 * same host id share a page cache, so their containers are not shared.
 */
export function defaultHostId(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): string {
  try {
    const id = read('/etc/machine-id').trim();
    if (id !== '') return id;
  } catch {
    // no machine id (a container image, another OS): the host name
  }
  return hostname();
}

function toExtent(e: WireExtent): Extent {
  return fromWireExtent(e); // legs included (mirrored vdisks)
}

/** Same initiator names, in any order (an older controller may send none: undefined). */
function sameNames(a: readonly string[] | undefined, b: readonly string[] | undefined): boolean {
  const x = [...(a ?? [])].sort();
  const y = [...(b ?? [])].sort();
  return x.length === y.length && x.every((n, i) => n === y[i]);
}

function exportProblem(e: Export): string | null {
  if (!e.vdiskId) return 'no vdisk id';
  if (!e.targetIqn) return 'no target name';
  if (!Number.isInteger(e.lun) || e.lun < 0 || e.lun > 16383) return `LUN ${e.lun} out of range 0..16383`;
  if (e.blockSize !== 512 && e.blockSize !== 4096) return `block size ${e.blockSize} is not 512 or 4096`;
  if (!Number.isInteger(e.segmentSize) || e.segmentSize <= 0 || (e.segmentSize & (e.segmentSize - 1)) !== 0) {
    return `segment size ${e.segmentSize} is not a power of two`;
  }
  if (e.segmentSize % e.blockSize !== 0) return `segment size ${e.segmentSize} is not a multiple of block size ${e.blockSize}`;
  if (!Number.isSafeInteger(e.size) || e.size < 0 || e.size % e.blockSize !== 0) return `size ${e.size} is not a whole number of blocks`;
  return null;
}

export class Agent {
  readonly name: string;
  readonly link: ControllerLink;
  readonly faults: FaultChannel;
  /** LU state requests to the controller (PROUT, RESERVE, RELEASE, LU-scoped task management). */
  readonly lu: LuChannel;
  /** Durability requests for lazily committed table versions (durable-sync.ts). */
  readonly syncs: SyncChannel;
  readonly #sink: FaultSink;
  readonly #syncSink: SyncSink;
  readonly containers: AgentContainers;
  readonly targets: AgentTargets;
  readonly #opts: AgentOptions;
  readonly #held = new Map<string, ServedVdisk>();
  #holdTimeoutMs: number;
  #closed = false;
  /** The lease resync waiting for tables (0: none). */
  #resyncEpoch = 0;
  readonly #unregisterDrain: () => void;
  /** The container list the controller has now (Register or the last ContainerUpdate), as JSON; null on no stream. */
  #reported: string | null = null;
  #rescanTimer: NodeJS.Timeout | null = null;
  #reachTimer: NodeJS.Timeout | null = null;

  private constructor(opts: AgentOptions, targets: AgentTargets, containers: AgentContainers) {
    this.#opts = opts;
    this.targets = targets;
    const portals = targets.portals;
    this.name = opts.name;
    this.containers = containers;
    this.#holdTimeoutMs = opts.holdTimeoutMs ?? DEFAULT_HOLD_TIMEOUT_MS;
    this.link = new ControllerLink({
      controller: opts.controller,
      agentName: opts.name,
      portals: portals.map(formatAddress),
      registration: () => this.#registration(),
      heldIos: () => this.heldIos,
      backoff: opts.backoff,
      welcomeTimeoutMs: opts.welcomeTimeoutMs,
      softwareVersion: opts.softwareVersion,
      hostId: opts.hostId ?? defaultHostId(),
      token: opts.token,
      credentials: opts.credentials,
    });
    this.faults = new FaultChannel(this.link);
    this.#sink = wireFaultSink(this.faults, () => this.#holdTimeoutMs);
    this.lu = new LuChannel(this.link, () => this.#holdTimeoutMs);
    this.syncs = new SyncChannel(this.link);
    this.#syncSink = wireSyncSink(this.syncs);
    this.link.on('welcome', (w) => {
      if (opts.holdTimeoutMs === undefined && w.holdTimeoutMs > 0) this.#holdTimeoutMs = w.holdTimeoutMs;
      // Before the ExportSet that follows: targets are made with this identity.
      this.targets.setAgentNumber(w.agentNumber ?? 0);
      // Whatever was requested on the old stream is answered on the new one from Register.
      for (const h of this.#held.values()) h.requested = h.fenced;
    });
    this.link.on('exportSet', (s) => this.#onExportSet(s));
    this.link.on('tableFull', (t) => this.#onTableFull(t));
    this.link.on('tableDelta', (d) => this.#onTableDelta(d));
    this.link.on('fence', (f) => this.#onFence(f));
    this.link.on('copyCommand', (c) => this.#onCopy(c));
    this.link.on('zeroCommand', (z) => this.#onZero(z));
    this.link.on('rescan', (r) => void this.rescan(`controller: ${r.reason}`));
    this.link.on('containerSet', (c) => {
      this.containers.setShared(c.containers).catch((err: Error) => log.error('applying the ContainerSet', { err: err.message }));
    });
    this.link.on('disconnected', () => {
      this.#reported = null;
    });
    const every = opts.rescanIntervalMs ?? DEFAULT_RESCAN_INTERVAL_MS;
    if (every > 0) {
      this.#rescanTimer = setInterval(() => void this.rescan('periodic'), every);
      this.#rescanTimer.unref();
    }
    this.#reachTimer = setInterval(() => this.#reportContainers(this.containers.refs()), opts.reachabilityPollMs ?? DEFAULT_REACHABILITY_POLL_MS);
    this.#reachTimer.unref();
    this.link.lease.onResync((epoch) => void this.#confirmResync(epoch));
    // SIGTERM: the controller hears of the drain at once, so the other paths
    // report this agent's port groups transitioning while the portals drain.
    this.#unregisterDrain = registerDrain(async () => this.link.setDraining());
  }

  /** Opens containers, listens on the portals, and starts talking to the controller (in the background). */
  static async start(opts: AgentOptions): Promise<Agent> {
    if (!AGENT_NAME_RE.test(opts.name)) throw new Error(`agent name "${opts.name}" invalid: use 1-64 of A-Z a-z 0-9 . _ -`);
    // Without agent.iscsi settings, I/O to an unreachable LUN is still held as long as faulted I/O (--hold-timeout).
    const iscsiHold = opts.holdTimeoutMs === undefined ? undefined : { iscsi: { holdMs: opts.holdTimeoutMs } };
    const containers = new AgentContainers(opts.containers, opts.containerOptions ?? iscsiHold);
    await containers.refresh();
    const targets = new AgentTargets(opts.iscsiAuth);
    let portals: PortalAddress[];
    try {
      portals = await targets.listen(opts.portals, opts.iscsiSettings);
    } catch (err) {
      await containers.close();
      throw err;
    }
    const agent = new Agent(opts, targets, containers);
    agent.link.start();
    log.info('agent started', { name: opts.name, portals: portals.map(formatAddress), controller: opts.controller });
    return agent;
  }

  get portals(): PortalAddress[] {
    return this.targets.portals;
  }

  /** I/O pieces held across every export (waiting for fault replies or table installs). */
  get heldIos(): number {
    let n = 0;
    for (const h of this.#held.values()) n += h.device.heldCount;
    return n;
  }

  get holdTimeoutMs(): number {
    return this.#holdTimeoutMs;
  }

  exports(): ExportStatus[] {
    return [...this.#held.values()].map((h) => ({
      vdiskId: h.exp.vdiskId,
      vdiskName: h.exp.vdiskName,
      targetIqn: h.exp.targetIqn,
      lun: h.exp.lun,
      tableVersion: h.loaded && !h.fenced ? h.device.version : null,
      fenced: h.fenced,
    }));
  }

  /** The device of an exported vdisk (diagnostics and tests). */
  device(vdiskId: string): AgentDevice | undefined {
    return this.#held.get(vdiskId)?.device;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#rescanTimer) clearInterval(this.#rescanTimer);
    if (this.#reachTimer) clearInterval(this.#reachTimer);
    this.#unregisterDrain();
    await this.link.close();
    this.faults.close();
    this.lu.close();
    this.syncs.close();
    await this.targets.close();
    const held = [...this.#held.values()];
    this.#held.clear();
    await Promise.all(held.map((h) => this.#closeDevice(h)));
    await this.containers.close();
    log.info('agent stopped', { name: this.name });
  }

  // ---- containers ----

  /**
   * Scans the container locators again (Rescan, SIGHUP, the timer) and tells
   * the controller what changed. Resolves with the containers as reported.
   */
  async rescan(why: string): Promise<ContainerRef[]> {
    if (this.#closed) return [];
    log.info('rescanning containers', { why });
    let refs: ContainerRef[];
    try {
      refs = await this.containers.refresh();
    } catch (err) {
      log.error('container rescan failed', { why, err: (err as Error).message });
      return this.containers.refs();
    }
    this.#reportContainers(refs, why.startsWith('controller:'));
    return refs;
  }

  /** ContainerUpdate when the list differs from what the controller has (always when it asked). */
  #reportContainers(refs: ContainerRef[], asked = false): void {
    if (this.#reported === null || this.#closed) return; // no stream: the next Register carries them
    const now = JSON.stringify(refs);
    if (now === this.#reported && !asked) return;
    if (this.link.send({ body: 'containerUpdate', containerUpdate: { containers: refs } })) this.#reported = now;
  }

  // ---- registration ----

  async #registration(): Promise<{ containers: Awaited<ReturnType<AgentContainers['refresh']>>; tables: TableVersion[] }> {
    // A storage node that is away can make a scan slow (connect timeouts):
    // registering must not wait for it past the Welcome timeout, or an agent
    // could never reconnect while one node is down. It registers with the
    // containers it has; the scan's findings follow as a ContainerUpdate.
    const scan = this.containers.refresh();
    const waitMs = Math.min(REGISTER_SCAN_WAIT_MS, (this.#opts.welcomeTimeoutMs ?? DEFAULT_WELCOME_TIMEOUT_MS) / 2);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), waitMs);
      timer.unref();
    });
    let containers = await Promise.race([scan, late]);
    clearTimeout(timer);
    if (containers === null) {
      log.warn('container scan still running: registering with the containers already open', { waitedMs: waitMs });
      containers = this.containers.refs();
      void scan.then(
        (refs) => this.#reportContainers(refs),
        (err: Error) => log.error('container scan failed', { err: err.message }),
      );
    }
    this.#reported = JSON.stringify(containers);
    const tables: TableVersion[] = [];
    for (const h of this.#held.values()) {
      if (h.loaded && !h.fenced) tables.push({ vdiskId: h.exp.vdiskId, version: h.device.version });
    }
    return { containers, tables };
  }

  // ---- exports ----

  #onExportSet(set: ExportSet): void {
    const wanted = new Map<string, Export>();
    const places = new Set<string>();
    for (const e of set.exports) {
      const problem = exportProblem(e);
      const place = `${e.targetIqn}|${e.lun}`;
      if (problem === null && wanted.has(e.vdiskId)) {
        log.warn('export set names a vdisk twice; keeping the first', { vdisk: e.vdiskId });
      } else if (problem === null && places.has(place)) {
        log.warn('export set puts two vdisks on one LUN; keeping the first', { target: e.targetIqn, lun: e.lun, vdisk: e.vdiskId });
      } else if (problem !== null) {
        log.warn('export ignored', { vdisk: e.vdiskId, name: e.vdiskName, problem });
      } else {
        wanted.set(e.vdiskId, e);
        places.add(place);
      }
    }
    // Removals and moves first, so a LUN freed here can be taken below.
    for (const [id, h] of [...this.#held]) {
      const e = wanted.get(id);
      if (e === undefined || e.blockSize !== h.exp.blockSize || e.segmentSize !== h.exp.segmentSize) {
        this.targets.removeLun(h.exp.targetIqn, h.exp.lun);
        this.#held.delete(id);
        h.removed = true;
        void this.#closeDevice(h);
        log.info('export removed', { vdisk: h.exp.vdiskName, id, target: h.exp.targetIqn, lun: h.exp.lun });
      } else if (e.targetIqn !== h.exp.targetIqn || e.lun !== h.exp.lun || e.readOnly !== h.exp.readOnly || !sameNames(e.allowedInitiators, h.exp.allowedInitiators)) {
        this.targets.removeLun(h.exp.targetIqn, h.exp.lun);
        h.exp = { ...e, targetIqn: '' }; // placed again below
      } else {
        h.exp = e;
      }
      if (e !== undefined && !h.removed) h.device.setSharing?.(exportersOf(e), e.ownPortGroup ?? 0);
    }
    for (const e of wanted.values()) {
      let h = this.#held.get(e.vdiskId);
      if (h !== undefined && h.exp.targetIqn !== '') continue;
      if (h === undefined) {
        let device: AgentDevice;
        const lazy = new LazyVersions(e.vdiskId, { sink: this.#syncSink, name: e.vdiskName, backgroundAskMs: this.#opts.backgroundSyncMs });
        try {
          const table = placeholderTable({
            segmentCount: Math.ceil(e.size / e.segmentSize),
            segmentSize: e.segmentSize,
            blockSize: e.blockSize,
            name: e.vdiskName,
          });
          device = (this.#opts.deviceFactory ?? vdiskDeviceFactory)({
            vdiskId: e.vdiskId,
            vdiskName: e.vdiskName,
            table,
            readOnly: e.readOnly,
            faults: this.#sink,
            containers: this.containers as ContainerResolver,
            holdTimeoutMs: this.#holdTimeoutMs,
            lease: this.link.lease,
            exporters: exportersOf(e),
            ownerId: e.ownPortGroup ?? 0,
            lazyVersions: lazy,
          });
          // Fenced until the first TableFull: holds I/O, and lets that table install whatever its version.
          device.fence();
        } catch (err) {
          log.error('cannot create the device for an export', { vdisk: e.vdiskName, id: e.vdiskId, err: (err as Error).message });
          continue;
        }
        const gate = new Reservations();
        gate.authority = this.lu.authority(e.vdiskId);
        h = { exp: e, device, queue: Promise.resolve(), pending: 0, fenced: false, loaded: false, fences: 0, requested: false, removed: false, assembly: null, gate, lazy };
        this.#held.set(e.vdiskId, h);
      }
      h.exp = e;
      try {
        this.targets.addLun(
          {
            targetIqn: e.targetIqn,
            lun: e.lun,
            readOnly: e.readOnly,
            lunId: e.vdiskId,
            allowedInitiators: e.allowedInitiators,
            unmapGranularityBlocks: e.segmentSize / e.blockSize,
            reservations: h.gate,
          },
          h.device,
        );
        log.info('export added', { vdisk: e.vdiskName, id: e.vdiskId, target: e.targetIqn, lun: e.lun, readOnly: e.readOnly });
      } catch (err) {
        log.error('cannot place an export', { vdisk: e.vdiskName, target: e.targetIqn, lun: e.lun, err: (err as Error).message });
        this.#held.delete(e.vdiskId);
        h.removed = true;
        void this.#closeDevice(h);
      }
    }
    for (const e of wanted.values()) if (this.#held.has(e.vdiskId)) this.#applyPortGroups(e);
  }

  /** The vdisk's port groups (every agent's path with its state) on its LU; the LU raises 2A/06 when a state changed. */
  #applyPortGroups(e: Export): void {
    const groups = e.portGroups ?? [];
    if (groups.length === 0) return;
    const changed = this.targets.setPortGroups(
      e.targetIqn,
      e.lun,
      groups.map((g) => ({ id: g.id, relativePortIds: g.relativePortIds, state: g.state as number as AccessState })),
    );
    if (changed) {
      log.info('port groups changed: asymmetric access state changed', {
        vdisk: e.vdiskName,
        groups: groups.map((g) => `${g.agent}(${g.id}${g.id === e.ownPortGroup ? ', this agent' : ''}): ${g.state}`),
      });
    }
  }

  async #closeDevice(h: ServedVdisk): Promise<void> {
    h.lazy.close();
    try {
      await h.device.close();
    } catch (err) {
      log.warn('closing a vdisk device', { vdisk: h.exp.vdiskName, err: (err as Error).message });
    }
  }

  // ---- tables ----

  #heldFor(vdiskId: string, what: string): ServedVdisk | undefined {
    const h = this.#held.get(vdiskId);
    if (h === undefined) log.warn(`${what} for a vdisk this agent does not export: ignored`, { vdisk: vdiskId });
    return h;
  }

  /** Runs table operations of one vdisk in arrival order; a failure is logged, never thrown. */
  #enqueue(h: ServedVdisk, what: string, op: () => Promise<void>): void {
    h.pending++;
    h.queue = h.queue.then(async () => {
      try {
        if (h.removed || this.#closed) return;
        await op();
      } catch (err) {
        log.error(`${what} failed`, { vdisk: h.exp.vdiskName, id: h.exp.vdiskId, err: (err as Error).message });
      } finally {
        h.pending--;
      }
    });
  }

  #ack(h: ServedVdisk, version: number): void {
    // Not connected: the version goes in the next Register instead.
    this.link.sendTableAck(h.exp.vdiskId, version);
  }

  #requestTable(h: ServedVdisk, reason: string): void {
    if (h.requested) return;
    h.requested = true;
    const haveVersion = h.loaded && !h.fenced ? h.device.version : 0;
    log.info('asking for the whole table', { vdisk: h.exp.vdiskName, haveVersion, reason });
    this.link.send({ body: 'tableRequest', tableRequest: { vdiskId: h.exp.vdiskId, haveVersion, reason } });
  }

  #onTableFull(t: TableFull): void {
    const h = this.#heldFor(t.vdiskId, 'TableFull');
    if (h === undefined) return;
    const e = h.exp;
    if (t.segmentSize !== e.segmentSize || t.blockSize !== e.blockSize) {
      log.error('TableFull geometry differs from the export: ignored', {
        vdisk: e.vdiskName,
        table: { segmentSize: t.segmentSize, blockSize: t.blockSize },
        export: { segmentSize: e.segmentSize, blockSize: e.blockSize },
      });
      return;
    }
    // Built in the vdisk's queue, in slices with yields (table-assembly.ts):
    // a big table must not stop the other LUNs.
    this.#enqueue(h, `installing table version ${t.version}`, async () => {
      let a: TableAssembly;
      if (continuesTable(t)) {
        const why = h.assembly === null ? 'no table is being received' : h.assembly.mismatch(t);
        if (h.assembly === null || why !== null) {
          h.assembly = null;
          log.warn('TableFull piece does not continue a table: ignored', { vdisk: e.vdiskName, version: t.version, from: t.firstSegment, why });
          this.#requestTable(h, `TableFull piece at segment ${t.firstSegment ?? 0} of version ${t.version}: ${why}`);
          return;
        }
        a = h.assembly;
      } else {
        if (h.assembly !== null) log.warn('TableFull replaces one not yet complete', { vdisk: e.vdiskName, version: t.version, incomplete: h.assembly.version });
        a = new TableAssembly(t, e.vdiskName);
        h.assembly = a;
      }
      let table: MappingTable;
      try {
        await a.add(t);
        if (t.more === true) return;
        table = a.finish();
      } catch (err) {
        if (h.assembly === a) h.assembly = null;
        log.error('malformed TableFull: ignored', { vdisk: e.vdiskName, version: t.version, err: (err as Error).message });
        return;
      } finally {
        if (t.more !== true && h.assembly === a) h.assembly = null;
      }
      const have = h.device.version;
      if (h.loaded && !h.fenced && t.version < have) {
        log.warn('TableFull older than the table held: ignored', { vdisk: e.vdiskName, version: t.version, have });
        this.#ack(h, have);
        return;
      }
      const fences = h.fences;
      h.lazy.wholeTable(t.version, t.lazy === true, have);
      await h.device.installTable(table);
      // Drained too: no write goes through the replaced table any more.
      h.lazy.tableInstalled();
      if (this.#overtakenByFence(h, fences)) return;
      h.fenced = false;
      h.loaded = true;
      h.requested = false;
      // Absent: the controller has no LU state for the vdisk (nothing ever reserved), the empty state.
      this.#applyLuChange(h, { state: t.luState ?? luStateToWire(emptyLuReservationState()), events: [] });
      log.info('table installed', { vdisk: e.vdiskName, version: t.version, segments: t.segmentCount });
      this.#ack(h, t.version);
      // A resync may have waited for this table.
      if (this.#resyncEpoch !== 0) void this.#confirmResync(this.#resyncEpoch);
    });
  }

  /**
   * Confirms the lease resync `epoch` once every table operation queued so
   * far has run and no (unfenced) vdisk still waits for a requested
   * TableFull; otherwise the next table install tries again.
   */
  async #confirmResync(epoch: number): Promise<void> {
    this.#resyncEpoch = epoch;
    await Promise.all([...this.#held.values()].map((h) => h.queue));
    if (this.#closed || this.#resyncEpoch !== epoch) return;
    if ([...this.#held.values()].some((h) => h.requested && !h.fenced)) return;
    this.#resyncEpoch = 0;
    this.link.lease.confirm(epoch);
  }

  #onTableDelta(d: TableDeltaMsg): void {
    const h = this.#heldFor(d.vdiskId, 'TableDelta');
    if (h === undefined) return;
    // Before it is applied: no flush may complete under it without asking.
    if (d.lazy === true) h.lazy.lazyDelta(d.toVersion);
    const delta: TableDelta = {
      fromVersion: d.fromVersion,
      toVersion: d.toVersion,
      segmentCount: d.segmentCount,
      extents: d.extents.map(toExtent),
    };
    // Nothing queued before it and nothing to drain (the common case): applied
    // and acked in this turn. Each of a vdisk's holders runs this once per
    // change, too rarely for V8 to optimise a chain of promise turns.
    if (h.pending === 0 && !h.removed && !this.#closed && this.#applyDeltaNow(h, d, delta)) return;
    this.#enqueue(h, `applying delta ${d.fromVersion}->${d.toVersion}`, async () => {
      if (this.#deltaSettled(h, d)) return;
      const fences = h.fences;
      try {
        await h.device.applyDelta(delta);
        if (this.#overtakenByFence(h, fences)) return;
      } catch (err) {
        this.#deltaRejected(h, d, err);
        return;
      }
      this.#deltaApplied(h, d);
    });
  }

  /** The delta applied synchronously, or dealt with without applying it: true; false to queue it (something must drain). */
  #applyDeltaNow(h: ServedVdisk, d: TableDeltaMsg, delta: TableDelta): boolean {
    const now = h.device.applyDeltaNow;
    if (now === undefined) return false;
    if (this.#deltaSettled(h, d)) return true;
    try {
      if (!now.call(h.device, delta)) return false;
    } catch (err) {
      this.#deltaRejected(h, d, err);
      return true;
    }
    this.#deltaApplied(h, d);
    return true;
  }

  /** A delta that needs no install: ignored while fenced, a TableRequest without a table, a repeat acked again. */
  #deltaSettled(h: ServedVdisk, d: TableDeltaMsg): boolean {
    if (h.fenced) {
      log.debug('delta for a fenced vdisk ignored (waiting for the whole table)', { vdisk: h.exp.vdiskName });
      return true;
    }
    if (!h.loaded) {
      this.#requestTable(h, `delta ${d.fromVersion}->${d.toVersion} but no table held`);
      return true;
    }
    const have = h.device.version;
    if (d.toVersion <= have) {
      // Already there (a repeat): the drain it needs has happened.
      this.#ack(h, have);
      return true;
    }
    return false;
  }

  #deltaRejected(h: ServedVdisk, d: TableDeltaMsg, err: unknown): void {
    if (err instanceof VersionGapError) {
      this.#requestTable(h, err.message);
      return;
    }
    // Malformed: the table is unchanged; only a whole table can resync it.
    this.#requestTable(h, `delta ${d.fromVersion}->${d.toVersion} rejected: ${(err as Error).message}`);
  }

  #deltaApplied(h: ServedVdisk, d: TableDeltaMsg): void {
    if (d.lazy !== true) h.lazy.durableDelta(d.toVersion);
    if (d.lu) this.#applyLuChange(h, d.lu);
    this.#ack(h, d.toVersion);
  }

  /**
   * A version's LU change: the new state goes into the replica, and its
   * unit attentions to this agent's nexuses of the LU (each agent raises
   * them on its own); an LU reset or CLEAR TASK SET aborts the LU's tasks
   * here too, and PREEMPT AND ABORT the preempted nexus's tasks.
   */
  #applyLuChange(h: ServedVdisk, lu: LuChange): void {
    try {
      if (lu.state) h.gate.install(luStateFromWire(lu.state));
      const unit = this.targets.logicalUnit(h.exp.targetIqn, h.exp.lun);
      for (const m of lu.events) {
        const ev = luEventFromWire(m);
        unit?.raiseUnitAttention(ev.code, ev.scope);
        if (ev.abortTasks) {
          void this.targets.abortLunTasks(h.exp.targetIqn, h.exp.lun, ev.scope.only?.id).catch((err: Error) => {
            log.warn('aborting tasks for an LU event (reset, CLEAR TASK SET, PREEMPT AND ABORT)', { vdisk: h.exp.vdiskName, err: err.message });
          });
        }
      }
    } catch (err) {
      // Malformed names in the state: keep the last state (READ/WRITE go on under it).
      log.error('LU state of a delta not installed', { vdisk: h.exp.vdiskName, err: (err as Error).message });
    }
  }

  /**
   * A Fence arrived while an install was draining: the install may have
   * lifted the device's fence, but the controller may already have moved on
   * from that table. Fence again and do not ack; the requested TableFull
   * follows.
   */
  #overtakenByFence(h: ServedVdisk, fencesBefore: number): boolean {
    if (h.fences === fencesBefore) return false;
    h.device.fence();
    log.info('table install overtaken by a fence: not acked', { vdisk: h.exp.vdiskName });
    return true;
  }

  #onFence(f: Fence): void {
    const h = this.#heldFor(f.vdiskId, 'Fence');
    if (h === undefined) return;
    // At once, not queued: a fenced agent must stop using its table now.
    h.device.fence();
    h.fenced = true;
    h.loaded = false;
    h.fences++;
    // The table being received predates the fence; the requested one replaces it.
    h.assembly = null;
    h.requested = false;
    log.warn('vdisk fenced by the controller', { vdisk: h.exp.vdiskName, reason: f.reason });
    this.#requestTable(h, `fenced: ${f.reason}`);
  }

  // ---- commands ----

  #onCopy(c: CopyCommand): void {
    void runCopy(c, this.containers).then((done) => {
      if (!done.ok) log.error('copy failed', { commandId: c.commandId, err: done.error });
      if (!this.link.send({ body: 'copyDone', copyDone: done })) {
        log.warn('copy finished while the controller is away; it will ask again', { commandId: c.commandId, ok: done.ok });
      }
    });
  }

  #onZero(z: ZeroCommand): void {
    void runZero(z, this.containers).then((done) => {
      if (!done.ok) log.error('zero failed', { commandId: z.commandId, err: done.error });
      if (!this.link.send({ body: 'copyDone', copyDone: done })) {
        log.warn('zero finished while the controller is away; it will ask again', { commandId: z.commandId, ok: done.ok });
      }
    });
  }
}

/**
 * Agents exporting the vdisk: one port group each (Export.port_groups; none
 * from a controller without ALUA: treat as one). Above one, COMPARE AND WRITE
 * needs write ownership of its segment, which names this agent by its own
 * port group id, its agent number.
 */
function exportersOf(e: Export): number {
  return Math.max(1, e.portGroups?.length ?? 0);
}
