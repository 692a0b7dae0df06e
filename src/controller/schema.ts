// The controller database's schema: its tables as a list of migrations
// (schema versions), and the one function that brings a database file up
// to the version this build runs. A new database gets every migration in
// order; one written by an older tabula gets those it lacks. What each
// table holds, and why it is stored that way, is in db.ts.
//
// A migration is never edited once released: a change to the schema is a
// new migration at the end of MIGRATIONS.

import type Database from 'better-sqlite3';

export type Sql = Database.Database;

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
  // ALUA: each agent's number (its target port identity; never reused while
  // the agent exists) and each export's preferred access state. Agents known
  // already are numbered in the order they first registered.
  (db) => {
    db.exec(`
      ALTER TABLE agents ADD COLUMN number INTEGER CHECK (number BETWEEN 1 AND 4095);
      CREATE UNIQUE INDEX agents_by_number ON agents (number);
      ALTER TABLE exports ADD COLUMN alua TEXT NOT NULL DEFAULT 'optimized' CHECK (alua IN ('optimized', 'non-optimized'));
    `);
    const names = db.prepare('SELECT name FROM agents ORDER BY registered, name').pluck().all() as string[];
    const number = db.prepare('UPDATE agents SET number = ? WHERE name = ?');
    names.forEach((name, i) => number.run(i + 1, name));
  },
  // The SCSI state of each vdisk's logical unit (persistent reservations,
  // the SPC-2 RESERVE holder), owned here for every agent exporting the
  // vdisk: proto LuState as JSON, and the table version that set it. No row
  // = the empty state.
  (db) => {
    db.exec(`
      CREATE TABLE lu_state (
        vdisk_id TEXT PRIMARY KEY REFERENCES vdisks(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        version INTEGER NOT NULL
      );
    `);
  },
  // Write owners of segments (COMPARE AND WRITE across agents): few rows,
  // apart from segments so that the common row and its queries stay as they
  // are. owner is the agent's number (agents.number).
  (db) => {
    db.exec(`
      CREATE TABLE segment_owners (
        vdisk_id TEXT NOT NULL REFERENCES vdisks(id) ON DELETE CASCADE,
        seg INTEGER NOT NULL CHECK (seg >= 0),
        owner INTEGER NOT NULL CHECK (owner > 0),
        PRIMARY KEY (vdisk_id, seg)
      ) WITHOUT ROWID;
    `);
  },
  // The storage network: the host each agent runs on (Register.host_id; ''
  // unknown), and whether each agent reaches each of its containers now
  // (reported by the agent; a container that went away keeps its row,
  // unreachable, with the reason).
  (db) => {
    db.exec(`
      ALTER TABLE agents ADD COLUMN host TEXT NOT NULL DEFAULT '';
      ALTER TABLE agent_containers ADD COLUMN reachable INTEGER NOT NULL DEFAULT 1 CHECK (reachable IN (0, 1));
      ALTER TABLE agent_containers ADD COLUMN error TEXT NOT NULL DEFAULT '';
    `);
  },
  // Mirrored vdisks: each container's failure domain ('' = derived,
  // domains.ts), each vdisk's copies, and each segment's extra legs (leg 0
  // stays in segments, so one-copy rows and their queries are as they were).
  // A stale leg is one removed because its container failed, kept (with its
  // location's reference) so that the container can be resynced when it
  // comes back; dirty = written since. segment_locations is every location
  // a table entry references, whatever its leg.
  (db) => {
    db.exec(`
      ALTER TABLE containers ADD COLUMN domain TEXT NOT NULL DEFAULT '';
      ALTER TABLE vdisks ADD COLUMN copies INTEGER NOT NULL DEFAULT 1 CHECK (copies BETWEEN 1 AND 3);
      CREATE TABLE segment_legs (
        vdisk_id TEXT NOT NULL REFERENCES vdisks(id) ON DELETE CASCADE,
        seg INTEGER NOT NULL CHECK (seg >= 0),
        leg INTEGER NOT NULL CHECK (leg BETWEEN 1 AND 2),
        container_id TEXT NOT NULL REFERENCES containers(id),
        offset INTEGER NOT NULL CHECK (offset >= 0),
        PRIMARY KEY (vdisk_id, seg, leg)
      ) WITHOUT ROWID;
      CREATE INDEX segment_legs_by_location ON segment_legs (container_id, offset);
      CREATE TABLE stale_legs (
        vdisk_id TEXT NOT NULL REFERENCES vdisks(id) ON DELETE CASCADE,
        seg INTEGER NOT NULL CHECK (seg >= 0),
        container_id TEXT NOT NULL REFERENCES containers(id),
        offset INTEGER NOT NULL CHECK (offset >= 0),
        dirty INTEGER NOT NULL DEFAULT 0 CHECK (dirty IN (0, 1)),
        since TEXT NOT NULL,
        PRIMARY KEY (vdisk_id, seg, container_id)
      ) WITHOUT ROWID;
      CREATE INDEX stale_legs_by_container ON stale_legs (container_id, offset);
      CREATE VIEW segment_locations AS
        SELECT vdisk_id, seg, 0 AS leg, state, container_id, offset FROM segments WHERE container_id IS NOT NULL
        UNION ALL
        SELECT l.vdisk_id, l.seg, l.leg, s.state, l.container_id, l.offset
        FROM segment_legs l JOIN segments s ON s.vdisk_id = l.vdisk_id AND s.seg = l.seg;
    `);
  },
  // Durable reservations of free space for lazily committed thin
  // allocations (allocator.ts): a lazy commit may be lost at a power cut
  // after an agent wrote through it, so it takes locations only from ranges
  // recorded here by a durable commit; at start, reserved locations nothing
  // references are suspect until scrubbed (space-recovery.ts).
  (db) => {
    db.exec(`
      CREATE TABLE space_reservations (
        id INTEGER PRIMARY KEY,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        first INTEGER NOT NULL CHECK (first >= 0),
        count INTEGER NOT NULL CHECK (count > 0)
      );
      CREATE INDEX space_reservations_by_container ON space_reservations (container_id, first);
    `);
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Reads the schema version; 0 for a new database. */
export function schemaVersion(db: Sql): number {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
  const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
  return row?.version ?? 0;
}

/** The schema version stored in a database opened read-only (nothing is created); undefined when there is none. */
export function storedSchemaVersion(db: Sql): number | undefined {
  return db.prepare('SELECT version FROM schema_version').pluck().get() as number | undefined;
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
