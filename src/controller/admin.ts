// AdminService: the operations behind the `tabula` CLI, over the database
// and the controller core. `Admin` has one method per RPC (named as in the
// .proto) so `tabula up` and tests can call it without gRPC;
// `adminImplementation` wraps it for the gRPC server and maps errors to
// status codes with one-line messages.

import * as grpc from '@grpc/grpc-js';
import {
  BLOCK_SIZES,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_SEGMENT_SIZE,
  MAX_SEGMENT_COUNT,
  SEGMENT_STATE_NAMES,
  SegmentState,
  checkGeometry,
  formatTable,
  isSegmentState,
  segmentStateName,
  toExtents,
} from '../table/index.js';
import type {
  AddContainerRequest,
  AddExportRequest,
  AdminMethod,
  AdminMethods,
  AgentInfo,
  CheckReply,
  ContainerInfo,
  CreateVdiskRequest,
  Empty,
  ExportInfo,
  GetTableRequest,
  ListAgentsReply,
  ListContainersReply,
  ListExportsReply,
  ListExportsRequest,
  ListFaultsReply,
  ListFaultsRequest,
  ListVdisksReply,
  RemoveContainerRequest,
  RemoveExportRequest,
  ResizeVdiskRequest,
  SetSegmentStateRequest,
  TableReply,
  VdiskInfo,
  VdiskRef,
} from '../wire/proto-types.js';
import { adminServiceDefinition } from '../wire/grpc.js';
import { formatSize, SizeError } from '../util/size.js';
import { log } from '../util/log.js';
import { ContainerFullError } from './allocator.js';
import { checkInvariants } from './check.js';
import { TableChangeError, type ContainerRow, type ExportRow, type VdiskRow } from './db.js';
import { wireExtent, type Controller } from './service.js';
import { randomUUID } from 'node:crypto';

export const DEFAULT_IQN_PREFIX = 'iqn.2026-11.org.tabula:';

export function defaultTargetIqn(vdiskName: string): string {
  return `${DEFAULT_IQN_PREFIX}${vdiskName.toLowerCase()}`;
}

const VDISK_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const IQN_RE = /^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?)$/;
const CONTAINER_ID_RE = /^[0-9A-Za-z][0-9A-Za-z-]{0,63}$/;

/** An admin error with the gRPC status it maps to. */
export class AdminError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = 'AdminError';
  }
}

const invalid = (m: string) => new AdminError(grpc.status.INVALID_ARGUMENT, m);
const notFound = (m: string) => new AdminError(grpc.status.NOT_FOUND, m);
const precondition = (m: string) => new AdminError(grpc.status.FAILED_PRECONDITION, m);
const exists = (m: string) => new AdminError(grpc.status.ALREADY_EXISTS, m);

/** Maps any error to a gRPC status code and a one-line message. */
export function toStatus(err: unknown): { code: grpc.status; details: string } {
  const msg = (err as Error)?.message ?? String(err);
  if (err instanceof AdminError) return { code: err.code, details: msg };
  if (err instanceof ContainerFullError) return { code: grpc.status.RESOURCE_EXHAUSTED, details: msg };
  if (err instanceof TableChangeError || err instanceof RangeError || err instanceof SizeError) {
    return { code: grpc.status.INVALID_ARGUMENT, details: msg };
  }
  if (/UNIQUE constraint failed/.test(msg)) return { code: grpc.status.ALREADY_EXISTS, details: msg };
  return { code: grpc.status.INTERNAL, details: msg };
}

function num(n: number | undefined, dflt: number): number {
  return n === undefined || n === 0 ? dflt : n;
}

export class Admin {
  readonly #ctrl: Controller;

  constructor(ctrl: Controller) {
    this.#ctrl = ctrl;
  }

  get #db() {
    return this.#ctrl.db;
  }

  #vdisk(ref: string | undefined): VdiskRow {
    if (!ref) throw invalid('vdisk name missing');
    const v = this.#db.findVdisk(ref);
    if (!v) throw notFound(`unknown vdisk ${ref}`);
    return v;
  }

  // ---- containers ----

  AddContainer(r: Partial<AddContainerRequest>): ContainerInfo {
    const id = r.id ?? '';
    if (!CONTAINER_ID_RE.test(id)) throw invalid(`bad container id "${id}": expected the UUID from the container label`);
    const size = r.size ?? 0;
    const dataOffset = r.dataOffset ?? 0;
    const segmentSize = num(r.segmentSize, DEFAULT_SEGMENT_SIZE);
    try {
      checkGeometry({ segmentSize, blockSize: DEFAULT_BLOCK_SIZE, segmentCount: 0 });
    } catch (err) {
      throw invalid(`container ${id}: ${(err as Error).message}`);
    }
    if (!Number.isSafeInteger(size) || size <= dataOffset) throw invalid(`container ${id}: size ${size} must exceed data offset ${dataOffset}`);
    const segmentsTotal = Math.floor((size - dataOffset) / segmentSize);
    if (segmentsTotal < 1) {
      throw invalid(`container ${id}: ${formatSize(size - dataOffset)} of data area holds no whole ${formatSize(segmentSize)} segment`);
    }
    if (this.#db.container(id)) throw exists(`container ${id} is already registered`);
    const row = this.#db.insertContainer({ id, path: r.path ?? '', size, dataOffset, segmentSize, segmentsTotal, state: 'online' });
    this.#ctrl.allocator.loadContainer(id);
    this.#db.event('container', id, `added: ${formatSize(size)} at ${row.path}`);
    log.info(`container ${id} added (${segmentsTotal} segments of ${formatSize(segmentSize)})`);
    return this.#containerInfo(row);
  }

  #containerInfo(c: ContainerRow): ContainerInfo {
    return {
      id: c.id,
      path: c.path,
      size: c.size,
      dataOffset: c.dataOffset,
      segmentSize: c.segmentSize,
      state: c.state,
      segmentsTotal: c.segmentsTotal,
      segmentsUsed: this.#db.containerSegmentsUsed(c.id),
      agents: this.#db.containerAgents(c.id),
    };
  }

  ListContainers(_r: Partial<Empty>): ListContainersReply {
    return { containers: this.#db.containers().map((c) => this.#containerInfo(c)) };
  }

  RemoveContainer(r: Partial<RemoveContainerRequest>): Empty {
    const c = this.#db.findContainer(r.id ?? '');
    if (!c) throw notFound(`unknown container ${r.id ?? ''}`);
    const used = this.#db.containerSegmentsUsed(c.id);
    if (used > 0) throw precondition(`container ${c.id} still holds ${used} allocated segments; migrate or remove the vdisks using it first`);
    this.#db.deleteContainer(c.id);
    this.#ctrl.allocator.forget(c.id);
    this.#db.event('container', c.id, 'removed');
    return {};
  }

  // ---- vdisks ----

  CreateVdisk(r: Partial<CreateVdiskRequest>): VdiskInfo {
    const name = r.name ?? '';
    if (!VDISK_NAME_RE.test(name)) throw invalid(`bad vdisk name "${name}": use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit`);
    if (this.#db.vdiskByName(name)) throw exists(`vdisk ${name} already exists`);
    const blockSize = num(r.blockSize, DEFAULT_BLOCK_SIZE);
    const segmentSize = num(r.segmentSize, DEFAULT_SEGMENT_SIZE);
    const size = r.size ?? 0;
    if (!BLOCK_SIZES.includes(blockSize)) throw invalid(`block size ${blockSize} invalid: must be one of ${BLOCK_SIZES.join(', ')}`);
    if (!Number.isSafeInteger(size) || size <= 0) throw invalid(`vdisk ${name}: size must be positive`);
    const segmentCount = Math.ceil(size / segmentSize);
    if (segmentCount > MAX_SEGMENT_COUNT) throw invalid(`vdisk ${name}: ${formatSize(size)} is too many segments of ${formatSize(segmentSize)}`);
    try {
      checkGeometry({ segmentSize, blockSize, segmentCount });
    } catch (err) {
      throw invalid(`vdisk ${name}: ${(err as Error).message}`);
    }
    const thick = r.thick === true;
    const id = randomUUID();
    const allocator = this.#ctrl.allocator;
    try {
      this.#db.tx(() => {
        const v = this.#db.insertVdisk({ id, name, size: segmentCount * segmentSize, blockSize, segmentSize, segmentCount, thin: !thick, version: 1 });
        if (thick) {
          let seg = 0;
          for (const run of allocator.allocate(v, segmentCount)) {
            this.#db.insertAllocatedRun(v, seg, run.containerId, run.offset, run.count);
            seg += run.count;
          }
        }
      });
    } catch (err) {
      if (thick) allocator.reload();
      throw err;
    }
    this.#db.event('vdisk', name, `created ${thick ? 'thick' : 'thin'} ${formatSize(segmentCount * segmentSize)}`);
    log.info(`vdisk ${name} created (${thick ? 'thick' : 'thin'}, ${segmentCount} segments)`);
    return this.#vdiskInfo(this.#vdisk(id));
  }

  #vdiskInfo(v: VdiskRow): VdiskInfo {
    const states: Record<string, number> = {};
    for (const n of SEGMENT_STATE_NAMES) states[n] = 0;
    let nonZero = 0;
    const counts = this.#db.sql
      .prepare('SELECT state, COUNT(*) AS n, COUNT(container_id) AS located FROM segments WHERE vdisk_id = ? GROUP BY state')
      .all(v.id) as { state: number; n: number; located: number }[];
    let allocated = 0;
    for (const c of counts) {
      if (isSegmentState(c.state)) states[segmentStateName(c.state)] = c.n;
      nonZero += c.n;
      allocated += c.located;
    }
    states.zero = (states.zero ?? 0) + v.segmentCount - nonZero;
    return {
      id: v.id,
      name: v.name,
      size: v.size,
      blockSize: v.blockSize,
      segmentSize: v.segmentSize,
      thin: v.thin,
      version: v.version,
      created: v.created,
      segmentCount: v.segmentCount,
      segmentsAllocated: allocated,
      allocatedBytes: allocated * v.segmentSize,
      states,
      exports: this.#db.exportsOfVdisk(v.id).map((e) => this.#exportInfo(e, v)),
    };
  }

  ListVdisks(_r: Partial<Empty>): ListVdisksReply {
    return { vdisks: this.#db.vdisks().map((v) => this.#vdiskInfo(v)) };
  }

  ShowVdisk(r: Partial<VdiskRef>): VdiskInfo {
    return this.#vdiskInfo(this.#vdisk(r.name));
  }

  RemoveVdisk(r: Partial<VdiskRef>): Empty {
    const v = this.#vdisk(r.name);
    const ex = this.#db.exportsOfVdisk(v.id);
    if (ex.length > 0) throw precondition(`vdisk ${v.name} is exported on ${ex.map((e) => e.agent).join(', ')}; remove the exports first`);
    this.#db.tx(() => {
      const version = this.#db.bumpVersion(v.id);
      for (const row of this.#db.segmentRows(v.id)) this.#db.setSegment(v, row.seg, { state: SegmentState.Zero, location: null }, version);
      this.#db.deleteVdisk(v.id);
    });
    this.#ctrl.forgetTable(v.id);
    this.#ctrl.reclaim(v.id);
    this.#db.event('vdisk', v.name, 'removed');
    return {};
  }

  async ResizeVdisk(r: Partial<ResizeVdiskRequest>): Promise<VdiskInfo> {
    const v = this.#vdisk(r.name);
    const size = r.size ?? 0;
    const segmentCount = Math.ceil(size / v.segmentSize);
    if (!Number.isSafeInteger(size) || segmentCount < v.segmentCount) {
      throw invalid(`vdisk ${v.name}: new size ${formatSize(size)} is smaller than ${formatSize(v.size)}; shrinking is not supported`);
    }
    if (segmentCount > MAX_SEGMENT_COUNT) throw invalid(`vdisk ${v.name}: ${formatSize(size)} is too large`);
    await this.#ctrl.changeTable(v.id, (c) => {
      const old = c.vdisk.segmentCount;
      c.grow(segmentCount * v.segmentSize, segmentCount);
      if (!v.thin && segmentCount > old) {
        let seg = old;
        for (const loc of c.allocate(segmentCount - old)) c.set(seg++, SegmentState.Normal, loc);
      }
    });
    this.#pushExportSets(v.id);
    return this.#vdiskInfo(this.#vdisk(v.id));
  }

  /** Exports carry the size: agents holding the vdisk get a new export set. */
  #pushExportSets(vdiskId: string): void {
    for (const e of this.#db.exportsOfVdisk(vdiskId)) {
      const link = this.#ctrl.link(e.agent);
      if (link) link.send({ body: 'exportSet', exportSet: { exports: this.#ctrl.exportsFor(e.agent) } });
    }
  }

  GetTable(r: Partial<GetTableRequest>): TableReply {
    const v = this.#vdisk(r.name);
    return this.#tableReply(v.id, r.fullIds === true);
  }

  #tableReply(vdiskId: string, fullIds: boolean): TableReply {
    const t = this.#ctrl.table(vdiskId);
    return {
      vdiskId,
      version: t.version,
      segmentCount: t.segmentCount,
      segmentSize: t.segmentSize,
      blockSize: t.blockSize,
      extents: toExtents(t).map(wireExtent),
      text: formatTable(t, { header: true, fullIds }),
    };
  }

  // ---- exports ----

  AddExport(r: Partial<AddExportRequest>): ExportInfo {
    const v = this.#vdisk(r.vdisk);
    const agent = r.agent ?? '';
    if (!agent) throw invalid('agent name missing');
    if (!this.#db.agent(agent)) throw notFound(`unknown agent ${agent} (it has never registered with this controller)`);
    const targetIqn = r.targetIqn || defaultTargetIqn(v.name);
    if (!IQN_RE.test(targetIqn)) throw invalid(`bad target name "${targetIqn}": expected iqn.YYYY-MM.reversed.domain[:id], eui. or naa.`);
    const lun = r.lun ?? 0;
    if (!Number.isInteger(lun) || lun < 0 || lun > 16383) throw invalid(`LUN ${lun} out of range 0-16383`);
    if (this.#db.export(v.id, agent)) throw exists(`vdisk ${v.name} is already exported on agent ${agent}`);
    const reach = new Set(this.#db.agentContainers(agent));
    const used = this.#db.sql
      .prepare('SELECT DISTINCT container_id FROM segments WHERE vdisk_id = ? AND container_id IS NOT NULL')
      .pluck()
      .all(v.id) as string[];
    const missing = used.filter((c) => !reach.has(c));
    if (missing.length > 0) {
      throw precondition(`agent ${agent} does not reach container${missing.length > 1 ? 's' : ''} ${missing.join(', ')} holding segments of vdisk ${v.name}`);
    }
    const clash = this.#db.exportsOfAgent(agent).find((e) => e.targetIqn === targetIqn && e.lun === lun);
    if (clash) throw exists(`agent ${agent} already serves LUN ${lun} of ${targetIqn}`);
    // The agent has never held this vdisk, so it owes no ack for older versions.
    this.#db.insertExport({ vdiskId: v.id, agent, targetIqn, lun, readOnly: r.readOnly === true, ackedVersion: v.version });
    this.#db.event('export', v.name, `exported on ${agent} as ${targetIqn} LUN ${lun}`);
    this.#ctrl.exportsChanged(agent);
    return this.#exportInfo(this.#db.export(v.id, agent) as ExportRow, v);
  }

  #exportInfo(e: ExportRow, v?: VdiskRow): ExportInfo {
    return {
      vdiskId: e.vdiskId,
      vdiskName: v?.name ?? this.#db.vdisk(e.vdiskId)?.name ?? '',
      agent: e.agent,
      targetIqn: e.targetIqn,
      lun: e.lun,
      readOnly: e.readOnly,
      ackedVersion: e.ackedVersion,
      fenced: e.fenced,
    };
  }

  ListExports(r: Partial<ListExportsRequest>): ListExportsReply {
    const v = r.vdisk ? this.#vdisk(r.vdisk) : undefined;
    const rows = this.#db.exports().filter((e) => (!v || e.vdiskId === v.id) && (!r.agent || e.agent === r.agent));
    return { exports: rows.map((e) => this.#exportInfo(e)) };
  }

  RemoveExport(r: Partial<RemoveExportRequest>): Empty {
    const v = this.#vdisk(r.vdisk);
    const agent = r.agent ?? '';
    if (!this.#db.deleteExport(v.id, agent)) throw notFound(`vdisk ${v.name} is not exported on agent ${agent}`);
    this.#db.event('export', v.name, `export on ${agent} removed`);
    this.#ctrl.exportsChanged(agent);
    this.#ctrl.reclaim(v.id);
    return {};
  }

  // ---- agents, faults, segments, check ----

  ListAgents(_r: Partial<Empty>): ListAgentsReply {
    const online = new Set(this.#ctrl.onlineAgents());
    const agents: AgentInfo[] = this.#db.agents().map((a) => ({
      name: a.name,
      online: online.has(a.name),
      lastSeen: a.lastSeen,
      portals: a.portals,
      containers: this.#db.agentContainers(a.name),
    }));
    return { agents };
  }

  ListFaults(r: Partial<ListFaultsRequest>): ListFaultsReply {
    const v = r.vdisk ? this.#vdisk(r.vdisk) : undefined;
    const limit = Math.min(num(r.limit, 100), 10_000);
    const names = new Map(this.#db.vdisks().map((x) => [x.id, x.name]));
    return {
      faults: this.#db.faults(v?.id, limit).map((f) => ({
        id: f.id,
        time: f.time,
        agent: f.agent,
        vdiskId: f.vdiskId,
        vdiskName: names.get(f.vdiskId) ?? '',
        segment: f.segment,
        op: f.op,
        lba: f.lba,
        blocks: f.blocks,
        state: f.state,
        tableVersion: f.tableVersion,
        outcome: f.outcome,
        detail: f.detail,
      })),
    };
  }

  /**
   * Sets segments' states (admin repair and fault injection). Normal and
   * no-write need a location: segments without one get a new allocation;
   * zero frees the location; invalid and error keep it.
   */
  async SetSegmentState(r: Partial<SetSegmentStateRequest>): Promise<TableReply> {
    const v = this.#vdisk(r.vdisk);
    const state = r.state ?? SegmentState.Normal;
    if (!isSegmentState(state)) throw invalid(`unknown segment state ${String(state)}`);
    const first = r.first ?? 0;
    const count = num(r.count, 1);
    if (!Number.isInteger(first) || first < 0 || first + count > v.segmentCount) {
      throw invalid(`segments ${first}-${first + count - 1} out of range: vdisk ${v.name} has segments 0-${v.segmentCount - 1}`);
    }
    await this.#ctrl.changeTable(v.id, (c) => {
      for (let seg = first; seg < first + count; seg++) {
        const row = this.#db.segment(v.id, seg);
        const loc = row.containerId !== null && row.offset !== null ? { containerId: row.containerId, offset: row.offset } : null;
        if (state === SegmentState.Zero) c.set(seg, state, null);
        else if (state === SegmentState.Normal || state === SegmentState.NoWrite) c.set(seg, state, loc ?? (c.allocate(1)[0] ?? null));
        else c.set(seg, state, loc);
      }
    });
    this.#db.event('segment', v.name, `segments ${first}-${first + count - 1} set to ${segmentStateName(state)}`);
    return this.#tableReply(v.id, false);
  }

  Check(_r: Partial<Empty>): CheckReply {
    const violations = checkInvariants(this.#db);
    return { ok: violations.length === 0, violations };
  }
}

/** The gRPC implementation of AdminService over `admin`. */
export function adminImplementation(admin: Admin, authorize: (md: grpc.Metadata) => string | null): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(adminServiceDefinition()) as AdminMethod[]) {
    const fn = admin[method] as (r: Partial<AdminMethods[AdminMethod][0]>) => unknown;
    impl[method] = (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const denied = authorize(call.metadata);
      if (denied !== null) {
        cb({ code: grpc.status.UNAUTHENTICATED, details: denied });
        return;
      }
      Promise.resolve()
        .then(() => fn.call(admin, call.request as Partial<AdminMethods[AdminMethod][0]>))
        .then(
          (res) => cb(null, res),
          (err: unknown) => {
            const s = toStatus(err);
            if (s.code === grpc.status.INTERNAL) log.error(`admin ${method} failed`, { error: (err as Error).stack ?? s.details });
            else log.info(`admin ${method} refused: ${s.details}`);
            cb({ code: s.code, details: s.details });
          },
        );
    };
  }
  return impl;
}
