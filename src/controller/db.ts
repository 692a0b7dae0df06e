// The controller's SQLite database (better-sqlite3, WAL): containers, vdisks,
// mapping tables, the container allocation map, exports, agents and the
// fault log. The database is the truth; the controller's in-memory tables
// are caches of it.
//
// Every SQL statement of the controller is here (the schema and its
// versions are in schema.ts): the rest of the controller calls named
// methods, so what a query means is said once, next to it.
//
// Storage choices:
// - `segments` holds one row per segment that is not plain zero (thin vdisks
//   store only what is allocated; zero is the absence of a row). Rows keep
//   their location even in state invalid (the table sends invalid without
//   one), so setting a segment invalid and back to normal loses nothing.
//   Thick vdisks insert every row in one transaction (~1 s per million).
// - `container_segments` is the allocation map: one row per allocated
//   container segment with its reference count. The free map is its
//   complement (offsets 0 .. segments_total-1 without a row), so "allocated
//   and free at once" cannot be stored. A row whose count fell to 0 stays,
//   marked with the vdisk and version that released it, until every agent
//   exporting that vdisk has acked that version (docs/architecture.md, "Releases and scrubbing"); then
//   it is marked `scrub` (still allocated, nothing may map it) until an
//   agent has zeroed it, and only then is the row deleted and the location
//   reusable: no vdisk may read another's old data.
// - Snapshots are vdisks of kind 'snapshot' (read-only); a snapshot or clone
//   shares its source's container segments, whose counts then exceed 1.
// - `migrations` holds one row per vdisk with its latest migration, so a
//   restarted controller resumes a running one.
// - Mirrored vdisks (copies > 1): a segment's first location (leg 0) stays
//   in `segments`; its extra legs (1, 2) are rows of `segment_legs`, so a
//   one-copy vdisk has the rows and queries it always had. A leg removed
//   because its container failed becomes a `stale_legs` row that keeps its
//   location's reference until it is resynced or dropped. A location's
//   reference count is its references in the `segment_locations` view
//   (every leg of every entry) plus those of stale legs.
// - `space_reservations` holds ranges of container segments reserved by a
//   durable commit for lazily committed allocations (allocator.ts); they
//   stay free in the map. Rows left at start mean a run ended without a
//   clean shutdown: their unreferenced locations are suspect until
//   scrubbed (space-recovery.ts).

import Database from 'better-sqlite3';
import { closeSync, fstatSync, fsync, fsyncSync, openSync, statSync } from 'node:fs';
import { MAX_COPIES, MappingTable, SegmentState, isSegmentState, stateHasLocation, type EntryInput } from '../table/index.js';
import { migrate, type Sql } from './schema.js';
import type { LuStateMsg } from '../wire/proto-types.js';
import { log } from '../util/log.js';

export type { Sql };

export interface ContainerRow {
  id: string;
  path: string;
  size: number;
  dataOffset: number;
  segmentSize: number;
  segmentsTotal: number;
  state: ContainerState;
  added: string;
  /** Failure domain as set (container add --domain, set-domain); '' = derived from where it lives (domains.ts). */
  domain: string;
}

export type ContainerState = 'online' | 'draining' | 'failed';
export const CONTAINER_STATES: readonly ContainerState[] = ['online', 'draining', 'failed'];

export interface VdiskRow {
  id: string;
  name: string;
  size: number;
  blockSize: number;
  segmentSize: number;
  segmentCount: number;
  thin: boolean;
  version: number;
  created: string;
  /** 'snapshot' is read-only: its segments are no-write and stay so. */
  kind: VdiskKind;
  /** The vdisk a snapshot was taken of, or a clone's source (null for none). */
  parentId: string | null;
  /** How many locations (legs) each allocated segment should have, in distinct failure domains: 1..MAX_VDISK_COPIES. */
  copies: number;
}

/** The most copies a vdisk may have (schema CHECK). */
export const MAX_VDISK_COPIES = MAX_COPIES;

export type VdiskKind = 'vdisk' | 'snapshot';

export type MigrationState = 'running' | 'done' | 'cancelled' | 'failed';

export interface MigrationRow {
  vdiskId: string;
  /** null: any eligible container other than fromContainer. */
  toContainer: string | null;
  /** null: every container but toContainer. */
  fromContainer: string | null;
  state: MigrationState;
  segmentsTotal: number;
  segmentsDone: number;
  bytesDone: number;
  started: string;
  updated: string;
  finished: string | null;
  error: string;
}

/** One table entry referencing a location. */
export interface Reference {
  vdiskId: string;
  seg: number;
  state: SegmentState;
  /** Which of the entry's locations it is: 0 the first, 1..2 an extra leg. */
  leg: number;
}

/** A leg removed from its segment because its container failed, kept for resync (it keeps its location's reference). */
export interface StaleLeg {
  vdiskId: string;
  seg: number;
  containerId: string;
  offset: number;
  /** The segment was written since the leg was removed: a resync must copy it. */
  dirty: boolean;
  /** When it was removed (ISO time). */
  since: string;
}

export interface SegmentRow {
  vdiskId: string;
  seg: number;
  state: SegmentState;
  containerId: string | null;
  offset: number | null;
}

export interface ContainerSegmentRow {
  containerId: string;
  offset: number;
  refcount: number;
  releaseVdisk: string | null;
  releaseVersion: number | null;
  /** Freed, waiting for an agent to zero it before it goes back to the free map. */
  scrub: boolean;
}

export interface ExportRow {
  vdiskId: string;
  agent: string;
  targetIqn: string;
  lun: number;
  readOnly: boolean;
  ackedVersion: number;
  fenced: boolean;
  /** Initiator IQNs allowed to log in to the target and see this LUN; empty = any. */
  allowedInitiators: string[];
  /** The access state this agent's port group reports for the vdisk while it serves it (ALUA). */
  alua: AluaPreference;
}

export type AluaPreference = 'optimized' | 'non-optimized';
export const ALUA_PREFERENCES: readonly AluaPreference[] = ['optimized', 'non-optimized'];

/**
 * Agent numbers run 1..MAX_AGENT_NUMBER: an agent's relative target port ids
 * are number * 16 + portal index + 1 (up to 15 portals), and must fit 16 bits.
 */
export const MAX_AGENT_NUMBER = 4095;

export interface AgentRow {
  name: string;
  portals: string[];
  lastSeen: string;
  registered: string;
  /** Stable number (target port identity); null only before the agent's first registration with this schema. */
  number: number | null;
  /** The host it runs on (Register.host_id); '' when unknown (an older agent: a host of its own). */
  host: string;
}

/** A container an agent claims, as it reports it (Register, ContainerUpdate). */
export interface AgentClaim {
  id: string;
  path: string;
  /** False while the agent reports it cannot do I/O to it. */
  reachable: boolean;
  /** Why not ('' when reachable). */
  error: string;
}

/** One agent's reach of one container (ControllerDb.containerReach). */
export interface ContainerReach {
  agent: string;
  host: string;
  reachable: boolean;
  error: string;
}

export interface FaultRow {
  id: number;
  time: string;
  agent: string;
  vdiskId: string;
  segment: number;
  op: string;
  lba: number;
  blocks: number;
  state: string;
  tableVersion: number;
  outcome: string;
  detail: string;
}

/** What `tabula fault ls` filters on; absent fields match every fault. */
export interface FaultFilter {
  vdiskId?: string;
  agent?: string;
  outcome?: string;
  /** ISO time: faults at or after it. */
  since?: string;
}

/** The two logs that retention bounds (retention.ts). */
export type LogTable = 'faults' | 'events';

export type NewFault = Omit<FaultRow, 'id' | 'time' | 'outcome'> & { outcome?: string; /** When it arrived (default now). */ time?: string };

/** One location: a container segment. */
export interface Location {
  containerId: string;
  offset: number;
}

/** A range of container segments reserved durably for lazy allocations (space_reservations). */
export interface SpaceReservation {
  id: number;
  containerId: string;
  first: number;
  count: number;
}

/** A table entry and the location it maps. */
export interface EntryAt extends Location {
  vdiskId: string;
  seg: number;
  /** Which location of the entry: 0 the first, 1..2 an extra leg, -1 a stale leg. */
  leg: number;
}

export const sameLocation = (a: Location, b: Location): boolean => a.containerId === b.containerId && a.offset === b.offset;

/** A table entry as the table takes it, with its extra legs (EntryInput.legs). */
export type EntryWithLegs = EntryInput;

/** An entry `tabula check` looks at closer (ControllerDb.suspectEntries). */
export interface SuspectEntry {
  vdiskId: string;
  seg: number;
  state: number;
  containerId: string | null;
  offset: number | null;
  vdiskSegments: number;
  vdiskSegmentSize: number;
  /** Null when the container is unknown. */
  containerSegmentSize: number | null;
}

function now(): string {
  return new Date().toISOString();
}

interface RawContainer {
  id: string;
  path: string;
  size: number;
  data_offset: number;
  segment_size: number;
  segments_total: number;
  state: ContainerState;
  added: string;
  domain: string;
}

interface RawVdisk {
  id: string;
  name: string;
  size: number;
  block_size: number;
  segment_size: number;
  segment_count: number;
  thin: number;
  version: number;
  created: string;
  kind: VdiskKind;
  parent_id: string | null;
  copies: number;
}

interface RawMigration {
  vdisk_id: string;
  to_container: string | null;
  from_container: string | null;
  state: MigrationState;
  segments_total: number;
  segments_done: number;
  bytes_done: number;
  started: string;
  updated: string;
  finished: string | null;
  error: string;
}

const toMigration = (r: RawMigration): MigrationRow => ({
  vdiskId: r.vdisk_id,
  toContainer: r.to_container,
  fromContainer: r.from_container,
  state: r.state,
  segmentsTotal: r.segments_total,
  segmentsDone: r.segments_done,
  bytesDone: r.bytes_done,
  started: r.started,
  updated: r.updated,
  finished: r.finished,
  error: r.error,
});

interface RawSegment {
  vdisk_id: string;
  seg: number;
  state: number;
  container_id: string | null;
  offset: number | null;
}

interface RawExport {
  vdisk_id: string;
  agent: string;
  target_iqn: string;
  lun: number;
  read_only: number;
  acked_version: number;
  fenced: number;
  allowed_initiators: string;
  alua: AluaPreference;
}

interface RawAgent {
  name: string;
  portals: string;
  last_seen: string;
  registered: string;
  number: number | null;
  host: string;
}

const toAgent = (r: RawAgent): AgentRow => ({
  name: r.name,
  portals: JSON.parse(r.portals) as string[],
  lastSeen: r.last_seen,
  registered: r.registered,
  number: r.number,
  host: r.host,
});

interface RawFault {
  id: number;
  time: string;
  agent: string;
  vdisk_id: string;
  segment: number;
  op: string;
  lba: number;
  blocks: number;
  state: string;
  table_version: number;
  outcome: string;
  detail: string;
}

const toContainer = (r: RawContainer): ContainerRow => ({
  id: r.id,
  path: r.path,
  size: r.size,
  dataOffset: r.data_offset,
  segmentSize: r.segment_size,
  segmentsTotal: r.segments_total,
  state: r.state,
  added: r.added,
  domain: r.domain,
});

const toVdisk = (r: RawVdisk): VdiskRow => ({
  id: r.id,
  name: r.name,
  size: r.size,
  blockSize: r.block_size,
  segmentSize: r.segment_size,
  segmentCount: r.segment_count,
  thin: r.thin !== 0,
  version: r.version,
  created: r.created,
  kind: r.kind,
  parentId: r.parent_id,
  copies: r.copies,
});

const toSegment = (r: RawSegment): SegmentRow => ({
  vdiskId: r.vdisk_id,
  seg: r.seg,
  state: r.state as SegmentState,
  containerId: r.container_id,
  offset: r.offset,
});

const toExport = (r: RawExport): ExportRow => ({
  vdiskId: r.vdisk_id,
  agent: r.agent,
  targetIqn: r.target_iqn,
  lun: r.lun,
  readOnly: r.read_only !== 0,
  ackedVersion: r.acked_version,
  fenced: r.fenced !== 0,
  allowedInitiators: JSON.parse(r.allowed_initiators) as string[],
  alua: r.alua,
});

const toFault = (r: RawFault): FaultRow => ({
  id: r.id,
  time: r.time,
  agent: r.agent,
  vdiskId: r.vdisk_id,
  segment: r.segment,
  op: r.op,
  lba: r.lba,
  blocks: r.blocks,
  state: r.state,
  tableVersion: r.table_version,
  outcome: r.outcome,
  detail: r.detail,
});

/** Thrown when a segment change would break the table's rules (bad entry, unknown container). */
export class TableChangeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TableChangeError';
  }
}

export class ControllerDb {
  readonly sql: Sql;
  readonly path: string;
  /** Statements prepared once, when the database opens. */
  readonly #statements;
  /** relaxed()'s two pragmas (see there). */
  readonly #syncNormal: Database.Statement;
  readonly #syncFull: Database.Statement;
  /** relaxed() calls in progress: their commits run with synchronous = NORMAL, no durable point. */
  #relaxedDepth = 0;
  /** Inside lazy(): a thin allocation's commit. */
  #inLazy = false;
  /** Told of every durable point: a FULL commit that wrote, or an fsync of the WAL (durability.ts). */
  readonly #durableListeners: (() => void)[] = [];
  /** An fd of `<db>-wal` for the group commit's fsync, with its inode (the file may be replaced). */
  #wal: { fd: number; ino: number } | null = null;
  readonly #totalChanges;

  constructor(path: string) {
    this.path = path;
    this.sql = new Database(path);
    this.sql.pragma('journal_mode = WAL');
    this.sql.pragma('foreign_keys = ON');
    // FULL: a table version pushed to agents must survive power loss, or a
    // restarted controller could hand the same location out twice.
    this.sql.pragma('synchronous = FULL');
    this.#syncNormal = this.sql.prepare('PRAGMA synchronous = NORMAL');
    this.#syncFull = this.sql.prepare('PRAGMA synchronous = FULL');
    this.sql.pragma('busy_timeout = 5000');
    migrate(this.sql);
    const p = (q: string) => this.sql.prepare(q);
    this.#totalChanges = p('SELECT total_changes()').pluck();
    this.#statements = {
      container: p('SELECT * FROM containers WHERE id = ?'),
      containers: p('SELECT * FROM containers ORDER BY added, id'),
      insertContainer: p(
        'INSERT INTO containers (id, path, size, data_offset, segment_size, segments_total, state, added, domain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      containerUsed: p('SELECT COUNT(*) AS n FROM container_segments WHERE container_id = ?'),
      vdiskById: p('SELECT * FROM vdisks WHERE id = ?'),
      vdiskByName: p('SELECT * FROM vdisks WHERE name = ?'),
      vdisks: p('SELECT * FROM vdisks ORDER BY name'),
      insertVdisk: p(
        'INSERT INTO vdisks (id, name, size, block_size, segment_size, segment_count, thin, version, created, kind, parent_id, copies) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      bumpVersion: p('UPDATE vdisks SET version = version + 1 WHERE id = ? RETURNING version'),
      segment: p('SELECT * FROM segments WHERE vdisk_id = ? AND seg = ?'),
      segmentOwner: p('SELECT owner FROM segment_owners WHERE vdisk_id = ? AND seg = ?'),
      setSegmentOwner: p('INSERT OR REPLACE INTO segment_owners (vdisk_id, seg, owner) VALUES (?, ?, ?)'),
      clearSegmentOwner: p('DELETE FROM segment_owners WHERE vdisk_id = ? AND seg = ?'),
      segmentsOf: p('SELECT * FROM segments WHERE vdisk_id = ? ORDER BY seg'),
      segmentsRaw: p('SELECT seg, state, container_id, offset FROM segments WHERE vdisk_id = ? ORDER BY seg').raw(),
      insertContainerSegment: p('INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, ?, 1)'),
      insertSegment: p('INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, ?, ?, ?, ?)'),
      segmentsIn: p('SELECT * FROM segments WHERE vdisk_id = ? AND seg >= ? AND seg < ? ORDER BY seg'),
      upsertSegment: p(
        `INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (vdisk_id, seg) DO UPDATE SET state = excluded.state, container_id = excluded.container_id, offset = excluded.offset`,
      ),
      deleteSegment: p('DELETE FROM segments WHERE vdisk_id = ? AND seg = ?'),
      legsOf: p('SELECT container_id AS containerId, offset FROM segment_legs WHERE vdisk_id = ? AND seg = ? ORDER BY leg'),
      legsRaw: p('SELECT seg, container_id, offset FROM segment_legs WHERE vdisk_id = ? ORDER BY seg, leg').raw(),
      anyLeg: p('SELECT 1 FROM segment_legs WHERE vdisk_id = ? LIMIT 1').pluck(),
      segmentsWithLegsRaw: p(
        `SELECT s.seg, s.state, s.container_id, s.offset, l1.container_id, l1.offset, l2.container_id, l2.offset FROM segments s
         LEFT JOIN segment_legs l1 ON l1.vdisk_id = s.vdisk_id AND l1.seg = s.seg AND l1.leg = 1
         LEFT JOIN segment_legs l2 ON l2.vdisk_id = s.vdisk_id AND l2.seg = s.seg AND l2.leg = 2
         WHERE s.vdisk_id = ? ORDER BY s.seg`,
      ).raw(),
      deleteLegs: p('DELETE FROM segment_legs WHERE vdisk_id = ? AND seg = ?'),
      insertLeg: p('INSERT INTO segment_legs (vdisk_id, seg, leg, container_id, offset) VALUES (?, ?, ?, ?, ?)'),
      staleOfSegment: p('SELECT container_id AS containerId, offset FROM stale_legs WHERE vdisk_id = ? AND seg = ? ORDER BY container_id'),
      insertStale: p('INSERT INTO stale_legs (vdisk_id, seg, container_id, offset, dirty, since) VALUES (?, ?, ?, ?, ?, ?)'),
      deleteStale: p('DELETE FROM stale_legs WHERE vdisk_id = ? AND seg = ? AND container_id = ? RETURNING offset').pluck(),
      markDirty: p('UPDATE stale_legs SET dirty = 1 WHERE vdisk_id = ? AND seg = ? AND dirty = 0'),
      containerSegment: p('SELECT * FROM container_segments WHERE container_id = ? AND offset = ?'),
      addReference: p(
        `INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, ?, 1)
         ON CONFLICT (container_id, offset) DO UPDATE SET refcount = refcount + 1, release_vdisk = NULL, release_version = NULL`,
      ),
      dropReference: p(
        `UPDATE container_segments SET refcount = refcount - 1,
           release_vdisk = CASE WHEN refcount = 1 THEN ? ELSE release_vdisk END,
           release_version = CASE WHEN refcount = 1 THEN ? ELSE release_version END
         WHERE container_id = ? AND offset = ? AND refcount > 0`,
      ),
      anyReleased: p('SELECT 1 FROM container_segments WHERE refcount = 0 AND release_vdisk = ? LIMIT 1').pluck(),
      fencedAgents: p('SELECT agent FROM exports WHERE vdisk_id = ? AND fenced = 1 ORDER BY agent').pluck(),
      releasedToScrub: p(
        `UPDATE container_segments SET scrub = 1, release_vdisk = NULL, release_version = NULL
         WHERE refcount = 0 AND release_vdisk = ? AND release_version <= ? RETURNING container_id, offset`,
      ),
      insertScrub: p('INSERT INTO container_segments (container_id, offset, refcount, scrub) VALUES (?, ?, 0, 1) ON CONFLICT DO NOTHING'),
      scrubPending: p('SELECT container_id, offset FROM container_segments WHERE scrub = 1 ORDER BY container_id, offset'),
      scrubbed: p(
        'DELETE FROM container_segments WHERE container_id = ? AND offset >= ? AND offset < ? AND scrub = 1 AND refcount = 0 RETURNING offset',
      ),
      scrubCount: p('SELECT COUNT(*) FROM container_segments WHERE container_id = ? AND scrub = 1'),
      scrubIn: p('SELECT offset FROM container_segments WHERE container_id = ? AND offset >= ? AND offset < ? AND scrub = 1 ORDER BY offset'),
      usedOffsets: p('SELECT offset FROM container_segments WHERE container_id = ? ORDER BY offset'),
      agent: p('SELECT * FROM agents WHERE name = ?'),
      agents: p('SELECT * FROM agents ORDER BY name'),
      upsertAgent: p(
        `INSERT INTO agents (name, portals, last_seen, registered) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET portals = excluded.portals, last_seen = excluded.last_seen`,
      ),
      touchAgent: p('UPDATE agents SET last_seen = ? WHERE name = ?'),
      clearAgentContainers: p('DELETE FROM agent_containers WHERE agent = ?'),
      insertAgentContainer: p('INSERT INTO agent_containers (agent, container_id, path, reachable, error) VALUES (?, ?, ?, ?, ?)'),
      agentContainers: p('SELECT container_id FROM agent_containers WHERE agent = ? AND reachable = 1 ORDER BY container_id'),
      agentClaims: p('SELECT container_id AS id, path, reachable, error FROM agent_containers WHERE agent = ? ORDER BY container_id'),
      containerReach: p(
        `SELECT ac.agent AS agent, a.host AS host, ac.reachable AS reachable, ac.error AS error
         FROM agent_containers ac JOIN agents a ON a.name = ac.agent WHERE ac.container_id = ? ORDER BY ac.agent`,
      ),
      setAgentHost: p('UPDATE agents SET host = ? WHERE name = ?'),
      containerAgents: p('SELECT agent FROM agent_containers WHERE container_id = ? ORDER BY agent'),
      exportsOfVdisk: p('SELECT * FROM exports WHERE vdisk_id = ? ORDER BY agent'),
      exportsOfAgent: p('SELECT * FROM exports WHERE agent = ? ORDER BY target_iqn, lun'),
      exports: p('SELECT * FROM exports ORDER BY agent, target_iqn, lun'),
      export: p('SELECT * FROM exports WHERE vdisk_id = ? AND agent = ?'),
      insertExport: p(
        'INSERT INTO exports (vdisk_id, agent, target_iqn, lun, read_only, acked_version, fenced, allowed_initiators, alua) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)',
      ),
      numberAgent: p('UPDATE agents SET number = ? WHERE name = ? AND number IS NULL'),
      agentNumbers: p('SELECT number FROM agents WHERE number IS NOT NULL ORDER BY number').pluck(),
      deleteExport: p('DELETE FROM exports WHERE vdisk_id = ? AND agent = ?'),
      ackExport: p('UPDATE exports SET acked_version = MAX(acked_version, ?) WHERE vdisk_id = ? AND agent = ?'),
      fenceExport: p('UPDATE exports SET fenced = ? WHERE vdisk_id = ? AND agent = ?'),
      minAcked: p('SELECT MIN(acked_version) AS v, COUNT(*) AS n FROM exports WHERE vdisk_id = ?'),
      insertFault: p(
        `INSERT INTO faults (time, agent, vdisk_id, segment, op, lba, blocks, state, table_version, outcome, detail)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
      ),
      faultOutcome: p('UPDATE faults SET outcome = ?, detail = CASE WHEN ? = \'\' THEN detail ELSE ? END WHERE id = ?'),
      faults: p('SELECT * FROM faults ORDER BY id DESC LIMIT ?'),
      faultsOf: p('SELECT * FROM faults WHERE vdisk_id = ? ORDER BY id DESC LIMIT ?'),
      event: p('INSERT INTO events (time, kind, subject, message) VALUES (?, ?, ?, ?)'),
      references: p('SELECT vdisk_id, seg, state, leg FROM segment_locations WHERE container_id = ? AND offset = ? ORDER BY vdisk_id, seg, leg'),
      migration: p('SELECT * FROM migrations WHERE vdisk_id = ?'),
      migrations: p('SELECT * FROM migrations ORDER BY started, vdisk_id'),
      upsertMigration: p(
        `INSERT INTO migrations (vdisk_id, to_container, from_container, state, segments_total, segments_done, bytes_done, started, updated, finished, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (vdisk_id) DO UPDATE SET to_container = excluded.to_container, from_container = excluded.from_container,
           state = excluded.state, segments_total = excluded.segments_total, segments_done = excluded.segments_done,
           bytes_done = excluded.bytes_done, started = excluded.started, updated = excluded.updated,
           finished = excluded.finished, error = excluded.error`,
      ),
    };
  }

  close(): void {
    if (this.#wal !== null) {
      closeSync(this.#wal.fd);
      this.#wal = null;
    }
    if (this.sql.open) this.sql.close();
  }

  /** Whether the database is still open (the controller shuts down). */
  get open(): boolean {
    return this.sql.open;
  }

  /** Copies the live database into a new file at `path` (SQLite's online backup: consistent, while serving). */
  async backupTo(path: string): Promise<void> {
    await this.sql.backup(path);
  }

  /**
   * Runs `fn` in one transaction (nested calls join the outer one). An
   * outer one that wrote, outside relaxed() and lazy(), is a durable point
   * (synchronous = FULL: its commit fsynced the WAL, and with it every
   * earlier commit, the WAL being one sequential file).
   */
  tx<T>(fn: () => T): T {
    if (this.sql.inTransaction || this.#relaxedDepth > 0) return this.sql.transaction(fn)();
    const before = this.#totalChanges.get() as number;
    const r = this.sql.transaction(fn)();
    // A transaction that wrote nothing synced nothing.
    if ((this.#totalChanges.get() as number) !== before) this.#durablePoint();
    return r;
  }

  /**
   * Runs writes whose loss at a power cut is harmless (the fault log, acked
   * versions: an older acked version only delays reuse of space) without an
   * fsync of their own: WAL with synchronous = NORMAL is still atomic and
   * survives a controller crash, and the next durable commit (FULL) syncs
   * them with it. Saves an fsync (~1-3 ms) per fault and per ack.
   */
  relaxed<T>(fn: () => T): T {
    if (this.sql.inTransaction) return fn();
    // Prepared once: SQLite sets the level when it compiles the pragma, and
    // the statement expires itself, so each run compiles (and sets) it again;
    // what is saved is better-sqlite3's parse and prepare, twice per fault.
    this.#syncNormal.run();
    this.#relaxedDepth++;
    try {
      return fn();
    } finally {
      this.#relaxedDepth--;
      this.#syncFull.run();
    }
  }

  /**
   * A thin allocation's commit (issue 18, docs/architecture.md): `fn` runs
   * in one transaction with synchronous = NORMAL. Committed, it survives a
   * controller crash at once; it is durable against power loss only at the
   * next durable point (a FULL commit, or the group commit's fsync of the
   * WAL, durability.ts). Keeps the fault path free of fsyncs. SQLite cannot
   * change the safety level inside a transaction, so the choice is made
   * here, before it starts; what the commit allocates must lie in space
   * reserved durably before it (Allocator.prepareLazy).
   */
  lazy<T>(fn: () => T): T {
    if (this.sql.inTransaction) throw new Error('a lazy commit cannot join a transaction in progress');
    this.#inLazy = true;
    try {
      return this.relaxed(() => this.sql.transaction(fn)());
    } finally {
      this.#inLazy = false;
    }
  }

  /** Inside a lazy commit (lazy()). */
  get inLazyCommit(): boolean {
    return this.#inLazy;
  }

  /** Calls `listener` after every durable point (synchronously, in the same turn). */
  onDurable(listener: () => void): void {
    this.#durableListeners.push(listener);
  }

  #durablePoint(): void {
    // After a commit that happened: a listener's failure must not look like the commit's.
    for (const l of this.#durableListeners) {
      try {
        l();
      } catch (err) {
        log.error(`after a durable commit: ${(err as Error).message}`);
      }
    }
  }

  /**
   * The WAL's fd, opened once and again when the file was replaced (a new
   * inode); null when there is no -wal file. fsync on any fd of the file
   * flushes all of it: every frame SQLite wrote (write(2), even with
   * synchronous = NORMAL) before the call.
   */
  #walFd(): number | null {
    const walPath = `${this.path}-wal`;
    const st = statSync(walPath, { throwIfNoEntry: false });
    if (st === undefined) return null;
    if (this.#wal !== null && this.#wal.ino === st.ino) return this.#wal.fd;
    if (this.#wal !== null) closeSync(this.#wal.fd);
    this.#wal = null;
    const fd = openSync(walPath, 'r+');
    this.#wal = { fd, ino: fstatSync(fd).ino };
    return fd;
  }

  /**
   * Group commit: fsyncs the WAL off the event loop. Every commit made
   * before the call is durable once it resolves true; commits made while it
   * runs may not be. Resolves false when there is no -wal file (the caller
   * falls back to syncNow()). Tells no durable-point listener: only the
   * caller knows which commits came before (durability.ts).
   */
  fsyncWal(): Promise<boolean> {
    const fd = this.#walFd();
    if (fd === null) return Promise.resolve(false);
    return new Promise((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve(true))));
  }

  /**
   * Makes every commit so far durable, synchronously, and is a durable
   * point: an fsync of the WAL, or without a -wal file a FULL commit of a
   * write that changes nothing (the header's application id, set to itself).
   */
  syncNow(): void {
    const fd = this.#walFd();
    if (fd !== null) {
      fsyncSync(fd);
    } else {
      const id = this.sql.pragma('application_id', { simple: true }) as number;
      this.sql.pragma(`application_id = ${id}`);
    }
    this.#durablePoint();
  }

  /** The vdisk's version, raised to `version` (durably: a FULL commit) if it was lower; false when it was not or the vdisk is gone. */
  raiseVersion(vdiskId: string, version: number): boolean {
    return this.tx(() => this.sql.prepare('UPDATE vdisks SET version = ? WHERE id = ? AND version < ?').run(version, vdiskId, version).changes > 0);
  }

  // ---- LU state (one logical unit on every path) ----

  /** The vdisk's LU state (proto LuState), or undefined when none was ever set (the empty state). */
  luState(vdiskId: string): LuStateMsg | undefined {
    const json = this.#luStatements().get.get(vdiskId) as string | undefined;
    return json === undefined ? undefined : (JSON.parse(json) as LuStateMsg);
  }

  /** Records the vdisk's LU state as of table `version` (inside the change's transaction). */
  setLuState(vdiskId: string, state: LuStateMsg, version: number): void {
    this.#luStatements().set.run(vdiskId, JSON.stringify(state), version);
  }

  #lu: { get: Database.Statement; set: Database.Statement } | undefined;

  /** Prepared on first use (kept apart from the statements prepared at open). */
  #luStatements(): { get: Database.Statement; set: Database.Statement } {
    this.#lu ??= {
      get: this.sql.prepare('SELECT state FROM lu_state WHERE vdisk_id = ?').pluck(),
      set: this.sql.prepare(
        `INSERT INTO lu_state (vdisk_id, state, version) VALUES (?, ?, ?)
         ON CONFLICT (vdisk_id) DO UPDATE SET state = excluded.state, version = excluded.version`,
      ),
    };
    return this.#lu;
  }

  // ---- containers ----

  container(id: string): ContainerRow | undefined {
    const r = this.#statements.container.get(id) as RawContainer | undefined;
    return r && toContainer(r);
  }

  containers(): ContainerRow[] {
    return (this.#statements.containers.all() as RawContainer[]).map(toContainer);
  }

  /** Finds a container by UUID or unique UUID prefix. */
  findContainer(idOrPrefix: string): ContainerRow | undefined {
    const exact = this.container(idOrPrefix);
    if (exact) return exact;
    const all = this.containers().filter((c) => c.id.startsWith(idOrPrefix));
    if (all.length > 1) throw new Error(`container id prefix "${idOrPrefix}" is ambiguous (${all.length} containers)`);
    return all[0];
  }

  insertContainer(c: Omit<ContainerRow, 'added' | 'domain'> & { domain?: string }): ContainerRow {
    const added = now();
    const domain = c.domain ?? '';
    this.#statements.insertContainer.run(c.id, c.path, c.size, c.dataOffset, c.segmentSize, c.segmentsTotal, c.state, added, domain);
    return { ...c, added, domain };
  }

  setContainerState(id: string, state: ContainerState): void {
    this.sql.prepare('UPDATE containers SET state = ? WHERE id = ?').run(state, id);
  }

  /** Sets a container's failure domain ('' = derived again, domains.ts). Legs already placed stay where they are. */
  setContainerDomain(id: string, domain: string): void {
    if (this.sql.prepare('UPDATE containers SET domain = ? WHERE id = ?').run(domain, id).changes === 0) {
      throw new TableChangeError(`container ${id} does not exist`);
    }
  }

  deleteContainer(id: string): void {
    this.sql.prepare('DELETE FROM containers WHERE id = ?').run(id);
  }

  // ---- a dead container (container rm --dead) ----

  /** Vdisks (names, sorted) with segments whose only location is on the container, and how many: removing it loses them. */
  soleLocationsOn(containerId: string): { vdisk: string; segments: number }[] {
    return this.sql
      .prepare(
        `SELECT v.name AS vdisk, COUNT(*) AS segments FROM segment_locations l JOIN vdisks v ON v.id = l.vdisk_id
         WHERE l.container_id = ?
           AND NOT EXISTS (SELECT 1 FROM segment_locations o WHERE o.vdisk_id = l.vdisk_id AND o.seg = l.seg AND o.container_id <> l.container_id)
         GROUP BY v.name ORDER BY v.name`,
      )
      .all(containerId) as { vdisk: string; segments: number }[];
  }

  /** Segments of the vdisk with a leg (any state) on the container, ascending. */
  segmentsOn(vdiskId: string, containerId: string): number[] {
    return this.sql.prepare('SELECT DISTINCT seg FROM segment_locations WHERE vdisk_id = ? AND container_id = ? ORDER BY seg').pluck().all(vdiskId, containerId) as number[];
  }

  /** References to the container's locations: legs of table entries and stale legs. */
  referencesOn(containerId: string): number {
    return this.sql
      .prepare('SELECT (SELECT COUNT(*) FROM segment_locations WHERE container_id = ?) + (SELECT COUNT(*) FROM stale_legs WHERE container_id = ?)')
      .pluck()
      .get(containerId, containerId) as number;
  }

  /**
   * Forgets the container's allocation map rows that nothing references
   * (released by the change in progress): a dead container's space is gone,
   * so it is neither reclaimed nor scrubbed. Returns how many.
   */
  forgetReleasedOn(containerId: string): number {
    return this.sql.prepare('DELETE FROM container_segments WHERE container_id = ? AND refcount = 0').run(containerId).changes;
  }

  /**
   * Unregisters a dead container: its allocation map rows and its row (the
   * agents' claims go with it). Throws while a table entry or a stale leg
   * still references it.
   */
  deleteDeadContainer(id: string): void {
    this.tx(() => {
      const refs = this.referencesOn(id);
      if (refs > 0) throw new TableChangeError(`container ${id} is still referenced by ${refs} legs`);
      this.sql.prepare('DELETE FROM container_segments WHERE container_id = ?').run(id);
      this.deleteContainer(id);
    });
  }

  containerSegmentsUsed(id: string): number {
    return (this.#statements.containerUsed.get(id) as { n: number }).n;
  }
  /** A container's allocated segments: all, those referenced more than once (shared), those once (exclusive). */
  containerSharing(id: string): { used: number; shared: number; exclusive: number } {
    return this.sql
      .prepare('SELECT COUNT(*) AS used, COALESCE(SUM(refcount > 1), 0) AS shared, COALESCE(SUM(refcount = 1), 0) AS exclusive FROM container_segments WHERE container_id = ?')
      .get(id) as { used: number; shared: number; exclusive: number };
  }

  /** The vdisks (ids, sorted) with an entry (any leg) or a stale leg on the container. */
  vdisksOnContainer(containerId: string): string[] {
    return this.sql
      .prepare('SELECT vdisk_id FROM segment_locations WHERE container_id = ? UNION SELECT vdisk_id FROM stale_legs WHERE container_id = ? ORDER BY vdisk_id')
      .pluck()
      .all(containerId, containerId) as string[];
  }


  /** Allocated offsets of a container in ascending order (for the allocator's free map). */
  usedOffsets(id: string): number[] {
    return (this.#statements.usedOffsets.pluck().all(id) as number[]);
  }

  containerSegment(containerId: string, offset: number): ContainerSegmentRow | undefined {
    const r = this.#statements.containerSegment.get(containerId, offset) as
      | { container_id: string; offset: number; refcount: number; release_vdisk: string | null; release_version: number | null; scrub: number }
      | undefined;
    return (
      r && {
        containerId: r.container_id,
        offset: r.offset,
        refcount: r.refcount,
        releaseVdisk: r.release_vdisk,
        releaseVersion: r.release_version,
        scrub: r.scrub !== 0,
      }
    );
  }

  // ---- scrubbing (freed space is zeroed before reuse) ----

  /** Every location waiting to be scrubbed, by container and offset. */
  scrubPending(): Location[] {
    return (this.#statements.scrubPending.all() as { container_id: string; offset: number }[]).map((r) => ({ containerId: r.container_id, offset: r.offset }));
  }

  /** Locations of one container waiting to be scrubbed. */
  scrubPendingCount(containerId: string): number {
    return this.#statements.scrubCount.pluck().get(containerId) as number;
  }

  /** Offsets of [offset, offset+count) of a container that wait to be scrubbed. */
  scrubPendingIn(containerId: string, offset: number, count: number): number[] {
    return this.#statements.scrubIn.pluck().all(containerId, offset, offset + count) as number[];
  }

  /**
   * Marks locations that nothing records (a reservation given up after a
   * copy may have written to it) as waiting to be scrubbed; returns those
   * newly marked (a location the map already holds is left as it is).
   */
  markScrub(locs: readonly Location[]): Location[] {
    return this.tx(() => locs.filter((l) => this.#statements.insertScrub.run(l.containerId, l.offset).changes > 0));
  }

  /**
   * Container segments [offset, offset+count) of a container have been
   * zeroed: those still waiting for it leave the map (so are free) and are
   * returned.
   */
  finishScrub(containerId: string, offset: number, count: number): Location[] {
    return this.tx(() =>
      (this.#statements.scrubbed.pluck().all(containerId, offset, offset + count) as number[]).map((o) => ({ containerId, offset: o })),
    );
  }

  // ---- space reservations (free space reserved durably for lazy allocations, allocator.ts) ----

  /** Every reservation row, by container and first offset. */
  spaceReservations(): SpaceReservation[] {
    return this.sql.prepare('SELECT id, container_id AS containerId, first, count FROM space_reservations ORDER BY container_id, first').all() as SpaceReservation[];
  }

  /** Whether any reservation row exists (a start after a clean shutdown has none). */
  hasSpaceReservations(): boolean {
    return this.sql.prepare('SELECT 1 FROM space_reservations LIMIT 1').pluck().get() !== undefined;
  }

  /**
   * Replaces reservation rows of containers in one transaction (durable: the
   * connection's synchronous = FULL): per container, deletes the rows `drop`
   * names and inserts `ranges`. Returns the new rows' ids, per change. Call
   * outside any other transaction, or the rows are only as durable as it.
   */
  replaceSpaceReservations(changes: readonly { containerId: string; drop: readonly number[]; ranges: readonly { first: number; count: number }[] }[]): number[][] {
    const del = this.sql.prepare('DELETE FROM space_reservations WHERE id = ?');
    const ins = this.sql.prepare('INSERT INTO space_reservations (container_id, first, count) VALUES (?, ?, ?) RETURNING id').pluck();
    return this.tx(() =>
      changes.map((c) => {
        for (const id of c.drop) del.run(id);
        return c.ranges.map((r) => ins.get(c.containerId, r.first, r.count) as number);
      }),
    );
  }

  /**
   * Ends reservations from an earlier run (space-recovery.ts), in one
   * durable transaction: `suspects` (reserved locations nothing referenced)
   * are marked to be scrubbed, the rows `ids` deleted. Returns the locations
   * newly marked (those of containers still known, not already held).
   */
  releaseSpaceReservations(ids: readonly number[], suspects: readonly Location[]): Location[] {
    const del = this.sql.prepare('DELETE FROM space_reservations WHERE id = ?');
    return this.tx(() => {
      const known = new Set(this.containers().map((c) => c.id));
      const marked = suspects.filter((l) => known.has(l.containerId) && this.#statements.insertScrub.run(l.containerId, l.offset).changes > 0);
      for (const id of ids) del.run(id);
      return marked;
    });
  }

  /** Reservation rows that reach past the end of their container (`tabula check`). */
  reservationsBeyondContainer(): (SpaceReservation & { segmentsTotal: number })[] {
    return this.sql
      .prepare(
        `SELECT r.id AS id, r.container_id AS containerId, r.first AS first, r.count AS count, c.segments_total AS segmentsTotal
         FROM space_reservations r JOIN containers c ON c.id = r.container_id WHERE r.first + r.count > c.segments_total`,
      )
      .all() as (SpaceReservation & { segmentsTotal: number })[];
  }

  containerAgents(id: string): string[] {
    return this.#statements.containerAgents.pluck().all(id) as string[];
  }

  // ---- vdisks ----

  vdisk(id: string): VdiskRow | undefined {
    const r = this.#statements.vdiskById.get(id) as RawVdisk | undefined;
    return r && toVdisk(r);
  }

  vdiskByName(name: string): VdiskRow | undefined {
    const r = this.#statements.vdiskByName.get(name) as RawVdisk | undefined;
    return r && toVdisk(r);
  }

  /** By name first, then by id. */
  findVdisk(nameOrId: string): VdiskRow | undefined {
    return this.vdiskByName(nameOrId) ?? this.vdisk(nameOrId);
  }

  vdisks(): VdiskRow[] {
    return (this.#statements.vdisks.all() as RawVdisk[]).map(toVdisk);
  }

  insertVdisk(
    v: Omit<VdiskRow, 'created' | 'kind' | 'parentId' | 'copies'> & { kind?: VdiskKind; parentId?: string | null; copies?: number },
  ): VdiskRow {
    const created = now();
    const kind = v.kind ?? 'vdisk';
    const parentId = v.parentId ?? null;
    const copies = v.copies ?? 1;
    checkCopies(v.name, copies);
    this.#statements.insertVdisk.run(
      v.id,
      v.name,
      v.size,
      v.blockSize,
      v.segmentSize,
      v.segmentCount,
      v.thin ? 1 : 0,
      v.version,
      created,
      kind,
      parentId,
      copies,
    );
    return { ...v, created, kind, parentId, copies };
  }

  /**
   * Sets how many copies the vdisk should have. Only the number: adding or
   * removing legs is the caller's table change (rebuild.ts), so until then
   * segments are degraded (fewer legs) or over (more).
   */
  setVdiskCopies(id: string, copies: number): void {
    checkCopies(id, copies);
    if (this.sql.prepare('UPDATE vdisks SET copies = ? WHERE id = ?').run(copies, id).changes === 0) {
      throw new TableChangeError(`vdisk ${id} does not exist`);
    }
  }

  setVdiskSize(id: string, size: number, segmentCount: number): void {
    this.sql.prepare('UPDATE vdisks SET size = ?, segment_count = ? WHERE id = ?').run(size, segmentCount, id);
    this.sql.prepare('DELETE FROM segment_owners WHERE vdisk_id = ? AND seg >= ?').run(id, segmentCount);
  }

  // ---- write owners ----

  /**
   * The number that names an agent as a segment's write owner (Extent.owner):
   * its agent number (agents.number, also its ALUA port group), stable while
   * the agent is registered; 0 before it has one.
   */
  agentNumber(name: string): number {
    return this.agent(name)?.number ?? 0;
  }

  /** The agent named by an owner number, if any. */
  agentByNumber(n: number): string | undefined {
    const r = this.sql.prepare('SELECT name FROM agents WHERE number = ?').get(n) as { name: string } | undefined;
    return r?.name;
  }

  /** The segment's write owner (agent number), 0 for none. */
  segmentOwner(vdiskId: string, seg: number): number {
    const r = this.#statements.segmentOwner.get(vdiskId, seg) as { owner: number } | undefined;
    return r?.owner ?? 0;
  }

  /** Owned segments of a vdisk, in segment order. */
  segmentOwners(vdiskId: string): { seg: number; owner: number }[] {
    return this.sql.prepare('SELECT seg, owner FROM segment_owners WHERE vdisk_id = ? ORDER BY seg').all(vdiskId) as { seg: number; owner: number }[];
  }

  /** Every owned segment (for tabula check). */
  allSegmentOwners(): { vdiskId: string; seg: number; owner: number }[] {
    return this.sql.prepare('SELECT vdisk_id AS vdiskId, seg, owner FROM segment_owners ORDER BY vdisk_id, seg').all() as {
      vdiskId: string;
      seg: number;
      owner: number;
    }[];
  }

  /** Owned segments whose owner does not export the vdisk (any more). */
  strayOwners(): { vdiskId: string; seg: number; owner: number }[] {
    return this.sql
      .prepare(
        `SELECT o.vdisk_id AS vdiskId, o.seg, o.owner FROM segment_owners o LEFT JOIN agents a ON a.number = o.owner
         WHERE a.name IS NULL OR NOT EXISTS (SELECT 1 FROM exports e WHERE e.vdisk_id = o.vdisk_id AND e.agent = a.name) ORDER BY o.vdisk_id, o.seg`,
      )
      .all() as { vdiskId: string; seg: number; owner: number }[];
  }

  /** Sets (0: clears) a segment's write owner. Call inside a table change's transaction. Returns false when nothing changed. */
  setSegmentOwner(vdiskId: string, seg: number, owner: number): boolean {
    if (this.segmentOwner(vdiskId, seg) === owner) return false;
    if (owner === 0) this.#statements.clearSegmentOwner.run(vdiskId, seg);
    else this.#statements.setSegmentOwner.run(vdiskId, seg, owner);
    return true;
  }

  /** Bumps and returns the vdisk's table version; every table change does this in its transaction. */
  bumpVersion(vdiskId: string): number {
    const r = this.#statements.bumpVersion.get(vdiskId) as { version: number } | undefined;
    if (!r) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
    return r.version;
  }

  deleteVdisk(id: string): void {
    this.sql.prepare('DELETE FROM vdisks WHERE id = ?').run(id);
  }

  // ---- segments ----

  segment(vdiskId: string, seg: number): SegmentRow {
    const r = this.#statements.segment.get(vdiskId, seg) as RawSegment | undefined;
    return r ? toSegment(r) : { vdiskId, seg, state: SegmentState.Zero, containerId: null, offset: null };
  }

  /** Non-zero segment rows of a vdisk (all of them, or those in [first, end)). */
  segmentRows(vdiskId: string, first?: number, end?: number): SegmentRow[] {
    const rows =
      first === undefined
        ? (this.#statements.segmentsOf.all(vdiskId) as RawSegment[])
        : (this.#statements.segmentsIn.all(vdiskId, first, end ?? Number.MAX_SAFE_INTEGER) as RawSegment[]);
    return rows.map(toSegment);
  }

  /** Calls fn per non-zero segment row without building an array (for large tables). */
  forEachSegment(vdiskId: string, fn: (row: SegmentRow) => void): void {
    for (const r of this.#statements.segmentsOf.iterate(vdiskId) as IterableIterator<RawSegment>) fn(toSegment(r));
  }

  /**
   * Sets one segment's DB entry, keeping container reference counts right:
   * each location the entry stops referencing (first location or extra
   * leg) loses a reference, each new one gains one. A location whose count
   * drops to 0 is marked released at `version` and is not reusable until
   * reclaimed. `legs` are the extra legs (leg 1, 2), in distinct containers
   * from each other and from `location`; omitted, the segment keeps its
   * extra legs while its first location stays, and drops them when it
   * changes. A new location that is one of the segment's stale legs takes
   * over that stale leg's reference (resync re-adding it). When no location
   * of the old entry stays (the data moved or went), the segment's stale
   * legs are dropped too: they were copies of data it no longer holds.
   * Call inside a transaction that also bumps the version. Returns false
   * when nothing changed.
   */
  setSegment(
    vdisk: VdiskRow,
    seg: number,
    entry: { state: SegmentState; location: Location | null; legs?: readonly Location[] },
    version: number,
  ): boolean {
    if (!Number.isInteger(seg) || seg < 0 || seg >= vdisk.segmentCount) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg} out of range (${vdisk.segmentCount} segments)`);
    }
    const { state, location } = entry;
    if (!isSegmentState(state)) throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: unknown state ${String(state)}`);
    if (state === SegmentState.Zero && location !== null) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: a zero segment has no location`);
    }
    if ((state === SegmentState.Normal || state === SegmentState.NoWrite) && location === null) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: state ${state === 0 ? 'normal' : 'no-write'} needs a location`);
    }
    if (location === null && entry.legs !== undefined && entry.legs.length > 0) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: extra legs need a first location`);
    }
    if (entry.legs !== undefined && entry.legs.length > MAX_VDISK_COPIES - 1) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: ${1 + entry.legs.length} legs, at most ${MAX_VDISK_COPIES}`);
    }
    const old = this.segment(vdisk.id, seg);
    const oldFirst = old.containerId === null || old.offset === null ? null : { containerId: old.containerId, offset: old.offset };
    const oldLegs = oldFirst === null ? [] : this.segmentLegs(vdisk.id, seg);
    const sameLoc = oldFirst === null ? location === null : location !== null && sameLocation(oldFirst, location);
    const legs = entry.legs ?? (sameLoc ? oldLegs : []);
    const sameLegs = legs.length === oldLegs.length && legs.every((l, i) => sameLocation(l, oldLegs[i] as Location));
    if (sameLoc && sameLegs && old.state === state) return false;
    const newLocs = location === null ? [] : [location, ...legs];
    if (new Set(newLocs.map((l) => l.containerId)).size !== newLocs.length) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: two legs in one container (${newLocs.map(locText).join(', ')})`);
    }
    const oldLocs = oldFirst === null ? [] : [oldFirst, ...oldLegs];
    if (!sameLoc || !sameLegs) {
      const stale = oldLocs.length > 0 ? (this.#statements.staleOfSegment.all(vdisk.id, seg) as Location[]) : [];
      for (const l of newLocs) {
        if (oldLocs.some((o) => sameLocation(o, l))) continue;
        if (stale.some((o) => sameLocation(o, l))) {
          // Back from stale: its reference carries over.
          this.#statements.deleteStale.get(vdisk.id, seg, l.containerId);
          continue;
        }
        this.#checkLocation(vdisk, seg, l);
        this.#statements.addReference.run(l.containerId, l.offset);
      }
      for (const o of oldLocs) {
        if (!newLocs.some((l) => sameLocation(o, l))) this.#statements.dropReference.run(vdisk.id, version, o.containerId, o.offset);
      }
      if (oldLocs.length > 0 && !newLocs.some((l) => oldLocs.some((o) => sameLocation(o, l)))) {
        for (const st of this.#statements.staleOfSegment.all(vdisk.id, seg) as Location[]) this.dropStaleLeg(vdisk.id, seg, st.containerId, version);
      }
    }
    if (state === SegmentState.Zero) {
      this.#statements.deleteSegment.run(vdisk.id, seg);
      if (oldLegs.length > 0) this.#statements.deleteLegs.run(vdisk.id, seg);
      return true;
    }
    this.#statements.upsertSegment.run(vdisk.id, seg, state, location?.containerId ?? null, location?.offset ?? null);
    if (!sameLegs) {
      if (oldLegs.length > 0) this.#statements.deleteLegs.run(vdisk.id, seg);
      legs.forEach((l, i) => this.#statements.insertLeg.run(vdisk.id, seg, i + 1, l.containerId, l.offset));
    }
    return true;
  }

  /** Throws unless `l` may be mapped by a segment of `vdisk`: a known container of its segment size, inside it, not being scrubbed. */
  #checkLocation(vdisk: VdiskRow, seg: number, l: Location): void {
    const c = this.container(l.containerId);
    if (!c) throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: unknown container ${l.containerId}`);
    if (c.segmentSize !== vdisk.segmentSize) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: container ${c.id} has segment size ${c.segmentSize}, vdisk has ${vdisk.segmentSize}`);
    }
    if (!Number.isInteger(l.offset) || l.offset < 0 || l.offset >= c.segmentsTotal) {
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: offset ${l.offset} outside container ${c.id} (${c.segmentsTotal} segments)`);
    }
    if (this.containerSegment(l.containerId, l.offset)?.scrub) {
      // It still holds a freed vdisk's data and an agent may be zeroing it right now.
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: container ${c.id} offset ${l.offset} is waiting to be scrubbed`);
    }
  }

  /** A segment's extra legs (leg 1, 2), in leg order; [] for a one-copy entry or no location. */
  segmentLegs(vdiskId: string, seg: number): Location[] {
    return this.#statements.legsOf.all(vdiskId, seg) as Location[];
  }

  /** Every location of a segment, its first location (leg 0) first; [] when it has none. */
  locationsOfSegment(vdiskId: string, seg: number): Location[] {
    const r = this.segment(vdiskId, seg);
    if (r.containerId === null || r.offset === null) return [];
    return [{ containerId: r.containerId, offset: r.offset }, ...this.segmentLegs(vdiskId, seg)];
  }

  /**
   * Replaces a segment's extra legs, keeping its state and first location
   * (setSegment's rules for references). To remove leg 0, setSegment with
   * the new first location and the remaining legs (promotion).
   */
  setSegmentLegs(vdisk: VdiskRow, seg: number, legs: readonly Location[], version: number): boolean {
    const r = this.segment(vdisk.id, seg);
    if (r.containerId === null || r.offset === null) {
      if (legs.length === 0) return false;
      throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: extra legs need a first location (the segment has none)`);
    }
    return this.setSegment(vdisk, seg, { state: r.state, location: { containerId: r.containerId, offset: r.offset }, legs }, version);
  }

  /** Every segment of a vdisk with extra legs, in segment order. */
  legsOfVdisk(vdiskId: string): { seg: number; legs: Location[] }[] {
    const out: { seg: number; legs: Location[] }[] = [];
    for (const [seg, containerId, offset] of this.#statements.legsRaw.all(vdiskId) as [number, string, number][]) {
      const last = out[out.length - 1];
      if (last !== undefined && last.seg === seg) last.legs.push({ containerId, offset });
      else out.push({ seg, legs: [{ containerId, offset }] });
    }
    return out;
  }

  /**
   * Located segments with fewer locations than their vdisk's copies
   * (degraded), or more (over: a set-copies in progress, or broken), of one
   * vdisk or all.
   */
  legShortfalls(which: 'degraded' | 'over', vdiskId?: string): { vdiskId: string; seg: number; legs: number; copies: number }[] {
    const cmp = which === 'degraded' ? '<' : '>';
    return this.sql
      .prepare(
        `SELECT vdisk_id AS vdiskId, seg, legs, copies FROM (
           SELECT s.vdisk_id, s.seg, v.copies,
                  1 + (SELECT COUNT(*) FROM segment_legs l WHERE l.vdisk_id = s.vdisk_id AND l.seg = s.seg) AS legs
           FROM segments s JOIN vdisks v ON v.id = s.vdisk_id
           WHERE s.container_id IS NOT NULL${vdiskId === undefined ? '' : ' AND s.vdisk_id = ?'})
         WHERE legs ${cmp} copies ORDER BY vdisk_id, seg`,
      )
      .all(...(vdiskId === undefined ? [] : [vdiskId])) as { vdiskId: string; seg: number; legs: number; copies: number }[];
  }

  /** Located segments of a vdisk with fewer locations than its copies (health). */
  degradedCount(vdiskId: string): number {
    return this.sql
      .prepare(
        `SELECT COUNT(*) FROM segments s JOIN vdisks v ON v.id = s.vdisk_id
         WHERE s.vdisk_id = ? AND s.container_id IS NOT NULL
           AND 1 + (SELECT COUNT(*) FROM segment_legs l WHERE l.vdisk_id = s.vdisk_id AND l.seg = s.seg) < v.copies`,
      )
      .pluck()
      .get(vdiskId) as number;
  }

  /**
   * Calls fn for every segment with extra legs (of one vdisk, or all), with
   * its state and every location, leg 0 first, in vdisk and segment order:
   * one read, for checks over large mirrored tables.
   */
  forEachMirroredSegment(fn: (vdiskId: string, seg: number, state: SegmentState, locations: Location[]) => void, vdiskId?: string): void {
    const q = this.sql
      .prepare(
        `SELECT vdisk_id, seg, state, container_id, offset FROM segment_locations
         WHERE (vdisk_id, seg) IN (SELECT DISTINCT vdisk_id, seg FROM segment_legs${vdiskId === undefined ? '' : ' WHERE vdisk_id = ?'})
         ORDER BY vdisk_id, seg, leg`,
      )
      .raw();
    let cur: { vdiskId: string; seg: number; state: SegmentState; locs: Location[] } | null = null;
    const rows = (vdiskId === undefined ? q.iterate() : q.iterate(vdiskId)) as IterableIterator<[string, number, number, string, number]>;
    for (const [v, seg, state, containerId, offset] of rows) {
      if (cur === null || cur.vdiskId !== v || cur.seg !== seg) {
        if (cur !== null) fn(cur.vdiskId, cur.seg, cur.state, cur.locs);
        cur = { vdiskId: v, seg, state: state as SegmentState, locs: [] };
      }
      cur.locs.push({ containerId, offset });
    }
    if (cur !== null) fn(cur.vdiskId, cur.seg, cur.state, cur.locs);
  }

  /**
   * Extra legs and stale legs that break the rules (`tabula check`): a leg
   * of a segment with no location (zero, invalid without one) or none at
   * all; a leg in the container of another leg of its segment; a leg 2
   * without a leg 1 (legs are packed); a leg in a container of another
   * segment size; a stale leg that is also one of its segment's legs.
   * `leg` is -1 for a stale leg.
   */
  suspectLegs(): (EntryAt & { problem: string })[] {
    return this.sql
      .prepare(
        `SELECT l.vdisk_id AS vdiskId, l.seg AS seg, l.leg AS leg, l.container_id AS containerId, l.offset AS offset,
           CASE
             WHEN s.seg IS NULL OR s.container_id IS NULL THEN 'leg of a segment without a location'
             WHEN s.container_id = l.container_id
               OR EXISTS (SELECT 1 FROM segment_legs o WHERE o.vdisk_id = l.vdisk_id AND o.seg = l.seg AND o.leg < l.leg AND o.container_id = l.container_id)
               THEN 'leg in the same container as another leg of its segment'
             WHEN l.leg = 2 AND NOT EXISTS (SELECT 1 FROM segment_legs o WHERE o.vdisk_id = l.vdisk_id AND o.seg = l.seg AND o.leg = 1) THEN 'leg 2 without a leg 1'
             WHEN ct.segment_size != vd.segment_size THEN 'leg in a container of another segment size'
           END AS problem
         FROM segment_legs l JOIN vdisks vd ON vd.id = l.vdisk_id JOIN containers ct ON ct.id = l.container_id
         LEFT JOIN segments s ON s.vdisk_id = l.vdisk_id AND s.seg = l.seg
         WHERE problem IS NOT NULL
         UNION ALL
         SELECT st.vdisk_id, st.seg, -1, st.container_id, st.offset,
           CASE
             WHEN s.seg IS NULL OR s.container_id IS NULL THEN 'stale leg of a segment without a location'
             ELSE 'stale leg that is also a leg of its segment'
           END
         FROM stale_legs st LEFT JOIN segments s ON s.vdisk_id = st.vdisk_id AND s.seg = st.seg
         WHERE s.seg IS NULL OR s.container_id IS NULL
            OR EXISTS (SELECT 1 FROM segment_locations x WHERE x.vdisk_id = st.vdisk_id AND x.seg = st.seg AND x.container_id = st.container_id AND x.offset = st.offset)
         ORDER BY 1, 2, 3`,
      )
      .all() as (EntryAt & { problem: string })[];
  }

  // ---- stale legs (removed with a failed container, kept for resync) ----

  /** Stale legs of a vdisk, of a container, or all, by vdisk, segment and container. */
  staleLegs(filter: { vdiskId?: string; containerId?: string } = {}): StaleLeg[] {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.vdiskId !== undefined) {
      where.push('vdisk_id = ?');
      args.push(filter.vdiskId);
    }
    if (filter.containerId !== undefined) {
      where.push('container_id = ?');
      args.push(filter.containerId);
    }
    const q = `SELECT vdisk_id, seg, container_id, offset, dirty, since FROM stale_legs${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''}
               ORDER BY vdisk_id, seg, container_id`;
    return (
      this.sql.prepare(q).all(...args) as { vdisk_id: string; seg: number; container_id: string; offset: number; dirty: number; since: string }[]
    ).map((r) => ({ vdiskId: r.vdisk_id, seg: r.seg, containerId: r.container_id, offset: r.offset, dirty: r.dirty !== 0, since: r.since }));
  }

  /**
   * Records a stale leg; its location gains a reference (so removing the
   * leg from the entry, in the same transaction, releases nothing). Call
   * inside the table change that removes the leg.
   */
  addStaleLeg(s: Omit<StaleLeg, 'dirty' | 'since'> & { dirty?: boolean; since?: string }): void {
    this.#statements.insertStale.run(s.vdiskId, s.seg, s.containerId, s.offset, s.dirty === true ? 1 : 0, s.since ?? now());
    this.#statements.addReference.run(s.containerId, s.offset);
  }

  /** The segment was written: its stale legs (if any) must be copied on resync. Returns how many became dirty. */
  markDirty(vdiskId: string, seg: number): number {
    return this.#statements.markDirty.run(vdiskId, seg).changes;
  }

  /**
   * Forgets a stale leg; its location loses the reference, released at
   * `version` (the vdisk's current version will do: no table maps it).
   * Returns false when there was none.
   */
  dropStaleLeg(vdiskId: string, seg: number, containerId: string, version: number): boolean {
    const offset = this.#statements.deleteStale.get(vdiskId, seg, containerId) as number | undefined;
    if (offset === undefined) return false;
    this.#statements.dropReference.run(vdiskId, version, containerId, offset);
    return true;
  }

  /** One segment's stale leg on a container, if any (a resync checks it inside its change: one row, not the vdisk's list). */
  staleLeg(vdiskId: string, seg: number, containerId: string): StaleLeg | undefined {
    const r = this.sql.prepare('SELECT offset, dirty, since FROM stale_legs WHERE vdisk_id = ? AND seg = ? AND container_id = ?').get(vdiskId, seg, containerId) as
      | { offset: number; dirty: number; since: string }
      | undefined;
    return r && { vdiskId, seg, containerId, offset: r.offset, dirty: r.dirty !== 0, since: r.since };
  }

  /**
   * Container segments released by `vdiskId` at or before `version` whose
   * count is still 0: marked to be scrubbed (still allocated, not yet free)
   * and returned.
   */
  reclaim(vdiskId: string, version: number): Location[] {
    return this.tx(() =>
      (this.#statements.releasedToScrub.all(vdiskId, version) as { container_id: string; offset: number }[]).map((r) => ({
        containerId: r.container_id,
        offset: r.offset,
      })),
    );
  }

  /** Whether any location released by the vdisk waits for reclaim: usually not, and one read answers that. */
  hasReleased(vdiskId: string): boolean {
    return this.#statements.anyReleased.get(vdiskId) !== undefined;
  }

  /** The lowest version every exporting agent has acked; Infinity when nobody exports the vdisk. */
  minAckedVersion(vdiskId: string): number {
    const r = this.#statements.minAcked.get(vdiskId) as { v: number | null; n: number };
    return r.n === 0 || r.v === null ? Number.POSITIVE_INFINITY : r.v;
  }

  /** The vdisk's table as the agents get it, built from the DB. */
  loadTable(vdisk: VdiskRow): MappingTable {
    const t = new MappingTable({
      segmentCount: vdisk.segmentCount,
      segmentSize: vdisk.segmentSize,
      blockSize: vdisk.blockSize,
      version: vdisk.version,
      name: vdisk.name,
    });
    // Raw rows, coalesced into runs before they reach the table: a thick
    // vdisk of a million rows is then a handful of setRange calls. A vdisk
    // with extra legs reads them joined into its rows (leg 1 and 2 columns
    // null when absent); one without reads its rows as it always did.
    type Raw = [seg: number, state: number, container: string | null, offset: number | null, ...legs: (string | number | null)[]];
    const mirrored = this.#statements.anyLeg.get(vdisk.id) !== undefined;
    const rows = (mirrored ? this.#statements.segmentsWithLegsRaw : this.#statements.segmentsRaw).all(vdisk.id) as Raw[];
    // The container the table entry will carry (invalid drops its location, and its legs).
    const where = (r: Raw): string | null => (r[1] === SegmentState.Invalid ? null : r[2]);
    /** Row r continues head's run by k segments in every extra leg too. */
    const legsContinue = (head: Raw, r: Raw, k: number): boolean => {
      for (let c = 4; c < head.length; c += 2) {
        if (r[c] !== head[c]) return false;
        if (head[c] !== null && r[c + 1] !== (head[c + 1] as number) + k) return false;
      }
      return true;
    };
    const legsOf = (r: Raw): Location[] => {
      const out: Location[] = [];
      for (let c = 4; c < r.length && r[c] !== null; c += 2) out.push({ containerId: r[c] as string, offset: r[c + 1] as number });
      return out;
    };
    let i = 0;
    while (i < rows.length) {
      const head = rows[i] as Raw;
      const c = where(head);
      let j = i + 1;
      for (; j < rows.length; j++) {
        const r = rows[j] as Raw;
        const k = j - i;
        if (r[0] !== head[0] + k || r[1] !== head[1] || where(r) !== c) break;
        if (c !== null && (r[3] !== (head[3] as number) + k || (mirrored && !legsContinue(head, r, k)))) break;
      }
      const row = { vdiskId: vdisk.id, seg: head[0], state: head[1] as SegmentState, containerId: head[2], offset: head[3] };
      t.setRange(head[0], j - i, tableEntry(row, mirrored ? legsOf(head) : []), 1);
      i = j;
    }
    for (const o of this.segmentOwners(vdisk.id)) if (o.seg < t.segmentCount) t.setOwner(o.seg, o.owner);
    return t;
  }

  /**
   * Records a freshly allocated run for consecutive segments (thick create,
   * growth): plain inserts, no per-segment lookups. The segments must be
   * zero and the locations just taken from the allocator.
   */
  insertAllocatedRun(vdisk: VdiskRow, firstSeg: number, containerId: string, offset: number, count: number): void {
    if (firstSeg < 0 || firstSeg + count > vdisk.segmentCount) {
      throw new TableChangeError(`vdisk ${vdisk.name} segments ${firstSeg}+${count} out of range (${vdisk.segmentCount} segments)`);
    }
    for (let i = 0; i < count; i++) {
      this.#statements.insertContainerSegment.run(containerId, offset + i);
      this.#statements.insertSegment.run(vdisk.id, firstSeg + i, SegmentState.Normal, containerId, offset + i);
    }
  }

  /**
   * Records freshly allocated entries with their legs for consecutive
   * segments from `firstSeg` (a mirrored thick create): plain inserts, as
   * insertAllocatedRun. Each entry's locations are leg 0 first, just taken
   * from the allocator, in distinct containers.
   */
  insertAllocatedLegs(vdisk: VdiskRow, firstSeg: number, entries: readonly (readonly Location[])[]): void {
    if (firstSeg < 0 || firstSeg + entries.length > vdisk.segmentCount) {
      throw new TableChangeError(`vdisk ${vdisk.name} segments ${firstSeg}+${entries.length} out of range (${vdisk.segmentCount} segments)`);
    }
    entries.forEach((locs, i) => {
      const seg = firstSeg + i;
      const first = locs[0];
      if (first === undefined) throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: no location`);
      for (const l of locs) this.#statements.insertContainerSegment.run(l.containerId, l.offset);
      this.#statements.insertSegment.run(vdisk.id, seg, SegmentState.Normal, first.containerId, first.offset);
      for (let k = 1; k < locs.length; k++) {
        const l = locs[k] as Location;
        this.#statements.insertLeg.run(vdisk.id, seg, k, l.containerId, l.offset);
      }
    });
  }

  /**
   * Copies every located normal/no-write entry of `srcId` into `dstId` as
   * no-write, each location gaining one reference (snapshot, clone). Call
   * inside the transaction that created `dstId`. Returns the entries shared.
   */
  shareInto(srcId: string, dstId: string): number {
    const where = `vdisk_id = ? AND container_id IS NOT NULL AND state IN (${SegmentState.Normal}, ${SegmentState.NoWrite})`;
    this.sql
      .prepare(
        `UPDATE container_segments SET refcount = refcount + 1
         WHERE (container_id, offset) IN (SELECT container_id, offset FROM segment_locations WHERE ${where})`,
      )
      .run(srcId);
    // Extra legs are shared as they are (stale legs stay the source's: the sharer is degraded there
    // until a rebuild), and the sharer has the source's copies.
    this.sql
      .prepare(
        `INSERT INTO segment_legs (vdisk_id, seg, leg, container_id, offset)
         SELECT ?, seg, leg, container_id, offset FROM segment_locations WHERE leg > 0 AND ${where}`,
      )
      .run(dstId, srcId);
    this.sql.prepare('UPDATE vdisks SET copies = (SELECT copies FROM vdisks WHERE id = ?) WHERE id = ?').run(srcId, dstId);
    return this.sql
      .prepare(`INSERT INTO segments (vdisk_id, seg, state, container_id, offset) SELECT ?, seg, ${SegmentState.NoWrite}, container_id, offset FROM segments WHERE ${where}`)
      .run(dstId, srcId).changes;
  }

  /** Sets every normal entry of a vdisk to no-write (same location); returns the segments changed. */
  freezeNormal(vdiskId: string): number[] {
    const segs = this.sql.prepare(`SELECT seg FROM segments WHERE vdisk_id = ? AND state = ${SegmentState.Normal} ORDER BY seg`).pluck().all(vdiskId) as number[];
    if (segs.length > 0) this.sql.prepare(`UPDATE segments SET state = ${SegmentState.NoWrite} WHERE vdisk_id = ? AND state = ${SegmentState.Normal}`).run(vdiskId);
    return segs;
  }

  /** Segments of a vdisk per state (non-zero rows only). */
  stateCounts(vdiskId: string): Map<SegmentState, number> {
    const rows = this.sql.prepare('SELECT state, COUNT(*) AS n FROM segments WHERE vdisk_id = ? GROUP BY state').all(vdiskId) as { state: number; n: number }[];
    return new Map(rows.map((r) => [r.state as SegmentState, r.n]));
  }
  /** Entries of a vdisk per state, and how many of them have a location (zero segments have no entry). */
  entryCounts(vdiskId: string): { state: number; entries: number; located: number }[] {
    return this.sql
      .prepare('SELECT state, COUNT(*) AS entries, COUNT(container_id) AS located FROM segments WHERE vdisk_id = ? GROUP BY state')
      .all(vdiskId) as { state: number; entries: number; located: number }[];
  }

  /** A vdisk's located segments: those whose location others reference too (shared), those it alone does (exclusive). */
  vdiskSharing(vdiskId: string): { shared: number; exclusive: number } {
    return this.sql
      .prepare(
        `SELECT COALESCE(SUM(cs.refcount > 1), 0) AS shared, COALESCE(SUM(cs.refcount = 1), 0) AS exclusive
         FROM segments s JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset WHERE s.vdisk_id = ?`,
      )
      .get(vdiskId) as { shared: number; exclusive: number };
  }

  /** The containers holding segments (any leg) of a vdisk. */
  containersOfVdisk(vdiskId: string): string[] {
    return this.sql.prepare('SELECT DISTINCT container_id FROM segment_locations WHERE vdisk_id = ?').pluck().all(vdiskId) as string[];
  }


  /** Every table entry that references a location, as any of its legs (stale legs are not entries: staleLegs). */
  references(loc: Location): Reference[] {
    return (this.#statements.references.all(loc.containerId, loc.offset) as { vdisk_id: string; seg: number; state: number; leg: number }[]).map((r) => ({
      vdiskId: r.vdisk_id,
      seg: r.seg,
      state: r.state as SegmentState,
      leg: r.leg,
    }));
  }

  /** The reference count of a location (0 when free or releasing). */
  refcount(loc: Location): number {
    return this.containerSegment(loc.containerId, loc.offset)?.refcount ?? 0;
  }

  // ---- migrations ----

  migration(vdiskId: string): MigrationRow | undefined {
    const r = this.#statements.migration.get(vdiskId) as RawMigration | undefined;
    return r && toMigration(r);
  }

  migrations(): MigrationRow[] {
    return (this.#statements.migrations.all() as RawMigration[]).map(toMigration);
  }

  saveMigration(m: MigrationRow): void {
    this.#statements.upsertMigration.run(
      m.vdiskId,
      m.toContainer,
      m.fromContainer,
      m.state,
      m.segmentsTotal,
      m.segmentsDone,
      m.bytesDone,
      m.started,
      m.updated,
      m.finished,
      m.error,
    );
  }
  /**
   * Segments a migration still has to move: located, normal or no-write,
   * not on `to` (when given), on `from` (when given).
   */
  countToMigrate(vdiskId: string, to: string | null, from: string | null): number {
    const { where, params } = toMigrate(vdiskId, to, from);
    return this.sql.prepare(`SELECT COUNT(*) FROM segments WHERE ${where}`).pluck().get(...params) as number;
  }

  /** The first segment after `after` that a migration still has to move, with its location. */
  nextToMigrate(vdiskId: string, to: string | null, from: string | null, after: number): { seg: number; loc: Location } | undefined {
    const { where, params } = toMigrate(vdiskId, to, from);
    const r = this.sql
      .prepare(`SELECT seg, container_id AS containerId, offset FROM segments WHERE ${where} AND seg > ? ORDER BY seg LIMIT 1`)
      .get(...params, after) as { seg: number; containerId: string; offset: number } | undefined;
    return r && { seg: r.seg, loc: { containerId: r.containerId, offset: r.offset } };
  }


  // ---- agents ----

  agent(name: string): AgentRow | undefined {
    const r = this.#statements.agent.get(name) as RawAgent | undefined;
    return r && toAgent(r);
  }

  agents(): AgentRow[] {
    return (this.#statements.agents.all() as RawAgent[]).map(toAgent);
  }

  /**
   * Records a registration: portals and the (accepted) containers it reaches.
   * Returns the agent's number, given on its first registration: the
   * smallest one free (numbers are only freed with the agent's row).
   */
  registerAgent(
    name: string,
    portals: readonly string[],
    containers: readonly { id: string; path: string; reachable?: boolean; error?: string }[],
    host = '',
  ): number {
    return this.tx(() => {
      const t = now();
      this.#statements.upsertAgent.run(name, JSON.stringify(portals), t, t);
      this.#statements.setAgentHost.run(host, name);
      this.#writeClaims(name, containers);
      const had = (this.#statements.agent.get(name) as RawAgent).number;
      if (had !== null) return had;
      let n = 1;
      for (const used of this.#statements.agentNumbers.all() as number[]) {
        if (used !== n) break;
        n++;
      }
      if (n > MAX_AGENT_NUMBER) throw new Error(`no agent number left for ${name}: ${MAX_AGENT_NUMBER} agents are registered`);
      this.#statements.numberAgent.run(n, name);
      return n;
    });
  }

  touchAgent(name: string): void {
    this.#statements.touchAgent.run(now(), name);
  }

  /** The containers an agent reaches now (claimed and not reported unreachable): what allocation and copies may use through it. */
  agentContainers(name: string): string[] {
    return this.#statements.agentContainers.pluck().all(name) as string[];
  }

  /** Every container an agent claims, reachable or not, with what it reported. */
  agentClaims(name: string): AgentClaim[] {
    return (this.#statements.agentClaims.all(name) as { id: string; path: string; reachable: number; error: string }[]).map((r) => ({
      id: r.id,
      path: r.path,
      reachable: r.reachable === 1,
      error: r.error,
    }));
  }

  /**
   * Replaces an agent's claims (a ContainerUpdate after a rescan or a
   * reachability change): the same rows Register writes, in one transaction.
   */
  updateAgentContainers(name: string, containers: readonly { id: string; path: string; reachable?: boolean; error?: string }[]): void {
    this.tx(() => this.#writeClaims(name, containers));
  }

  #writeClaims(name: string, containers: readonly { id: string; path: string; reachable?: boolean; error?: string }[]): void {
    this.#statements.clearAgentContainers.run(name);
    for (const c of containers) {
      const reachable = c.reachable !== false;
      this.#statements.insertAgentContainer.run(name, c.id, c.path, reachable ? 1 : 0, reachable ? '' : (c.error ?? ''));
    }
  }

  /** Every agent's claim of every container, with the agent's host, by container and agent (failure domains, domains.ts). */
  allClaims(): { containerId: string; agent: string; host: string; path: string; reachable: boolean }[] {
    return (
      this.sql
        .prepare(
          `SELECT ac.container_id AS containerId, ac.agent AS agent, a.host AS host, ac.path AS path, ac.reachable AS reachable
           FROM agent_containers ac JOIN agents a ON a.name = ac.agent ORDER BY ac.container_id, ac.agent`,
        )
        .all() as { containerId: string; agent: string; host: string; path: string; reachable: number }[]
    ).map((r) => ({ ...r, reachable: r.reachable === 1 }));
  }

  /** Which agents claim a container, on which host, and whether they reach it now. */
  containerReach(id: string): ContainerReach[] {
    return (this.#statements.containerReach.all(id) as { agent: string; host: string; reachable: number; error: string }[]).map((r) => ({
      agent: r.agent,
      host: r.host,
      reachable: r.reachable === 1,
      error: r.error,
    }));
  }

  // ---- exports ----

  exportsOfVdisk(vdiskId: string): ExportRow[] {
    return (this.#statements.exportsOfVdisk.all(vdiskId) as RawExport[]).map(toExport);
  }

  exportsOfAgent(agent: string): ExportRow[] {
    return (this.#statements.exportsOfAgent.all(agent) as RawExport[]).map(toExport);
  }

  exports(): ExportRow[] {
    return (this.#statements.exports.all() as RawExport[]).map(toExport);
  }

  export(vdiskId: string, agent: string): ExportRow | undefined {
    const r = this.#statements.export.get(vdiskId, agent) as RawExport | undefined;
    return r && toExport(r);
  }

  insertExport(e: Omit<ExportRow, 'fenced' | 'allowedInitiators' | 'alua'> & { allowedInitiators?: readonly string[]; alua?: AluaPreference }): void {
    this.#statements.insertExport.run(
      e.vdiskId,
      e.agent,
      e.targetIqn,
      e.lun,
      e.readOnly ? 1 : 0,
      e.ackedVersion,
      JSON.stringify(e.allowedInitiators ?? []),
      e.alua ?? 'optimized',
    );
  }

  deleteExport(vdiskId: string, agent: string): boolean {
    return this.#statements.deleteExport.run(vdiskId, agent).changes > 0;
  }

  recordAck(vdiskId: string, agent: string, version: number): void {
    this.#statements.ackExport.run(version, vdiskId, agent);
  }

  /** Agents whose export of the vdisk is marked fenced. */
  fencedAgents(vdiskId: string): string[] {
    return this.#statements.fencedAgents.all(vdiskId) as string[];
  }

  setFenced(vdiskId: string, agent: string, fenced: boolean): void {
    this.#statements.fenceExport.run(fenced ? 1 : 0, vdiskId, agent);
  }

  // ---- faults and events ----

  insertFault(f: NewFault): number {
    const r = this.#statements.insertFault.get(
      f.time ?? now(),
      f.agent,
      f.vdiskId,
      f.segment,
      f.op,
      f.lba,
      f.blocks,
      f.state,
      f.tableVersion,
      f.outcome ?? 'pending',
      f.detail,
    ) as { id: number };
    return r.id;
  }

  setFaultOutcome(id: number, outcome: string, detail = ''): void {
    this.#statements.faultOutcome.run(outcome, detail, detail, id);
  }

  faults(vdiskId?: string, limit = 100): FaultRow[] {
    const rows = vdiskId === undefined ? this.#statements.faults.all(limit) : this.#statements.faultsOf.all(vdiskId, limit);
    return (rows as RawFault[]).map(toFault);
  }

  event(kind: string, subject: string, message: string): void {
    this.#statements.event.run(now(), kind, subject, message);
  }

  /** Faults matching every filter given, newest first (`tabula fault ls`). */
  findFaults(filter: FaultFilter, limit = 100): FaultRow[] {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (filter.vdiskId !== undefined) {
      where.push('vdisk_id = ?');
      args.push(filter.vdiskId);
    }
    if (filter.agent !== undefined) {
      where.push('agent = ?');
      args.push(filter.agent);
    }
    if (filter.outcome !== undefined) {
      where.push('outcome = ?');
      args.push(filter.outcome);
    }
    if (filter.since !== undefined) {
      where.push('time >= ?');
      args.push(filter.since);
    }
    // Unindexed filters scan newest first, and retention bounds the table (retention.ts).
    const q = `SELECT * FROM faults${where.length > 0 ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (this.sql.prepare(q).all(...args, limit) as RawFault[]).map(toFault);
  }

  /** Rows in the fault or the event log. */
  logRows(table: LogTable): number {
    return this.#logStatements(table).count.get() as number;
  }

  /**
   * One batch of retention for the fault or the event log: deletes, oldest
   * first, at most `batch` rows that are beyond the newest `keepRows` or
   * older than `before` (ISO time), and returns how many. Ids grow with
   * time, so the rows to go are a prefix by id: one short read of the
   * oldest rows, one delete by rowid range, never a scan of the table.
   */
  pruneLog(table: LogTable, keepRows: number, before: string, batch: number): number {
    const st = this.#logStatements(table);
    const cutoff = (st.nthNewest.get(keepRows) as number | undefined) ?? 0;
    const oldest = st.oldest.all(batch) as { id: number; time: string }[];
    let last = 0;
    for (const r of oldest) {
      if (r.id > cutoff && r.time >= before) break;
      last = r.id;
    }
    if (last === 0) return 0;
    // The log's loss at a power cut is harmless: no fsync of its own (db.relaxed).
    return this.relaxed(() => st.deleteUpTo.run(last).changes);
  }

  #logs = new Map<LogTable, { count: Database.Statement; nthNewest: Database.Statement; oldest: Database.Statement; deleteUpTo: Database.Statement }>();

  /** Prepared on first use (kept apart from the statements prepared at open). */
  #logStatements(table: LogTable): { count: Database.Statement; nthNewest: Database.Statement; oldest: Database.Statement; deleteUpTo: Database.Statement } {
    let st = this.#logs.get(table);
    if (st === undefined) {
      const t = table === 'faults' ? 'faults' : 'events';
      st = {
        count: this.sql.prepare(`SELECT COUNT(*) FROM ${t}`).pluck(),
        // The id of the (n+1)-th newest row: it and every older one are beyond the newest n.
        nthNewest: this.sql.prepare(`SELECT id FROM ${t} ORDER BY id DESC LIMIT 1 OFFSET ?`).pluck(),
        oldest: this.sql.prepare(`SELECT id, time FROM ${t} ORDER BY id LIMIT ?`),
        deleteUpTo: this.sql.prepare(`DELETE FROM ${t} WHERE id <= ?`),
      };
      this.#logs.set(table, st);
    }
    return st;
  }

  // ---- invariants (`tabula check`, check.ts): each query returns the rows that break one ----

  /** Allocated locations whose reference count differs from the table entries (any leg) and stale legs referencing them. */
  refcountMismatches(): { containerId: string; offset: number; refcount: number; refs: number }[] {
    return this.sql
      .prepare(
        `WITH refs AS (
           SELECT container_id, offset, COUNT(*) AS n FROM (
             SELECT container_id, offset FROM segment_locations UNION ALL SELECT container_id, offset FROM stale_legs
           ) GROUP BY container_id, offset)
         SELECT cs.container_id AS containerId, cs.offset AS offset, cs.refcount AS refcount, COALESCE(r.n, 0) AS refs
         FROM container_segments cs LEFT JOIN refs r ON r.container_id = cs.container_id AND r.offset = cs.offset
         WHERE COALESCE(r.n, 0) != cs.refcount`,
      )
      .all() as { containerId: string; offset: number; refcount: number; refs: number }[];
  }

  /** Allocated locations with count 0 that wait neither for a release's acks nor to be scrubbed. */
  unreleasedZeroCounts(): Location[] {
    return this.sql
      .prepare(
        'SELECT container_id AS containerId, offset FROM container_segments WHERE refcount = 0 AND scrub = 0 AND (release_vdisk IS NULL OR release_version IS NULL)',
      )
      .all() as Location[];
  }

  /** Table entries (any leg) and stale legs mapping a location that waits to be scrubbed. */
  entriesOnScrubbing(): EntryAt[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg, s.leg AS leg, s.container_id AS containerId, s.offset AS offset FROM ${ALL_REFERENCES} s
         JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
         WHERE cs.scrub = 1 ORDER BY s.vdisk_id, s.seg, s.leg`,
      )
      .all() as EntryAt[];
  }

  /** Table entries (any leg) and stale legs mapping a location that is not allocated (in the free map). */
  entriesOnFreeSpace(): EntryAt[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg, s.leg AS leg, s.container_id AS containerId, s.offset AS offset FROM ${ALL_REFERENCES} s
         LEFT JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
         WHERE cs.container_id IS NULL ORDER BY s.vdisk_id, s.seg, s.leg`,
      )
      .all() as EntryAt[];
  }

  /** Allocated locations past the end of their container. */
  locationsBeyondContainer(): (Location & { segmentsTotal: number })[] {
    return this.sql
      .prepare(
        `SELECT cs.container_id AS containerId, cs.offset AS offset, ct.segments_total AS segmentsTotal FROM container_segments cs
         JOIN containers ct ON ct.id = cs.container_id WHERE cs.offset >= ct.segments_total`,
      )
      .all() as (Location & { segmentsTotal: number })[];
  }

  /** Locations referenced by more than one entry (any leg): how many entries, of how many vdisks, how many of them normal. */
  sharedLocations(): (Location & { refs: number; vdisks: number; writable: number })[] {
    return this.sql
      .prepare(
        `SELECT container_id AS containerId, offset, COUNT(*) AS refs, COUNT(DISTINCT vdisk_id) AS vdisks,
                SUM(state = ${SegmentState.Normal}) AS writable
         FROM segment_locations GROUP BY container_id, offset HAVING refs > 1`,
      )
      .all() as (Location & { refs: number; vdisks: number; writable: number })[];
  }

  /**
   * Entries that may be malformed (past the vdisk's end, stored as zero,
   * normal or no-write without a location, in an unknown container or one
   * of another segment size), with what it takes to tell which.
   */
  suspectEntries(): SuspectEntry[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg, s.state AS state, s.container_id AS containerId, s.offset AS offset,
                vd.segment_count AS vdiskSegments, vd.segment_size AS vdiskSegmentSize, ct.segment_size AS containerSegmentSize
         FROM segments s JOIN vdisks vd ON vd.id = s.vdisk_id LEFT JOIN containers ct ON ct.id = s.container_id
         WHERE s.seg >= vd.segment_count OR s.state = ${SegmentState.Zero}
            OR (s.container_id IS NULL AND s.state IN (${SegmentState.Normal}, ${SegmentState.NoWrite}))
            OR (s.container_id IS NOT NULL AND (ct.id IS NULL OR ct.segment_size != vd.segment_size))`,
      )
      .all() as SuspectEntry[];
  }

  /** Normal (writable) entries of snapshots. */
  writableSnapshotEntries(): { vdiskId: string; seg: number }[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg FROM segments s JOIN vdisks vd ON vd.id = s.vdisk_id
         WHERE vd.kind = 'snapshot' AND s.state = ${SegmentState.Normal} ORDER BY s.vdisk_id, s.seg`,
      )
      .all() as { vdiskId: string; seg: number }[];
  }

  /** Exports of snapshots that are not read-only. */
  writableSnapshotExports(): { vdiskId: string; agent: string }[] {
    return this.sql
      .prepare(`SELECT e.vdisk_id AS vdiskId, e.agent AS agent FROM exports e JOIN vdisks vd ON vd.id = e.vdisk_id WHERE vd.kind = 'snapshot' AND e.read_only = 0`)
      .all() as { vdiskId: string; agent: string }[];
  }

  /** Running migrations naming a container that does not exist. */
  migrationsToUnknownContainers(): { vdiskId: string; toContainer: string | null; fromContainer: string | null }[] {
    return this.sql
      .prepare(
        `SELECT m.vdisk_id AS vdiskId, m.to_container AS toContainer, m.from_container AS fromContainer FROM migrations m
         WHERE m.state = 'running' AND ((m.to_container IS NOT NULL AND m.to_container NOT IN (SELECT id FROM containers))
            OR (m.from_container IS NOT NULL AND m.from_container NOT IN (SELECT id FROM containers)))`,
      )
      .all() as { vdiskId: string; toContainer: string | null; fromContainer: string | null }[];
  }

  /** Exports whose agent does not reach a container the vdisk uses. */
  exportsMissingContainers(): { agent: string; vdiskId: string; containerId: string }[] {
    return this.sql
      .prepare(
        `SELECT DISTINCT e.agent AS agent, e.vdisk_id AS vdiskId, s.container_id AS containerId FROM exports e
         JOIN segment_locations s ON s.vdisk_id = e.vdisk_id
         LEFT JOIN agent_containers ac ON ac.agent = e.agent AND ac.container_id = s.container_id
         WHERE ac.container_id IS NULL`,
      )
      .all() as { agent: string; vdiskId: string; containerId: string }[];
  }
}

/** The WHERE clause for the entries a migration still has to move (ControllerDb.countToMigrate). */
// A mirrored segment moves one leg per migration: the one on `from`; with a
// target only, it is moved while none of its legs is on `to` (migration.ts
// picks which leg). Single-copy entries: leg 0, as always.
function toMigrate(vdiskId: string, to: string | null, from: string | null): { where: string; params: string[] } {
  let where = `vdisk_id = ? AND container_id IS NOT NULL AND state IN (${SegmentState.Normal}, ${SegmentState.NoWrite})`;
  const params = [vdiskId];
  const onLeg = 'EXISTS (SELECT 1 FROM segment_legs l WHERE l.vdisk_id = segments.vdisk_id AND l.seg = segments.seg AND l.container_id = ?)';
  if (from !== null) {
    where += ` AND (container_id = ? OR ${onLeg})`;
    params.push(from, from);
  } else if (to !== null) {
    where += ` AND container_id != ? AND NOT ${onLeg}`;
    params.push(to, to);
  }
  return { where, params };
}

/** Every reference a location may have: entries' legs (leg 0..2) and stale legs (leg -1). */
const ALL_REFERENCES = `(SELECT vdisk_id, seg, leg, container_id, offset FROM segment_locations
  UNION ALL SELECT vdisk_id, seg, -1 AS leg, container_id, offset FROM stale_legs)`;

/** A DB row, with its extra legs, as the table entry agents see (invalid drops its location and legs). */
export function tableEntry(r: SegmentRow, legs: readonly Location[] = []): EntryWithLegs {
  if (!stateHasLocation(r.state) || r.containerId === null) return { state: r.state };
  const e = { state: r.state, container: r.containerId, offset: r.offset ?? 0 };
  return legs.length === 0 ? e : { ...e, legs: legs.map((l) => ({ container: l.containerId, offset: l.offset })) };
}

function checkCopies(what: string, copies: number): void {
  if (!Number.isInteger(copies) || copies < 1 || copies > MAX_VDISK_COPIES) {
    throw new TableChangeError(`vdisk ${what}: copies ${copies} out of range 1-${MAX_VDISK_COPIES}`);
  }
}

const locText = (l: Location): string => `${l.containerId}:${l.offset}`;

export function openDb(path: string): ControllerDb {
  return new ControllerDb(path);
}

// ---- database files (backup and restore, backup.ts) ----

/** Switches a database file (a backup copy) to a rollback journal: self-contained, and reading it makes no -wal or -shm files. */
export function useRollbackJournal(sql: Sql): void {
  sql.pragma('journal_mode = DELETE');
}

/** The names of the SQL tables in a database file. */
export function sqlTableNames(sql: Sql): Set<string> {
  return new Set(sql.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[]);
}

/** SQLite's quick integrity check: 'ok', or what is wrong. */
export function quickCheck(sql: Sql): string {
  return sql.pragma('quick_check', { simple: true }) as string;
}

/** What a database file holds, counted (any schema version: snapshots came with version 2). */
export function countRows(sql: Sql): { vdisks: number; snapshots: number; containers: number; exports: number; agents: number } {
  const count = (q: string): number => sql.prepare(q).pluck().get() as number;
  const hasKind = count("SELECT COUNT(*) FROM pragma_table_info('vdisks') WHERE name = 'kind'") > 0;
  return {
    vdisks: count(hasKind ? "SELECT COUNT(*) FROM vdisks WHERE kind = 'vdisk'" : 'SELECT COUNT(*) FROM vdisks'),
    snapshots: hasKind ? count("SELECT COUNT(*) FROM vdisks WHERE kind = 'snapshot'") : 0,
    containers: count('SELECT COUNT(*) FROM containers'),
    exports: count('SELECT COUNT(*) FROM exports'),
    agents: count('SELECT COUNT(*) FROM agents'),
  };
}

/**
 * Takes SQLite's EXCLUSIVE lock on the file and lets go at once; throws
 * (SQLITE_BUSY, SQLITE_LOCKED) when another connection holds it, without
 * waiting if the handle was opened with timeout 0.
 */
export function probeExclusiveLock(sql: Sql): void {
  sql.pragma('locking_mode = EXCLUSIVE');
  sql.exec('BEGIN EXCLUSIVE');
  sql.exec('COMMIT');
}
