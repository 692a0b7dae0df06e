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

import Database from 'better-sqlite3';
import { MappingTable, SegmentState, isSegmentState, stateHasLocation, type EntryInput } from '../table/index.js';
import { migrate, type Sql } from './schema.js';
import type { LuStateMsg } from '../wire/proto-types.js';

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
}

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

export type NewFault = Omit<FaultRow, 'id' | 'time' | 'outcome'> & { outcome?: string; /** When it arrived (default now). */ time?: string };

/** One location: a container segment. */
export interface Location {
  containerId: string;
  offset: number;
}

/** A table entry and the location it maps. */
export interface EntryAt extends Location {
  vdiskId: string;
  seg: number;
}

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

  constructor(path: string) {
    this.path = path;
    this.sql = new Database(path);
    this.sql.pragma('journal_mode = WAL');
    this.sql.pragma('foreign_keys = ON');
    // FULL: a table version pushed to agents must survive power loss, or a
    // restarted controller could hand the same location out twice.
    this.sql.pragma('synchronous = FULL');
    this.sql.pragma('busy_timeout = 5000');
    migrate(this.sql);
    const p = (q: string) => this.sql.prepare(q);
    this.#statements = {
      container: p('SELECT * FROM containers WHERE id = ?'),
      containers: p('SELECT * FROM containers ORDER BY added, id'),
      insertContainer: p(
        'INSERT INTO containers (id, path, size, data_offset, segment_size, segments_total, state, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      containerUsed: p('SELECT COUNT(*) AS n FROM container_segments WHERE container_id = ?'),
      vdiskById: p('SELECT * FROM vdisks WHERE id = ?'),
      vdiskByName: p('SELECT * FROM vdisks WHERE name = ?'),
      vdisks: p('SELECT * FROM vdisks ORDER BY name'),
      insertVdisk: p(
        'INSERT INTO vdisks (id, name, size, block_size, segment_size, segment_count, thin, version, created, kind, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
      references: p('SELECT vdisk_id, seg, state FROM segments WHERE container_id = ? AND offset = ? ORDER BY vdisk_id, seg'),
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

  /** Runs `fn` in one transaction (nested calls join the outer one). */
  tx<T>(fn: () => T): T {
    return this.sql.transaction(fn)();
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
    this.sql.pragma('synchronous = NORMAL');
    try {
      return fn();
    } finally {
      this.sql.pragma('synchronous = FULL');
    }
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

  insertContainer(c: Omit<ContainerRow, 'added'>): ContainerRow {
    const added = now();
    this.#statements.insertContainer.run(c.id, c.path, c.size, c.dataOffset, c.segmentSize, c.segmentsTotal, c.state, added);
    return { ...c, added };
  }

  setContainerState(id: string, state: ContainerState): void {
    this.sql.prepare('UPDATE containers SET state = ? WHERE id = ?').run(state, id);
  }

  deleteContainer(id: string): void {
    this.sql.prepare('DELETE FROM containers WHERE id = ?').run(id);
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

  /** The vdisks (ids, sorted) with an entry on the container. */
  vdisksOnContainer(containerId: string): string[] {
    return this.sql.prepare('SELECT DISTINCT vdisk_id FROM segments WHERE container_id = ? ORDER BY vdisk_id').pluck().all(containerId) as string[];
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

  insertVdisk(v: Omit<VdiskRow, 'created' | 'kind' | 'parentId'> & { kind?: VdiskKind; parentId?: string | null }): VdiskRow {
    const created = now();
    const kind = v.kind ?? 'vdisk';
    const parentId = v.parentId ?? null;
    this.#statements.insertVdisk.run(v.id, v.name, v.size, v.blockSize, v.segmentSize, v.segmentCount, v.thin ? 1 : 0, v.version, created, kind, parentId);
    return { ...v, created, kind, parentId };
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
   * the old location (if any) loses a reference, the new one gains one. A
   * location whose count drops to 0 is marked released at `version` and is
   * not reusable until reclaimed. Call inside a transaction that also bumps
   * the version. Returns false when nothing changed.
   */
  setSegment(vdisk: VdiskRow, seg: number, entry: { state: SegmentState; location: Location | null }, version: number): boolean {
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
    const old = this.segment(vdisk.id, seg);
    const sameLoc =
      (old.containerId === null && location === null) ||
      (location !== null && old.containerId === location.containerId && old.offset === location.offset);
    if (sameLoc && old.state === state) return false;
    if (!sameLoc) {
      if (location !== null) {
        const c = this.container(location.containerId);
        if (!c) throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: unknown container ${location.containerId}`);
        if (c.segmentSize !== vdisk.segmentSize) {
          throw new TableChangeError(
            `vdisk ${vdisk.name} segment ${seg}: container ${c.id} has segment size ${c.segmentSize}, vdisk has ${vdisk.segmentSize}`,
          );
        }
        if (!Number.isInteger(location.offset) || location.offset < 0 || location.offset >= c.segmentsTotal) {
          throw new TableChangeError(
            `vdisk ${vdisk.name} segment ${seg}: offset ${location.offset} outside container ${c.id} (${c.segmentsTotal} segments)`,
          );
        }
        if (this.containerSegment(location.containerId, location.offset)?.scrub) {
          // It still holds a freed vdisk's data and an agent may be zeroing it right now.
          throw new TableChangeError(`vdisk ${vdisk.name} segment ${seg}: container ${c.id} offset ${location.offset} is waiting to be scrubbed`);
        }
        this.#statements.addReference.run(location.containerId, location.offset);
      }
      if (old.containerId !== null && old.offset !== null) {
        this.#statements.dropReference.run(vdisk.id, version, old.containerId, old.offset);
      }
    }
    if (state === SegmentState.Zero) this.#statements.deleteSegment.run(vdisk.id, seg);
    else this.#statements.upsertSegment.run(vdisk.id, seg, state, location?.containerId ?? null, location?.offset ?? null);
    return true;
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
    // vdisk of a million rows is then a handful of setRange calls.
    type Raw = [seg: number, state: number, container: string | null, offset: number | null];
    const rows = this.#statements.segmentsRaw.all(vdisk.id) as Raw[];
    // The container the table entry will carry (invalid drops its location).
    const where = (r: Raw): string | null => (r[1] === SegmentState.Invalid ? null : r[2]);
    let i = 0;
    while (i < rows.length) {
      const head = rows[i] as Raw;
      const c = where(head);
      let j = i + 1;
      for (; j < rows.length; j++) {
        const r = rows[j] as Raw;
        const k = j - i;
        if (r[0] !== head[0] + k || r[1] !== head[1] || where(r) !== c) break;
        if (c !== null && r[3] !== (head[3] as number) + k) break;
      }
      const entry = tableEntry({ vdiskId: vdisk.id, seg: head[0], state: head[1] as SegmentState, containerId: head[2], offset: head[3] });
      t.setRange(head[0], j - i, entry, 1);
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
   * Copies every located normal/no-write entry of `srcId` into `dstId` as
   * no-write, each location gaining one reference (snapshot, clone). Call
   * inside the transaction that created `dstId`. Returns the entries shared.
   */
  shareInto(srcId: string, dstId: string): number {
    const where = `vdisk_id = ? AND container_id IS NOT NULL AND state IN (${SegmentState.Normal}, ${SegmentState.NoWrite})`;
    this.sql
      .prepare(
        `UPDATE container_segments SET refcount = refcount + 1
         WHERE (container_id, offset) IN (SELECT container_id, offset FROM segments WHERE ${where})`,
      )
      .run(srcId);
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

  /** The containers holding segments of a vdisk. */
  containersOfVdisk(vdiskId: string): string[] {
    return this.sql.prepare('SELECT DISTINCT container_id FROM segments WHERE vdisk_id = ? AND container_id IS NOT NULL').pluck().all(vdiskId) as string[];
  }


  /** Every table entry that references a location. */
  references(loc: Location): Reference[] {
    return (this.#statements.references.all(loc.containerId, loc.offset) as { vdisk_id: string; seg: number; state: number }[]).map((r) => ({
      vdiskId: r.vdisk_id,
      seg: r.seg,
      state: r.state as SegmentState,
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

  // ---- invariants (`tabula check`, check.ts): each query returns the rows that break one ----

  /** Allocated locations whose reference count differs from the table entries referencing them. */
  refcountMismatches(): { containerId: string; offset: number; refcount: number; refs: number }[] {
    return this.sql
      .prepare(
        `SELECT cs.container_id AS containerId, cs.offset AS offset, cs.refcount AS refcount, COUNT(s.seg) AS refs
         FROM container_segments cs LEFT JOIN segments s ON s.container_id = cs.container_id AND s.offset = cs.offset
         GROUP BY cs.container_id, cs.offset HAVING refs != cs.refcount`,
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

  /** Table entries mapping a location that waits to be scrubbed. */
  entriesOnScrubbing(): EntryAt[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg, s.container_id AS containerId, s.offset AS offset FROM segments s
         JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
         WHERE cs.scrub = 1 ORDER BY s.vdisk_id, s.seg`,
      )
      .all() as EntryAt[];
  }

  /** Table entries mapping a location that is not allocated (in the free map). */
  entriesOnFreeSpace(): EntryAt[] {
    return this.sql
      .prepare(
        `SELECT s.vdisk_id AS vdiskId, s.seg AS seg, s.container_id AS containerId, s.offset AS offset FROM segments s
         LEFT JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
         WHERE s.container_id IS NOT NULL AND cs.container_id IS NULL`,
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

  /** Locations referenced by more than one entry: how many entries, of how many vdisks, how many of them normal. */
  sharedLocations(): (Location & { refs: number; vdisks: number; writable: number })[] {
    return this.sql
      .prepare(
        `SELECT container_id AS containerId, offset, COUNT(*) AS refs, COUNT(DISTINCT vdisk_id) AS vdisks,
                SUM(state = ${SegmentState.Normal}) AS writable
         FROM segments WHERE container_id IS NOT NULL GROUP BY container_id, offset HAVING refs > 1`,
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
         JOIN segments s ON s.vdisk_id = e.vdisk_id AND s.container_id IS NOT NULL
         LEFT JOIN agent_containers ac ON ac.agent = e.agent AND ac.container_id = s.container_id
         WHERE ac.container_id IS NULL`,
      )
      .all() as { agent: string; vdiskId: string; containerId: string }[];
  }
}

/** The WHERE clause for the entries a migration still has to move (ControllerDb.countToMigrate). */
function toMigrate(vdiskId: string, to: string | null, from: string | null): { where: string; params: string[] } {
  let where = `vdisk_id = ? AND container_id IS NOT NULL AND state IN (${SegmentState.Normal}, ${SegmentState.NoWrite})`;
  const params = [vdiskId];
  if (to !== null) {
    where += ' AND container_id != ?';
    params.push(to);
  }
  if (from !== null) {
    where += ' AND container_id = ?';
    params.push(from);
  }
  return { where, params };
}

/** A DB row as the table entry agents see (invalid drops its location). */
export function tableEntry(r: SegmentRow): EntryInput {
  if (!stateHasLocation(r.state) || r.containerId === null) return { state: r.state };
  return { state: r.state, container: r.containerId, offset: r.offset ?? 0 };
}

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
