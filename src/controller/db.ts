// The controller's SQLite database (better-sqlite3, WAL): containers, vdisks,
// mapping tables, the container allocation map, exports, agents and the
// fault log. The database is the truth; the controller's in-memory tables
// are caches of it.
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
//   exporting that vdisk has acked that version (design notes §2.3); then
//   it is marked `scrub` (still allocated, nothing may map it) until an
//   agent has zeroed it, and only then is the row deleted and the location
//   reusable: no vdisk may read another's old data.
// - Snapshots are vdisks of kind 'snapshot' (read-only); a snapshot or clone
//   shares its source's container segments, whose counts then exceed 1.
// - `migrations` holds one row per vdisk with its latest migration, so a
//   restarted controller resumes a running one.

import Database from 'better-sqlite3';
import { MappingTable, SegmentState, isSegmentState, stateHasLocation, type EntryInput } from '../table/index.js';

export type Sql = Database.Database;

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
}

export interface AgentRow {
  name: string;
  portals: string[];
  lastSeen: string;
  registered: string;
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

/** Schema migrations in order; migration i brings the schema to version i+1. */
export const MIGRATIONS: readonly ((db: Sql) => void)[] = [
  (db) => {
    db.exec(`
      CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size > 0),
        data_offset INTEGER NOT NULL CHECK (data_offset >= 0),
        segment_size INTEGER NOT NULL CHECK (segment_size > 0),
        segments_total INTEGER NOT NULL CHECK (segments_total >= 0),
        state TEXT NOT NULL DEFAULT 'online' CHECK (state IN ('online', 'draining', 'failed')),
        added TEXT NOT NULL
      );
      CREATE TABLE vdisks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL CHECK (size >= 0),
        block_size INTEGER NOT NULL,
        segment_size INTEGER NOT NULL,
        segment_count INTEGER NOT NULL CHECK (segment_count >= 0),
        thin INTEGER NOT NULL DEFAULT 1,
        version INTEGER NOT NULL DEFAULT 1,
        created TEXT NOT NULL
      );
      CREATE TABLE segments (
        vdisk_id TEXT NOT NULL REFERENCES vdisks(id) ON DELETE CASCADE,
        seg INTEGER NOT NULL CHECK (seg >= 0),
        state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 4),
        container_id TEXT REFERENCES containers(id),
        offset INTEGER,
        PRIMARY KEY (vdisk_id, seg),
        CHECK ((container_id IS NULL) = (offset IS NULL))
      ) WITHOUT ROWID;
      CREATE INDEX segments_by_location ON segments (container_id, offset) WHERE container_id IS NOT NULL;
      CREATE TABLE container_segments (
        container_id TEXT NOT NULL REFERENCES containers(id),
        offset INTEGER NOT NULL CHECK (offset >= 0),
        refcount INTEGER NOT NULL CHECK (refcount >= 0),
        release_vdisk TEXT,
        release_version INTEGER,
        PRIMARY KEY (container_id, offset)
      ) WITHOUT ROWID;
      CREATE INDEX container_segments_releasing ON container_segments (release_vdisk) WHERE refcount = 0;
      CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        portals TEXT NOT NULL DEFAULT '[]',
        last_seen TEXT NOT NULL,
        registered TEXT NOT NULL
      );
      CREATE TABLE agent_containers (
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        PRIMARY KEY (agent, container_id)
      ) WITHOUT ROWID;
      CREATE TABLE exports (
        vdisk_id TEXT NOT NULL REFERENCES vdisks(id),
        agent TEXT NOT NULL REFERENCES agents(name),
        target_iqn TEXT NOT NULL,
        lun INTEGER NOT NULL CHECK (lun BETWEEN 0 AND 16383),
        read_only INTEGER NOT NULL DEFAULT 0,
        acked_version INTEGER NOT NULL DEFAULT 0,
        fenced INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (vdisk_id, agent),
        UNIQUE (agent, target_iqn, lun)
      );
      CREATE TABLE faults (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        agent TEXT NOT NULL,
        vdisk_id TEXT NOT NULL,
        segment INTEGER NOT NULL,
        op TEXT NOT NULL,
        lba INTEGER NOT NULL,
        blocks INTEGER NOT NULL,
        state TEXT NOT NULL,
        table_version INTEGER NOT NULL,
        outcome TEXT NOT NULL DEFAULT 'pending',
        detail TEXT NOT NULL DEFAULT ''
      );
      CREATE INDEX faults_by_vdisk ON faults (vdisk_id, id);
      CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL
      );
    `);
  },
  // Snapshots, clones and migrations.
  (db) => {
    db.exec(`
      ALTER TABLE vdisks ADD COLUMN kind TEXT NOT NULL DEFAULT 'vdisk' CHECK (kind IN ('vdisk', 'snapshot'));
      ALTER TABLE vdisks ADD COLUMN parent_id TEXT;
      CREATE TABLE migrations (
        vdisk_id TEXT PRIMARY KEY REFERENCES vdisks(id) ON DELETE CASCADE,
        to_container TEXT,
        from_container TEXT,
        state TEXT NOT NULL CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
        segments_total INTEGER NOT NULL DEFAULT 0,
        segments_done INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        started TEXT NOT NULL,
        updated TEXT NOT NULL,
        finished TEXT,
        error TEXT NOT NULL DEFAULT '',
        CHECK (to_container IS NOT NULL OR from_container IS NOT NULL)
      );
    `);
  },
  // Scrub before reuse: a freed location stays allocated, marked scrub,
  // until an agent has zeroed it (a scrub row can never be referenced).
  (db) => {
    db.exec(`
      ALTER TABLE container_segments ADD COLUMN scrub INTEGER NOT NULL DEFAULT 0
        CHECK (scrub IN (0, 1) AND (scrub = 0 OR refcount = 0));
      CREATE INDEX container_segments_scrub ON container_segments (container_id, offset) WHERE scrub = 1;
    `);
  },
  // Initiator ACLs per export (JSON array of IQNs; [] = any initiator).
  (db) => {
    db.exec(`ALTER TABLE exports ADD COLUMN allowed_initiators TEXT NOT NULL DEFAULT '[]'`);
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

function now(): string {
  return new Date().toISOString();
}

/** Reads the schema version; 0 for a new database. */
export function schemaVersion(db: Sql): number {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
  const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
  return row?.version ?? 0;
}

/** Applies the migrations the database lacks, each in its own transaction. */
export function migrate(db: Sql, migrations: readonly ((db: Sql) => void)[] = MIGRATIONS): number {
  let v = schemaVersion(db);
  if (v > migrations.length) {
    throw new Error(`database schema version ${v} is newer than this controller understands (${migrations.length}); upgrade tabula`);
  }
  while (v < migrations.length) {
    const step = migrations[v] as (db: Sql) => void;
    const target = v + 1;
    db.transaction(() => {
      step(db);
      db.prepare('DELETE FROM schema_version').run();
      db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(target);
    })();
    v = target;
  }
  return v;
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
}

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
  readonly #s;

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
    this.#s = {
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
      segmentsOf: p('SELECT * FROM segments WHERE vdisk_id = ? ORDER BY seg'),
      segmentsRaw: p('SELECT seg, state, container_id, offset FROM segments WHERE vdisk_id = ? ORDER BY seg').raw(),
      insertCseg: p('INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, ?, 1)'),
      insertSegment: p('INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, ?, ?, ?, ?)'),
      segmentsIn: p('SELECT * FROM segments WHERE vdisk_id = ? AND seg >= ? AND seg < ? ORDER BY seg'),
      upsertSegment: p(
        `INSERT INTO segments (vdisk_id, seg, state, container_id, offset) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (vdisk_id, seg) DO UPDATE SET state = excluded.state, container_id = excluded.container_id, offset = excluded.offset`,
      ),
      deleteSegment: p('DELETE FROM segments WHERE vdisk_id = ? AND seg = ?'),
      cseg: p('SELECT * FROM container_segments WHERE container_id = ? AND offset = ?'),
      csegIncr: p(
        `INSERT INTO container_segments (container_id, offset, refcount) VALUES (?, ?, 1)
         ON CONFLICT (container_id, offset) DO UPDATE SET refcount = refcount + 1, release_vdisk = NULL, release_version = NULL`,
      ),
      csegDecr: p(
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
      insertAgentContainer: p('INSERT INTO agent_containers (agent, container_id, path) VALUES (?, ?, ?)'),
      agentContainers: p('SELECT container_id FROM agent_containers WHERE agent = ? ORDER BY container_id'),
      containerAgents: p('SELECT agent FROM agent_containers WHERE container_id = ? ORDER BY agent'),
      exportsOfVdisk: p('SELECT * FROM exports WHERE vdisk_id = ? ORDER BY agent'),
      exportsOfAgent: p('SELECT * FROM exports WHERE agent = ? ORDER BY target_iqn, lun'),
      exports: p('SELECT * FROM exports ORDER BY agent, target_iqn, lun'),
      export: p('SELECT * FROM exports WHERE vdisk_id = ? AND agent = ?'),
      insertExport: p(
        'INSERT INTO exports (vdisk_id, agent, target_iqn, lun, read_only, acked_version, fenced, allowed_initiators) VALUES (?, ?, ?, ?, ?, ?, 0, ?)',
      ),
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

  // ---- containers ----

  container(id: string): ContainerRow | undefined {
    const r = this.#s.container.get(id) as RawContainer | undefined;
    return r && toContainer(r);
  }

  containers(): ContainerRow[] {
    return (this.#s.containers.all() as RawContainer[]).map(toContainer);
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
    this.#s.insertContainer.run(c.id, c.path, c.size, c.dataOffset, c.segmentSize, c.segmentsTotal, c.state, added);
    return { ...c, added };
  }

  setContainerState(id: string, state: ContainerState): void {
    this.sql.prepare('UPDATE containers SET state = ? WHERE id = ?').run(state, id);
  }

  deleteContainer(id: string): void {
    this.sql.prepare('DELETE FROM containers WHERE id = ?').run(id);
  }

  containerSegmentsUsed(id: string): number {
    return (this.#s.containerUsed.get(id) as { n: number }).n;
  }

  /** Allocated offsets of a container in ascending order (for the allocator's free map). */
  usedOffsets(id: string): number[] {
    return (this.#s.usedOffsets.pluck().all(id) as number[]);
  }

  containerSegment(containerId: string, offset: number): ContainerSegmentRow | undefined {
    const r = this.#s.cseg.get(containerId, offset) as
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
    return (this.#s.scrubPending.all() as { container_id: string; offset: number }[]).map((r) => ({ containerId: r.container_id, offset: r.offset }));
  }

  /** Locations of one container waiting to be scrubbed. */
  scrubPendingCount(containerId: string): number {
    return this.#s.scrubCount.pluck().get(containerId) as number;
  }

  /** Offsets of [offset, offset+count) of a container that wait to be scrubbed. */
  scrubPendingIn(containerId: string, offset: number, count: number): number[] {
    return this.#s.scrubIn.pluck().all(containerId, offset, offset + count) as number[];
  }

  /**
   * Marks locations that nothing records (a reservation given up after a
   * copy may have written to it) as waiting to be scrubbed; returns those
   * newly marked (a location the map already holds is left as it is).
   */
  markScrub(locs: readonly Location[]): Location[] {
    return this.tx(() => locs.filter((l) => this.#s.insertScrub.run(l.containerId, l.offset).changes > 0));
  }

  /**
   * Container segments [offset, offset+count) of a container have been
   * zeroed: those still waiting for it leave the map (so are free) and are
   * returned.
   */
  finishScrub(containerId: string, offset: number, count: number): Location[] {
    return this.tx(() =>
      (this.#s.scrubbed.pluck().all(containerId, offset, offset + count) as number[]).map((o) => ({ containerId, offset: o })),
    );
  }

  containerAgents(id: string): string[] {
    return this.#s.containerAgents.pluck().all(id) as string[];
  }

  // ---- vdisks ----

  vdisk(id: string): VdiskRow | undefined {
    const r = this.#s.vdiskById.get(id) as RawVdisk | undefined;
    return r && toVdisk(r);
  }

  vdiskByName(name: string): VdiskRow | undefined {
    const r = this.#s.vdiskByName.get(name) as RawVdisk | undefined;
    return r && toVdisk(r);
  }

  /** By name first, then by id. */
  findVdisk(nameOrId: string): VdiskRow | undefined {
    return this.vdiskByName(nameOrId) ?? this.vdisk(nameOrId);
  }

  vdisks(): VdiskRow[] {
    return (this.#s.vdisks.all() as RawVdisk[]).map(toVdisk);
  }

  insertVdisk(v: Omit<VdiskRow, 'created' | 'kind' | 'parentId'> & { kind?: VdiskKind; parentId?: string | null }): VdiskRow {
    const created = now();
    const kind = v.kind ?? 'vdisk';
    const parentId = v.parentId ?? null;
    this.#s.insertVdisk.run(v.id, v.name, v.size, v.blockSize, v.segmentSize, v.segmentCount, v.thin ? 1 : 0, v.version, created, kind, parentId);
    return { ...v, created, kind, parentId };
  }

  setVdiskSize(id: string, size: number, segmentCount: number): void {
    this.sql.prepare('UPDATE vdisks SET size = ?, segment_count = ? WHERE id = ?').run(size, segmentCount, id);
  }

  /** Bumps and returns the vdisk's table version; every table change does this in its transaction. */
  bumpVersion(vdiskId: string): number {
    const r = this.#s.bumpVersion.get(vdiskId) as { version: number } | undefined;
    if (!r) throw new TableChangeError(`vdisk ${vdiskId} does not exist`);
    return r.version;
  }

  deleteVdisk(id: string): void {
    this.sql.prepare('DELETE FROM vdisks WHERE id = ?').run(id);
  }

  // ---- segments ----

  segment(vdiskId: string, seg: number): SegmentRow {
    const r = this.#s.segment.get(vdiskId, seg) as RawSegment | undefined;
    return r ? toSegment(r) : { vdiskId, seg, state: SegmentState.Zero, containerId: null, offset: null };
  }

  /** Non-zero segment rows of a vdisk (all of them, or those in [first, end)). */
  segmentRows(vdiskId: string, first?: number, end?: number): SegmentRow[] {
    const rows =
      first === undefined
        ? (this.#s.segmentsOf.all(vdiskId) as RawSegment[])
        : (this.#s.segmentsIn.all(vdiskId, first, end ?? Number.MAX_SAFE_INTEGER) as RawSegment[]);
    return rows.map(toSegment);
  }

  /** Calls fn per non-zero segment row without building an array (for large tables). */
  forEachSegment(vdiskId: string, fn: (row: SegmentRow) => void): void {
    for (const r of this.#s.segmentsOf.iterate(vdiskId) as IterableIterator<RawSegment>) fn(toSegment(r));
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
        this.#s.csegIncr.run(location.containerId, location.offset);
      }
      if (old.containerId !== null && old.offset !== null) {
        this.#s.csegDecr.run(vdisk.id, version, old.containerId, old.offset);
      }
    }
    if (state === SegmentState.Zero) this.#s.deleteSegment.run(vdisk.id, seg);
    else this.#s.upsertSegment.run(vdisk.id, seg, state, location?.containerId ?? null, location?.offset ?? null);
    return true;
  }

  /**
   * Container segments released by `vdiskId` at or before `version` whose
   * count is still 0: marked to be scrubbed (still allocated, not yet free)
   * and returned.
   */
  reclaim(vdiskId: string, version: number): Location[] {
    return this.tx(() =>
      (this.#s.releasedToScrub.all(vdiskId, version) as { container_id: string; offset: number }[]).map((r) => ({
        containerId: r.container_id,
        offset: r.offset,
      })),
    );
  }

  /** Whether any location released by the vdisk waits for reclaim: usually not, and one read answers that. */
  hasReleased(vdiskId: string): boolean {
    return this.#s.anyReleased.get(vdiskId) !== undefined;
  }

  /** The lowest version every exporting agent has acked; Infinity when nobody exports the vdisk. */
  minAckedVersion(vdiskId: string): number {
    const r = this.#s.minAcked.get(vdiskId) as { v: number | null; n: number };
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
    const rows = this.#s.segmentsRaw.all(vdisk.id) as Raw[];
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
      this.#s.insertCseg.run(containerId, offset + i);
      this.#s.insertSegment.run(vdisk.id, firstSeg + i, SegmentState.Normal, containerId, offset + i);
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

  /** Every table entry that references a location. */
  references(loc: Location): Reference[] {
    return (this.#s.references.all(loc.containerId, loc.offset) as { vdisk_id: string; seg: number; state: number }[]).map((r) => ({
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
    const r = this.#s.migration.get(vdiskId) as RawMigration | undefined;
    return r && toMigration(r);
  }

  migrations(): MigrationRow[] {
    return (this.#s.migrations.all() as RawMigration[]).map(toMigration);
  }

  saveMigration(m: MigrationRow): void {
    this.#s.upsertMigration.run(
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

  // ---- agents ----

  agent(name: string): AgentRow | undefined {
    const r = this.#s.agent.get(name) as { name: string; portals: string; last_seen: string; registered: string } | undefined;
    return r && { name: r.name, portals: JSON.parse(r.portals) as string[], lastSeen: r.last_seen, registered: r.registered };
  }

  agents(): AgentRow[] {
    return (this.#s.agents.all() as { name: string; portals: string; last_seen: string; registered: string }[]).map((r) => ({
      name: r.name,
      portals: JSON.parse(r.portals) as string[],
      lastSeen: r.last_seen,
      registered: r.registered,
    }));
  }

  /** Records a registration: portals and the (accepted) containers it reaches. */
  registerAgent(name: string, portals: readonly string[], containers: readonly { id: string; path: string }[]): void {
    this.tx(() => {
      const t = now();
      this.#s.upsertAgent.run(name, JSON.stringify(portals), t, t);
      this.#s.clearAgentContainers.run(name);
      for (const c of containers) this.#s.insertAgentContainer.run(name, c.id, c.path);
    });
  }

  touchAgent(name: string): void {
    this.#s.touchAgent.run(now(), name);
  }

  agentContainers(name: string): string[] {
    return this.#s.agentContainers.pluck().all(name) as string[];
  }

  // ---- exports ----

  exportsOfVdisk(vdiskId: string): ExportRow[] {
    return (this.#s.exportsOfVdisk.all(vdiskId) as RawExport[]).map(toExport);
  }

  exportsOfAgent(agent: string): ExportRow[] {
    return (this.#s.exportsOfAgent.all(agent) as RawExport[]).map(toExport);
  }

  exports(): ExportRow[] {
    return (this.#s.exports.all() as RawExport[]).map(toExport);
  }

  export(vdiskId: string, agent: string): ExportRow | undefined {
    const r = this.#s.export.get(vdiskId, agent) as RawExport | undefined;
    return r && toExport(r);
  }

  insertExport(e: Omit<ExportRow, 'fenced' | 'allowedInitiators'> & { allowedInitiators?: readonly string[] }): void {
    this.#s.insertExport.run(e.vdiskId, e.agent, e.targetIqn, e.lun, e.readOnly ? 1 : 0, e.ackedVersion, JSON.stringify(e.allowedInitiators ?? []));
  }

  deleteExport(vdiskId: string, agent: string): boolean {
    return this.#s.deleteExport.run(vdiskId, agent).changes > 0;
  }

  recordAck(vdiskId: string, agent: string, version: number): void {
    this.#s.ackExport.run(version, vdiskId, agent);
  }

  /** Agents whose export of the vdisk is marked fenced. */
  fencedAgents(vdiskId: string): string[] {
    return this.#s.fencedAgents.all(vdiskId) as string[];
  }

  setFenced(vdiskId: string, agent: string, fenced: boolean): void {
    this.#s.fenceExport.run(fenced ? 1 : 0, vdiskId, agent);
  }

  // ---- faults and events ----

  insertFault(f: NewFault): number {
    const r = this.#s.insertFault.get(
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
    this.#s.faultOutcome.run(outcome, detail, detail, id);
  }

  faults(vdiskId?: string, limit = 100): FaultRow[] {
    const rows = vdiskId === undefined ? this.#s.faults.all(limit) : this.#s.faultsOf.all(vdiskId, limit);
    return (rows as RawFault[]).map(toFault);
  }

  event(kind: string, subject: string, message: string): void {
    this.#s.event.run(now(), kind, subject, message);
  }
}

/** A DB row as the table entry agents see (invalid drops its location). */
export function tableEntry(r: SegmentRow): EntryInput {
  if (!stateHasLocation(r.state) || r.containerId === null) return { state: r.state };
  return { state: r.state, container: r.containerId, offset: r.offset ?? 0 };
}

export function openDb(path: string): ControllerDb {
  return new ControllerDb(path);
}
