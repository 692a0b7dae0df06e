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
  MAX_COPIES,
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
  BackupChunk,
  CheckReply,
  CloneVdiskRequest,
  ContainerInfo,
  EvacuateContainerRequest,
  ListMigrationsReply,
  MigrateVdiskRequest,
  MigrationInfo,
  MigrationRef,
  SnapshotVdiskRequest,
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
  RemoveContainerReply,
  RemoveContainerRequest,
  RemoveExportRequest,
  ResizeVdiskRequest,
  SetContainerDomainRequest,
  SetSegmentStateRequest,
  SetVdiskCopiesRequest,
  TableReply,
  VdiskHealthInfo,
  VdiskInfo,
  VdiskRef,
} from '../wire/proto-types.js';
import { adminServiceDefinition } from '../wire/grpc.js';
import { formatSize, SizeError } from '../util/size.js';
import { log } from '../util/log.js';
import { ContainerFullError } from './allocator.js';
import { isShared } from './agent-registry.js';
import { backupChunks, streamBackup } from './backup.js';
import { checkInvariants, checkWarnings } from './check.js';
import { ALUA_PREFERENCES, MAX_VDISK_COPIES, TableChangeError, type AluaPreference, type ContainerRow, type ExportRow, type VdiskRow } from './db.js';
import { containerDomains, effectiveDomain } from './domains.js';
import { aluaStateName } from './port-groups.js';
import { segmentRefcount } from './faults.js';
import { MigrationError } from './migration.js';
import { RebuildError, copiesOf } from './rebuild.js';
import { SnapshotError, removeTable, shareVdisk, shrinkTable } from './snapshots.js';
import type { Controller } from './controller.js';
import { wireExtent } from './table-changes.js';
import { randomUUID } from 'node:crypto';

export const DEFAULT_IQN_PREFIX = 'iqn.2026-11.org.tabula:';

export function defaultTargetIqn(vdiskName: string): string {
  return `${DEFAULT_IQN_PREFIX}${vdiskName.toLowerCase()}`;
}

const VDISK_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const IQN_RE = /^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[^\s]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?)$/;
const CONTAINER_ID_RE = /^[0-9A-Za-z][0-9A-Za-z-]{0,63}$/;
const DOMAIN_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/** A failure domain name as given ('' = derived), checked. */
function domainName(raw: string | undefined): string {
  const d = (raw ?? '').trim();
  if (d !== '' && !DOMAIN_RE.test(d)) throw invalid(`bad failure domain "${d}": use 1-64 of A-Z a-z 0-9 . _ : - starting with a letter or digit`);
  return d;
}

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
  if (err instanceof SnapshotError || err instanceof MigrationError || err instanceof RebuildError) return { code: grpc.status.FAILED_PRECONDITION, details: msg };
  if (err instanceof TableChangeError || err instanceof RangeError || err instanceof SizeError) {
    return { code: grpc.status.INVALID_ARGUMENT, details: msg };
  }
  if (/UNIQUE constraint failed/.test(msg)) return { code: grpc.status.ALREADY_EXISTS, details: msg };
  return { code: grpc.status.INTERNAL, details: msg };
}

/** Snapshot, migration and rebuild refusals as the admin error they are. */
function asAdminError(err: unknown): never {
  if (err instanceof SnapshotError || err instanceof MigrationError || err instanceof RebuildError) throw precondition(err.message);
  throw err;
}

/** Checked, lower-cased (iSCSI names compare so), de-duplicated initiator names; [] = any. */
function initiatorList(names: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const raw of names ?? []) {
    const n = raw.trim().toLowerCase();
    if (!IQN_RE.test(n)) throw invalid(`bad initiator name "${raw}": expected iqn.YYYY-MM.reversed.domain[:id], eui. or naa.`);
    if (!out.includes(n)) out.push(n);
  }
  return out;
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
    const domain = domainName(r.domain);
    const row = this.#db.insertContainer({ id, path: r.path ?? '', size, dataOffset, segmentSize, segmentsTotal, state: 'online', domain });
    this.#ctrl.allocator.loadContainer(id);
    this.#db.event('container', id, `added: ${formatSize(size)} at ${row.path}${domain === '' ? '' : ` in failure domain ${domain}`}`);
    log.info(`container ${id} added (${segmentsTotal} segments of ${formatSize(segmentSize)})`);
    // Agents running already find it on a rescan and claim it (ContainerUpdate).
    this.#ctrl.agents.rescanAll(`container ${id} added`);
    return this.#containerInfo(row);
  }

  #containerInfo(c: ContainerRow, domains?: ReadonlyMap<string, string>): ContainerInfo {
    const acct = this.#db.containerSharing(c.id);
    const reach = this.#db.containerReach(c.id);
    const capacity = c.segmentsTotal * c.segmentSize;
    return {
      capacityBytes: capacity,
      allocatedBytes: acct.used * c.segmentSize,
      sharedBytes: acct.shared * c.segmentSize,
      exclusiveBytes: acct.exclusive * c.segmentSize,
      freeBytes: capacity - acct.used * c.segmentSize,
      id: c.id,
      path: c.path,
      size: c.size,
      dataOffset: c.dataOffset,
      segmentSize: c.segmentSize,
      state: c.state,
      segmentsTotal: c.segmentsTotal,
      segmentsUsed: this.#db.containerSegmentsUsed(c.id),
      agents: this.#db.containerAgents(c.id),
      unreachable: reach.filter((r) => !r.reachable).map((r) => `${r.agent}: ${r.error}`),
      shared: isShared(reach),
      domain: domains?.get(c.id) ?? effectiveDomain(c, this.#db),
    };
  }

  /** Sets (or with '' clears) a container's failure domain; where legs are placed already does not change. */
  SetContainerDomain(r: Partial<SetContainerDomainRequest>): ContainerInfo {
    const c = this.#db.findContainer(r.id ?? '');
    if (!r.id || !c) throw notFound(`unknown container ${r.id ?? ''}`);
    const domain = domainName(r.domain);
    this.#db.setContainerDomain(c.id, domain);
    const row = this.#db.container(c.id) as ContainerRow;
    const shown = effectiveDomain(row, this.#db);
    this.#db.event('container', c.id, `failure domain ${domain === '' ? `derived (${shown})` : domain}`);
    log.info(`container ${c.id} failure domain ${shown}`);
    return this.#containerInfo(row);
  }

  ListContainers(_r: Partial<Empty>): ListContainersReply {
    const domains = containerDomains(this.#db);
    return { containers: this.#db.containers().map((c) => this.#containerInfo(c, domains)) };
  }

  RemoveContainer(r: Partial<RemoveContainerRequest>): RemoveContainerReply | Promise<RemoveContainerReply> {
    const c = this.#db.findContainer(r.id ?? '');
    if (!c) throw notFound(`unknown container ${r.id ?? ''}`);
    if (r.dead === true) return this.#removeDead(c);
    const used = this.#db.containerSegmentsUsed(c.id);
    const scrubbing = this.#db.scrubPendingCount(c.id);
    if (used > scrubbing) {
      throw precondition(`container ${c.id} still holds ${used - scrubbing} allocated segments; migrate or remove the vdisks using it first`);
    }
    // Freed space is zeroed before it leaves our books: a removed container
    // added back later must not hand out the old data.
    if (scrubbing > 0) {
      throw precondition(
        `container ${c.id}: ${scrubbing} freed segments are still waiting to be zeroed by an agent that reaches it` +
          ` (${this.#db.containerAgents(c.id).length === 0 ? 'no agent reaching it is registered' : 'retry in a moment'})`,
      );
    }
    this.#db.deleteContainer(c.id);
    this.#ctrl.allocator.forget(c.id);
    this.#db.event('container', c.id, 'removed');
    return { vdisks: [], legs: 0, staleLegs: 0 };
  }

  /**
   * `container rm --dead`: the container is gone for good. Refused while it
   * is any segment's only location (its data would be lost). Else every
   * mirrored segment loses its leg there (leg 1 promoted when it was leg 0)
   * and its stale legs there, one table change per vdisk (pushed, acked);
   * nothing on it is released to be scrubbed (its space is gone: its
   * allocation map rows are dropped); the container is unregistered and the
   * vdisks that lost legs are rebuilt at once.
   */
  async #removeDead(c: ContainerRow): Promise<RemoveContainerReply> {
    const db = this.#db;
    const ctrl = this.#ctrl;
    const lost = db.soleLocationsOn(c.id);
    if (lost.length > 0) {
      const total = lost.reduce((n, l) => n + l.segments, 0);
      const which = lost.map((l) => `${l.vdisk} (${l.segments})`).join(', ');
      throw precondition(
        `container ${c.id} is the only location of ${total} segment${total === 1 ? '' : 's'} of vdisk${lost.length === 1 ? '' : 's'} ${which}: ` +
          'removing it would lose their data; if it still reads, evacuate it (container evacuate) or give them a second copy (vdisk set-copies NAME 2) first, else remove those vdisks (vdisk rm)',
      );
    }
    if (ctrl.mirrors.removing(c.id) || ctrl.mirrors.resyncing(c.id)) {
      throw precondition(`container ${c.id}: its legs are being removed or resynced now; retry in a moment`);
    }
    const moving = db.migrations().filter((m) => m.state === 'running' && (m.toContainer === c.id || m.fromContainer === c.id));
    if (moving.length > 0) {
      const names = moving.map((m) => db.vdisk(m.vdiskId)?.name ?? m.vdiskId).join(', ');
      throw precondition(`container ${c.id}: migrations of vdisks ${names} run to or from it; cancel them first (vdisk migrate-cancel NAME)`);
    }
    // Nothing new is allocated on it from here on.
    if (c.state !== 'failed') db.setContainerState(c.id, 'failed');
    db.event('container', c.id, 'declared dead: removing its legs from mirrored segments');
    log.warn(`container ${c.id} declared dead: removing its legs from mirrored segments`);
    const touched = new Set<string>();
    let legs = 0;
    let staleLegs = 0;
    // A rebuild in flight may copy to or from it: stopped now, started again below.
    for (const id of db.vdisksOnContainer(c.id)) await ctrl.rebuild.cancel(id);
    // A copy onto it reserved before it failed (copy-on-write, rebuild) ends soon, failing or committing a leg
    // there that the passes below take away; given up after the container is gone, its location would
    // record a row for an unknown container.
    for (let i = 0; i < 50 && ctrl.allocator.reservedOn(c.id) > 0; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    if (ctrl.allocator.reservedOn(c.id) > 0) {
      throw precondition(`container ${c.id}: a segment copy onto it is still in flight; retry in a moment`);
    }
    try {
      for (let pass = 0; pass < 3 && db.referencesOn(c.id) > 0; pass++) {
        for (const id of db.vdisksOnContainer(c.id)) {
          const n = await this.#dropDeadLegs(id, c.id);
          if (n.legs + n.stale === 0) continue;
          touched.add(id);
          legs += n.legs;
          staleLegs += n.stale;
        }
      }
      const left = db.referencesOn(c.id);
      if (left > 0) {
        throw precondition(`container ${c.id}: ${left} legs still reference it (a segment being copied onto it?); retry in a moment`);
      }
      db.deleteDeadContainer(c.id);
      ctrl.allocator.forget(c.id);
    } finally {
      // Refused half way or not, what lost a leg is rebuilt now.
      for (const id of touched) ctrl.rebuild.rebuildNow(id);
    }
    const names = [...touched].map((id) => db.vdisk(id)?.name ?? id).sort();
    const what = `${legs} legs and ${staleLegs} stale legs removed from ${names.length} vdisks`;
    db.event('container', c.id, `removed as dead: ${what}`);
    log.warn(`container ${c.id} removed as dead: ${what}; rebuilding their segments`);
    for (const name of names) db.event('degraded', name, `lost its legs on dead container ${c.id}: rebuilding`);
    return { vdisks: names, legs, staleLegs };
  }

  /** One vdisk's legs and stale legs on dead container `c` go, releasing nothing there. */
  async #dropDeadLegs(vdiskId: string, c: string): Promise<{ legs: number; stale: number }> {
    const db = this.#db;
    const tables = this.#ctrl.tables;
    // Stale legs are in no table: dropped under the vdisk's lock, nothing to push.
    const stale = await tables.serialize(vdiskId, () =>
      Promise.resolve(
        db.tx(() => {
          const v = db.vdisk(vdiskId);
          if (!v) return 0;
          let n = 0;
          for (const s of db.staleLegs({ vdiskId, containerId: c })) if (db.dropStaleLeg(vdiskId, s.seg, c, v.version)) n++;
          db.forgetReleasedOn(c);
          return n;
        }),
      ),
    );
    let legs = 0;
    await tables.changeTable(vdiskId, (ctx) => {
      legs = 0;
      for (const seg of db.segmentsOn(vdiskId, c)) {
        const locs = db.locationsOfSegment(vdiskId, seg);
        const rest = locs.filter((l) => l.containerId !== c);
        const primary = rest[0];
        // Its only location (refused above; a race left it): the caller finds it still referenced.
        if (primary === undefined) continue;
        ctx.set(seg, db.segment(vdiskId, seg).state, primary, rest.slice(1));
        legs++;
      }
      db.forgetReleasedOn(c);
    });
    return { legs, stale };
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
    const copies = r.copies === undefined || r.copies === 0 ? 1 : r.copies;
    if (!Number.isInteger(copies) || copies < 1 || copies > MAX_VDISK_COPIES) {
      throw invalid(`vdisk ${name}: --copies ${copies} out of range 1-${MAX_VDISK_COPIES}`);
    }
    // Thin too: better now than as a failed first write (07/27/07) later.
    // With no container online at all, a thin vdisk waits for capacity (a thick one fails below).
    const sizeProblem = this.#ctrl.allocator.segmentSizeProblem(segmentSize, thick);
    if (sizeProblem !== null) throw precondition(`vdisk ${name}: ${sizeProblem}`);
    const id = randomUUID();
    const allocator = this.#ctrl.allocator;
    try {
      this.#db.tx(() => {
        const v = this.#db.insertVdisk({ id, name, size: segmentCount * segmentSize, blockSize, segmentSize, segmentCount, thin: !thick, version: 1, copies });
        if (thick && copies === 1) {
          let seg = 0;
          for (const run of allocator.allocate(v, segmentCount)) {
            this.#db.insertAllocatedRun(v, seg, run.containerId, run.offset, run.count);
            seg += run.count;
          }
        } else if (thick) {
          // Every segment gets all its copies now: a thick vdisk is never created degraded.
          const problem = this.#mirrorRoomProblem(v);
          if (problem !== null) throw precondition(`vdisk ${name}: ${problem}`);
          this.#db.insertAllocatedLegs(v, 0, allocator.allocateLegs(v, segmentCount, copies));
        }
      });
    } catch (err) {
      if (thick) allocator.reload();
      throw err;
    }
    const mirrored = copies > 1 ? `, ${copies} copies` : '';
    this.#db.event('vdisk', name, `created ${thick ? 'thick' : 'thin'} ${formatSize(segmentCount * segmentSize)}${mirrored}`);
    log.info(`vdisk ${name} created (${thick ? 'thick' : 'thin'}, ${segmentCount} segments${mirrored})`);
    return this.#vdiskInfo(this.#vdisk(id));
  }

  /**
   * Null when `copies` legs of every segment of a new thick vdisk fit in
   * distinct failure domains, else why not: a domain gives a segment at most
   * one leg, so each domain counts for at most the vdisk's segments.
   */
  #mirrorRoomProblem(v: VdiskRow): string | null {
    const room = this.#ctrl.allocator.domainsWithRoom(v);
    const n = v.segmentCount;
    const fits = [...room.values()].reduce((s, f) => s + Math.min(f, n), 0) >= v.copies * n;
    if (fits) return null;
    const full = [...room].filter(([, f]) => f >= n).length;
    const list = [...room].map(([d, f]) => `${d} ${f}`).join(', ');
    return (
      `${v.copies} copies of ${n} segments need room in ${v.copies} failure domains, but ${full === 0 ? 'none has' : `only ${full} ha${full === 1 ? 's' : 've'}`} ` +
      `${n} free segment${n === 1 ? '' : 's'} (free per domain: ${list || 'none'}); add containers in other domains (container add --domain) or use fewer copies`
    );
  }

  #vdiskInfo(v: VdiskRow): VdiskInfo {
    const states: Record<string, number> = {};
    for (const n of SEGMENT_STATE_NAMES) states[n] = 0;
    let nonZero = 0;
    let allocated = 0;
    for (const c of this.#db.entryCounts(v.id)) {
      if (isSegmentState(c.state)) states[segmentStateName(c.state)] = c.entries;
      nonZero += c.entries;
      allocated += c.located;
    }
    states.zero = (states.zero ?? 0) + v.segmentCount - nonZero;
    const share = this.#db.vdiskSharing(v.id);
    const parent = v.parentId !== null ? this.#db.vdisk(v.parentId) : undefined;
    return {
      sharedBytes: share.shared * v.segmentSize,
      exclusiveBytes: share.exclusive * v.segmentSize,
      kind: v.kind,
      parent: parent?.name ?? '',
      parentId: v.parentId ?? '',
      migration: this.#migrationInfo(v.id) ?? null,
      copies: v.copies,
      health: this.#healthInfo(v, allocated),
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

  /** vdiskHealth: copies, degraded segments, stale legs, rebuild progress. */
  #healthInfo(v: VdiskRow, allocated: number): VdiskHealthInfo {
    const h = this.#ctrl.rebuild.health(v.id, allocated);
    return {
      copies: h.copies,
      segments: h.segments,
      degraded: h.degraded,
      stale: h.stale,
      dirty: h.dirty,
      rebuilding: h.rebuilding ?? null,
      blocked: h.blocked,
      resyncing: this.#ctrl.mirrors.resyncProgress(v.id) ?? null,
    };
  }

  /**
   * `vdisk set-copies`: more copies need as many failure domains among the
   * containers the vdisk may use; the rebuild runs on after this returns
   * (its progress in `vdisk show`). Fewer copies: returns once the table
   * without the last legs is acked.
   */
  async SetVdiskCopies(r: Partial<SetVdiskCopiesRequest>): Promise<VdiskInfo> {
    const v = this.#vdisk(r.name);
    const copies = r.copies ?? 0;
    if (!Number.isInteger(copies) || copies < 1 || copies > MAX_COPIES) throw invalid(`bad copies ${copies}: give 1 to ${MAX_COPIES}`);
    if (this.#ctrl.migrations.running(v.id)) throw precondition(`vdisk ${v.name} is being migrated; wait for the migration or cancel it first`);
    if (copies > copiesOf(v)) {
      const domains = containerDomains(this.#db);
      const eligible = this.#ctrl.allocator.eligibleContainers(v);
      const have = [...new Set(eligible.map((c) => domains.get(c) ?? `container:${c}`))].sort();
      if (have.length < copies) {
        throw precondition(
          `vdisk ${v.name}: ${copies} copies need containers in ${copies} failure domains, but the containers it may use (online, of its segment size, reached by every exporting agent) are in ${have.length}` +
            `${have.length > 0 ? ` (${have.join(', ')})` : ''}; add containers in another domain (tabula container add --domain NAME)`,
        );
      }
    }
    await this.#ctrl.rebuild.setCopies(v.id, copies).catch(asAdminError);
    return this.#vdiskInfo(this.#vdisk(v.id));
  }

  /** `vdisk repair`: stale legs dropped now (no rebuild delay) and degraded segments rebuilt; returns as the rebuild starts. */
  async RepairVdisk(r: Partial<VdiskRef>): Promise<VdiskInfo> {
    const v = this.#vdisk(r.name);
    await this.#ctrl.rebuild.repair(v.id).catch(asAdminError);
    return this.#vdiskInfo(this.#vdisk(v.id));
  }

  ListVdisks(_r: Partial<Empty>): ListVdisksReply {
    return { vdisks: this.#db.vdisks().map((v) => this.#vdiskInfo(v)) };
  }

  ShowVdisk(r: Partial<VdiskRef>): VdiskInfo {
    return this.#vdiskInfo(this.#vdisk(r.name));
  }

  /**
   * Removes a vdisk or snapshot that no agent exports. Its references go at
   * once (the DB part is synchronous); locations reaching zero are freed,
   * and the promise settles once locations left with one writable holder
   * are writable there again.
   */
  RemoveVdisk(r: Partial<VdiskRef>): Promise<Empty> {
    const v = this.#vdisk(r.name);
    const ex = this.#db.exportsOfVdisk(v.id);
    if (ex.length > 0) throw precondition(`vdisk ${v.name} is exported on ${ex.map((e) => e.agent).join(', ')}; remove the exports first`);
    if (this.#ctrl.migrations.running(v.id)) throw precondition(`vdisk ${v.name} is being migrated; cancel the migration first`);
    // A rebuild stops first (after its segments in flight), then everything is looked at again.
    if (this.#ctrl.rebuild.running(v.id)) return this.#ctrl.rebuild.cancel(v.id).then(() => this.RemoveVdisk(r));
    const settled = removeTable(this.#ctrl, v.id);
    this.#db.event(v.kind, v.name, 'removed');
    log.info(`${v.kind} ${v.name} removed`);
    return settled.then(() => ({}));
  }

  /**
   * Grows at any time (new segments zero, or allocated for thick vdisks):
   * agents get the new segment count in the table delta and the new size
   * in their export set (and raise CAPACITY DATA HAS CHANGED). Shrinks only
   * with `force`, on a vdisk no agent exports.
   */
  async ResizeVdisk(r: Partial<ResizeVdiskRequest>): Promise<VdiskInfo> {
    const v = this.#vdisk(r.name);
    if (v.kind === 'snapshot') throw precondition(`${v.name} is a snapshot; snapshots keep the size they were taken at`);
    const size = r.size ?? 0;
    if (!Number.isSafeInteger(size) || size <= 0) throw invalid(`vdisk ${v.name}: new size must be positive`);
    const segmentCount = Math.ceil(size / v.segmentSize);
    if (segmentCount > MAX_SEGMENT_COUNT) throw invalid(`vdisk ${v.name}: ${formatSize(size)} is too large`);
    if (segmentCount < v.segmentCount) {
      const newSize = formatSize(segmentCount * v.segmentSize);
      if (r.force !== true) {
        throw invalid(`vdisk ${v.name}: new size ${newSize} is smaller than ${formatSize(v.size)}; shrinking discards data and needs --force`);
      }
      const ex = this.#db.exportsOfVdisk(v.id);
      if (ex.length > 0) throw precondition(`vdisk ${v.name} is exported on ${ex.map((e) => e.agent).join(', ')}; remove the exports before shrinking it`);
      if (this.#ctrl.migrations.running(v.id)) throw precondition(`vdisk ${v.name} is being migrated; cancel the migration before shrinking it`);
      await this.#ctrl.rebuild.cancel(v.id);
      await shrinkTable(this.#ctrl, v, segmentCount);
      this.#db.event('vdisk', v.name, `shrunk from ${formatSize(v.size)} to ${newSize}`);
      return this.#vdiskInfo(this.#vdisk(v.id));
    }
    await this.#ctrl.tables.changeTable(v.id, (c) => {
      const old = c.vdisk.segmentCount;
      c.grow(segmentCount * v.segmentSize, segmentCount);
      if (!v.thin && segmentCount > old) {
        let seg = old;
        if (c.vdisk.copies > 1) {
          // A leg per copy, in distinct domains (fewer, degraded, when domains run out).
          for (const [first, ...legs] of c.allocateLegs(segmentCount - old, c.vdisk.copies)) c.set(seg++, SegmentState.Normal, first ?? null, legs);
        } else for (const loc of c.allocate(segmentCount - old)) c.set(seg++, SegmentState.Normal, loc);
      }
    });
    this.#pushExportSets(v.id);
    if (segmentCount > v.segmentCount) this.#db.event('vdisk', v.name, `grown from ${formatSize(v.size)} to ${formatSize(segmentCount * v.segmentSize)}`);
    return this.#vdiskInfo(this.#vdisk(v.id));
  }

  /** Exports carry the size: agents holding the vdisk get a new export set. */
  #pushExportSets(vdiskId: string): void {
    for (const e of this.#db.exportsOfVdisk(vdiskId)) {
      const link = this.#ctrl.agents.link(e.agent);
      if (link) link.send({ body: 'exportSet', exportSet: { exports: this.#ctrl.exports.exportsFor(e.agent) } });
    }
  }

  GetTable(r: Partial<GetTableRequest>): TableReply {
    const v = this.#vdisk(r.name);
    return this.#tableReply(v.id, r.fullIds === true);
  }

  #tableReply(vdiskId: string, fullIds: boolean): TableReply {
    const t = this.#ctrl.tables.table(vdiskId);
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
    const alua = r.alua || 'optimized';
    if (!(ALUA_PREFERENCES as readonly string[]).includes(alua)) throw invalid(`bad ALUA state "${alua}": use ${ALUA_PREFERENCES.join(' or ')}`);
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
    const used = this.#db.containersOfVdisk(v.id);
    const missing = used.filter((c) => !reach.has(c));
    if (missing.length > 0) {
      throw precondition(`agent ${agent} does not reach container${missing.length > 1 ? 's' : ''} ${missing.join(', ')} holding segments of vdisk ${v.name}`);
    }
    const clash = this.#db.exportsOfAgent(agent).find((e) => e.targetIqn === targetIqn && e.lun === lun);
    if (clash) throw exists(`agent ${agent} already serves LUN ${lun} of ${targetIqn}`);
    const allowedInitiators = initiatorList(r.allowedInitiators);
    // The agent has never held this vdisk, so it owes no ack for older versions.
    // A snapshot is read-only however it is exported (WRITE gets DATA PROTECT at the agent).
    const readOnly = r.readOnly === true || v.kind === 'snapshot';
    this.#db.insertExport({ vdiskId: v.id, agent, targetIqn, lun, readOnly, ackedVersion: v.version, allowedInitiators, alua: alua as AluaPreference });
    this.#db.event('export', v.name, `exported on ${agent} as ${targetIqn} LUN ${lun}`);
    this.#ctrl.exports.exportsChanged(agent);
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
      allowedInitiators: e.allowedInitiators,
      alua: e.alua,
      aluaState: this.#aluaState(e),
    };
  }

  /** The state this export's port group is reported in now. */
  #aluaState(e: ExportRow): string {
    const number = this.#db.agent(e.agent)?.number ?? null;
    const group = this.#ctrl.portGroups.groups(e.vdiskId).find((g) => g.id === number);
    return group === undefined ? '' : aluaStateName(group.state);
  }

  ListExports(r: Partial<ListExportsRequest>): ListExportsReply {
    this.#ctrl.writeBehind.flush(); // acked versions
    const v = r.vdisk ? this.#vdisk(r.vdisk) : undefined;
    const rows = this.#db.exports().filter((e) => (!v || e.vdiskId === v.id) && (!r.agent || e.agent === r.agent));
    return { exports: rows.map((e) => this.#exportInfo(e)) };
  }

  RemoveExport(r: Partial<RemoveExportRequest>): Empty {
    const v = this.#vdisk(r.vdisk);
    const agent = r.agent ?? '';
    if (!this.#db.deleteExport(v.id, agent)) throw notFound(`vdisk ${v.name} is not exported on agent ${agent}`);
    this.#db.event('export', v.name, `export on ${agent} removed`);
    this.#ctrl.exports.exportsChanged(agent);
    this.#ctrl.tables.reclaim(v.id);
    return {};
  }

  // ---- agents, faults, segments, check ----

  ListAgents(_r: Partial<Empty>): ListAgentsReply {
    this.#ctrl.writeBehind.flush(); // last-seen times
    const online = new Set(this.#ctrl.agents.onlineAgents());
    const agents: AgentInfo[] = this.#db.agents().map((a) => ({
      name: a.name,
      online: online.has(a.name),
      lastSeen: a.lastSeen,
      portals: a.portals,
      containers: this.#db.agentClaims(a.name).map((c) => c.id),
      number: a.number ?? 0,
      host: a.host,
      unreachable: this.#db
        .agentClaims(a.name)
        .filter((c) => !c.reachable)
        .map((c) => `${c.id}: ${c.error}`),
    }));
    return { agents };
  }

  ListFaults(r: Partial<ListFaultsRequest>): ListFaultsReply {
    this.#ctrl.writeBehind.flush(); // the latest faults and outcomes
    const v = r.vdisk ? this.#vdisk(r.vdisk) : undefined;
    const limit = Math.min(num(r.limit, 100), 10_000);
    const names = new Map(this.#db.vdisks().map((x) => [x.id, x.name]));
    let since: string | undefined;
    if (r.since) {
      const t = Date.parse(r.since);
      if (Number.isNaN(t)) throw invalid(`bad since "${r.since}": give an ISO 8601 time`);
      since = new Date(t).toISOString();
    }
    const filter = {
      ...(v ? { vdiskId: v.id } : {}),
      ...(r.agent ? { agent: r.agent } : {}),
      ...(r.outcome ? { outcome: r.outcome } : {}),
      ...(since ? { since } : {}),
    };
    return {
      faults: this.#db.findFaults(filter, limit).map((f) => ({
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
    await this.#ctrl.tables.changeTable(v.id, (c) => {
      for (let seg = first; seg < first + count; seg++) {
        const row = this.#db.segment(v.id, seg);
        const loc = row.containerId !== null && row.offset !== null ? { containerId: row.containerId, offset: row.offset } : null;
        // A mirrored entry is shared when any of its legs is.
        const refs = loc !== null ? segmentRefcount(this.#db, this.#db.locationsOfSegment(v.id, seg)) : 0;
        if (refs > 1 && state !== SegmentState.Zero && state !== SegmentState.NoWrite) {
          throw precondition(
            `vdisk ${v.name} segment ${seg} shares container ${loc?.containerId} offset ${loc?.offset} with ${refs - 1} other table entr${refs === 2 ? 'y' : 'ies'} (snapshot or clone); it can only be no-write or zero`,
          );
        }
        if (v.kind === 'snapshot' && state === SegmentState.Normal) throw precondition(`${v.name} is a snapshot; its segments cannot be made writable`);
        if (state === SegmentState.Zero) c.set(seg, state, null);
        else if ((state === SegmentState.Normal || state === SegmentState.NoWrite) && loc === null && c.vdisk.copies > 1) {
          const [first, ...legs] = c.allocateLegs(1, c.vdisk.copies)[0] ?? [];
          c.set(seg, state, first ?? null, legs);
        } else if (state === SegmentState.Normal || state === SegmentState.NoWrite) c.set(seg, state, loc ?? (c.allocate(1)[0] ?? null));
        else c.set(seg, state, loc);
      }
    });
    this.#db.event('segment', v.name, `segments ${first}-${first + count - 1} set to ${segmentStateName(state)}`);
    return this.#tableReply(v.id, false);
  }

  // ---- snapshots, clones, migrations ----

  /** Snapshot of a vdisk: read-only, shares every segment; returns once every exporter acked. */
  async SnapshotVdisk(r: Partial<SnapshotVdiskRequest>): Promise<VdiskInfo> {
    const src = this.#vdisk(r.vdisk);
    if (src.kind === 'snapshot') throw precondition(`${src.name} is already a snapshot; clone it for a writable copy`);
    const name = this.#newName(r.name);
    return this.#vdiskInfo(await shareVdisk(this.#ctrl, src, name, 'snapshot').catch(asAdminError));
  }

  /** Writable clone of a snapshot or of a vdisk (frozen as for a snapshot); copy-on-write from then on. */
  async CloneVdisk(r: Partial<CloneVdiskRequest>): Promise<VdiskInfo> {
    const src = this.#vdisk(r.source);
    const name = this.#newName(r.name);
    return this.#vdiskInfo(await shareVdisk(this.#ctrl, src, name, 'vdisk').catch(asAdminError));
  }

  #newName(name: string | undefined): string {
    const n = name ?? '';
    if (!VDISK_NAME_RE.test(n)) throw invalid(`bad name "${n}": use 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit`);
    if (this.#db.vdiskByName(n)) throw exists(`vdisk ${n} already exists`);
    return n;
  }

  MigrateVdisk(r: Partial<MigrateVdiskRequest>): MigrationInfo {
    const v = this.#vdisk(r.vdisk);
    const c = this.#db.findContainer(r.toContainer ?? '');
    if (!r.toContainer || !c) throw notFound(`unknown container ${r.toContainer ?? ''}`);
    if (c.state !== 'online') throw precondition(`container ${c.id} is ${c.state}; a migration target must be online`);
    if (c.segmentSize !== v.segmentSize) {
      throw precondition(`container ${c.id} has segments of ${formatSize(c.segmentSize)}, vdisk ${v.name} has ${formatSize(v.segmentSize)}`);
    }
    const cannot = this.#db.exportsOfVdisk(v.id).filter((e) => !this.#db.agentContainers(e.agent).includes(c.id));
    if (cannot.length > 0) {
      throw precondition(`agent${cannot.length > 1 ? 's' : ''} ${cannot.map((e) => e.agent).join(', ')} exporting vdisk ${v.name} do${cannot.length > 1 ? '' : 'es'} not reach container ${c.id}`);
    }
    if (this.#ctrl.migrations.running(v.id)) throw precondition(`vdisk ${v.name} is already being migrated; cancel that migration first`);
    const toMove = this.#db.countToMigrate(v.id, c.id, null);
    const free = this.#ctrl.allocator.freeSegments(c.id);
    if (toMove > free) {
      throw new ContainerFullError(v.name, toMove, free, v.segmentSize, `container ${c.id} has`);
    }
    try {
      this.#ctrl.migrations.start(v, { to: c.id, from: null });
    } catch (err) {
      asAdminError(err);
    }
    return this.#migrationInfo(v.id) as MigrationInfo;
  }

  #migrationInfo(vdiskId: string): MigrationInfo | undefined {
    const p = this.#ctrl.migrations.progress(vdiskId);
    if (!p) return undefined;
    const m = p.row;
    return {
      vdiskId: m.vdiskId,
      vdiskName: this.#db.vdisk(m.vdiskId)?.name ?? '',
      toContainer: m.toContainer ?? '',
      fromContainer: m.fromContainer ?? '',
      state: m.state,
      segmentsTotal: m.segmentsTotal,
      segmentsDone: m.segmentsDone,
      bytesDone: m.bytesDone,
      percent: p.percent,
      bytesPerSecond: p.bytesPerSecond,
      etaSeconds: p.etaSeconds,
      started: m.started,
      updated: m.updated,
      finished: m.finished ?? '',
      error: m.error,
    };
  }

  GetMigration(r: Partial<MigrationRef>): MigrationInfo {
    const v = this.#vdisk(r.vdisk);
    const m = this.#migrationInfo(v.id);
    if (!m) throw notFound(`vdisk ${v.name} has never been migrated`);
    return m;
  }

  ListMigrations(_r: Partial<Empty>): ListMigrationsReply {
    return { migrations: this.#db.migrations().flatMap((m) => this.#migrationInfo(m.vdiskId) ?? []) };
  }

  async CancelMigration(r: Partial<MigrationRef>): Promise<MigrationInfo> {
    const v = this.#vdisk(r.vdisk);
    const m = this.#db.migration(v.id);
    if (!m) throw notFound(`vdisk ${v.name} has never been migrated`);
    if (m.state !== 'running') throw precondition(`the migration of vdisk ${v.name} is not running (${m.state})`);
    await this.#ctrl.migrations.cancel(v.id);
    return this.#migrationInfo(v.id) as MigrationInfo;
  }

  /** Drains a container: no new allocations on it, every vdisk's segments on it migrated elsewhere. */
  EvacuateContainer(r: Partial<EvacuateContainerRequest>): ListMigrationsReply {
    const c = this.#db.findContainer(r.id ?? '');
    if (!r.id || !c) throw notFound(`unknown container ${r.id ?? ''}`);
    if (c.state === 'failed') {
      // Nothing can be copied off it: the legs it held are stale in their
      // tables. Rebuild them elsewhere now instead of after the rebuild delay.
      const stale = this.#db.staleLegs({ containerId: c.id });
      const vdisks = [...new Set(stale.map((s) => s.vdiskId))].map((id) => this.#db.vdisk(id)?.name ?? id).sort();
      this.#db.event('container', c.id, `evacuating a failed container: ${stale.length} stale legs of ${vdisks.length} vdisks are rebuilt elsewhere`);
      void this.#ctrl.rebuild.evacuate(c.id).catch((err: Error) => log.warn(`evacuating failed container ${c.id}: ${err.message}`));
      return { migrations: [], rebuildingSegments: stale.length, rebuildingVdisks: vdisks, failed: true };
    }
    const users = this.#db.vdisksOnContainer(c.id);
    if (c.state === 'online') this.#db.setContainerState(c.id, 'draining');
    this.#db.event('container', c.id, `evacuating ${users.length} vdisks`);
    const out: MigrationInfo[] = [];
    for (const id of users) {
      const v = this.#db.vdisk(id);
      if (!v) continue;
      if (!this.#ctrl.migrations.running(id)) this.#ctrl.migrations.start(v, { to: null, from: c.id });
      const info = this.#migrationInfo(id);
      if (info) out.push(info);
    }
    return { migrations: out };
  }

  /** Online backup of the database, as chunks (server-streaming; not in AdminMethods). */
  Backup(_r: Partial<Empty>): AsyncGenerator<BackupChunk> {
    this.#ctrl.writeBehind.flush();
    return backupChunks(this.#db);
  }

  Check(_r: Partial<Empty>): CheckReply {
    this.#ctrl.writeBehind.flush();
    const violations = checkInvariants(this.#db);
    const warnings = checkWarnings(this.#db);
    return { ok: violations.length === 0, violations, ...(warnings.length > 0 ? { warnings } : {}) };
  }
}

/** The gRPC implementation of AdminService over `admin`. */
export function adminImplementation(admin: Admin, authorize: (md: grpc.Metadata) => string | null): grpc.UntypedServiceImplementation {
  const impl: grpc.UntypedServiceImplementation = {};
  const def = adminServiceDefinition();
  for (const method of Object.keys(def) as AdminMethod[]) {
    if (def[method]?.responseStream) continue; // streaming RPCs below
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
  impl.Backup = (call: grpc.ServerWritableStream<Empty, BackupChunk>) => {
    const denied = authorize(call.metadata);
    if (denied !== null) {
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: denied });
      return;
    }
    void streamBackup(admin.Backup(call.request), call);
  };
  return impl;
}
