// Snapshots and clones: a new table sharing every allocated container
// segment of its source (reference counts +1), each shared entry no-write
// in both tables, so the first write to either side faults and is copied
// (copy-on-write, faults.ts). Nothing is copied at creation.
//
// Point in time: the source's no-write version and the new table commit in
// one transaction; the snapshot exists only once every agent exporting the
// source has acked that version (an agent acks only after the I/O it
// started under older versions completed), so every write acknowledged
// before is in it and every write after faults. If an exporter does not
// ack (offline, or connected but silent past the ack deadline: fenced), the
// snapshot is taken back and the call fails then, within the ack timeout;
// the source's change itself still waits for that agent (or the removal of
// its export) before the vdisk's next change (TableChanges.awaitAcks).
//
// A mirrored source's entries are shared leg by leg: every leg location of
// a segment gains a reference, and the new table keeps the source's copies.
//
// Removal of a table drops its references (every leg's, and its stale
// legs'); a location reaching zero is
// freed once the agents that exported the table have acked (the vdisk must
// be unexported first), and one left with a single writable holder becomes
// writable there again (TableChanges.settleShared).

import { randomUUID } from 'node:crypto';
import { SegmentState, segmentStateName } from '../table/index.js';
import { log } from '../util/log.js';
import type { ControllerDb, Location, VdiskKind, VdiskRow } from './db.js';
import type { AgentRegistry } from './agent-registry.js';
import type { TableChanges } from './table-changes.js';
import type { WriteBehind } from './write-behind.js';

/** What snapshots, clones and table removal need of the controller. */
export interface SnapshotHost {
  readonly db: ControllerDb;
  /** Flushed before reading acked versions. */
  readonly writeBehind: Pick<WriteBehind, 'flush'>;
  readonly tables: Pick<TableChanges, 'serialize' | 'commitAndSend' | 'awaitAcks' | 'forgetTable' | 'reclaim' | 'settleShared'>;
  /** Whether each exporter of the source is connected and in step (it confirms the point in time). */
  readonly agents: Pick<AgentRegistry, 'link'>;
}

/** A snapshot or clone that cannot be made now (maps to FAILED_PRECONDITION). */
export class SnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotError';
  }
}

/**
 * Makes `name`, a new table of `kind` sharing every segment of `src`.
 * Resolves once the source's exporters have acked its no-write version.
 */
export async function shareVdisk(host: SnapshotHost, src: VdiskRow, name: string, kind: VdiskKind): Promise<VdiskRow> {
  const db = host.db;
  const verb = kind === 'snapshot' ? 'snapshot' : 'clone';
  /** Set when an exporter missed the ack deadline: the call fails at once, the change goes on waiting for it. */
  let abandoned: SnapshotError | null = null;
  let giveUp: (e: SnapshotError) => void = () => undefined;
  const early = new Promise<never>((_, reject) => {
    giveUp = reject;
  });
  const task = host.tables.serialize(src.id, async () => {
    const cur = db.vdisk(src.id);
    if (!cur) throw new SnapshotError(`vdisk ${src.name} was removed`);
    // Entries whose data cannot be shared as no-write (the invariant for shared locations).
    for (const [state, n] of db.stateCounts(cur.id)) {
      if (state === SegmentState.Error || state === SegmentState.Invalid) {
        throw new SnapshotError(
          `cannot ${verb} vdisk ${cur.name}: ${n} segment${n === 1 ? ' is' : 's are'} ${segmentStateName(state)}; repair them first (tabula segment set-state)`,
        );
      }
    }
    if (cur.kind === 'vdisk') {
      for (const e of db.exportsOfVdisk(cur.id)) {
        const link = host.agents.link(e.agent);
        const held = link?.held(cur.id);
        if (!link || !held || held.fenced) {
          throw new SnapshotError(
            `cannot ${verb} vdisk ${cur.name}: agent ${e.agent} exports it but is ${link ? 'fenced' : 'offline'}, so it cannot confirm the point in time`,
          );
        }
      }
    }
    const id = randomUUID();
    const create = (): void => {
      db.insertVdisk({
        id,
        name,
        size: cur.size,
        blockSize: cur.blockSize,
        segmentSize: cur.segmentSize,
        segmentCount: cur.segmentCount,
        // Nothing is reserved for the copies its writes will need.
        thin: true,
        // Its legs are the source's: a clone's new writes get as many.
        copies: cur.copies,
        version: 1,
        kind,
        parentId: cur.id,
      });
      db.shareInto(cur.id, id);
    };
    const hasNormal = (db.stateCounts(cur.id).get(SegmentState.Normal) ?? 0) > 0;
    if (cur.kind === 'snapshot' || !hasNormal) {
      // Nothing in the source is writable: no agent can change what is shared.
      db.tx(create);
    } else {
      const r = host.tables.commitAndSend(cur.id, (c) => {
        create();
        for (const seg of db.freezeNormal(cur.id)) c.mark(seg);
      });
      if (r !== null) {
        await host.tables.awaitAcks(r, {
          fenced: (who, why) => {
            // The point in time is not confirmed within the deadline: the snapshot is taken back now,
            // while the source's no-write version still waits for the fenced agent's ack (it touched
            // normal segments) before the vdisk's next change, so nothing it may still write is lost.
            abandoned = new SnapshotError(`${verb} of vdisk ${cur.name} abandoned: agent ${who.join(', ')} fenced: ${why}`);
            void removeTable(host, id);
            giveUp(abandoned);
          },
        });
        if (abandoned !== null) throw abandoned;
        host.writeBehind.flush(); // acked versions and lifted fences
        const missing = db.exportsOfVdisk(cur.id).filter((e) => e.ackedVersion < r.version || e.fenced);
        if (missing.length > 0) {
          const who = missing.map((e) => e.agent).join(', ');
          // Settling the source's entries queues behind this task: not awaited here.
          void removeTable(host, id);
          throw new SnapshotError(`${verb} of vdisk ${cur.name} abandoned: agent ${who} did not ack table version ${r.version} in time`);
        }
      }
    }
    db.event(verb, name, `${verb} of ${cur.name} (version ${db.vdisk(cur.id)?.version ?? '?'})`);
    log.info(`${verb} ${name} of vdisk ${cur.name} created`);
    return db.vdisk(id) as VdiskRow;
  });
  return Promise.race([task, early]);
}

/**
 * Drops a table that no agent exports (the caller checked): every entry
 * loses its location, the vdisk row goes. Synchronous in the DB; the
 * returned promise settles once locations left with one writable holder
 * have been made writable there.
 */
export function removeTable(host: SnapshotHost, vdiskId: string): Promise<void> {
  const db = host.db;
  const v = db.vdisk(vdiskId);
  if (!v) return Promise.resolve();
  const touched: Location[] = [];
  db.tx(() => {
    const version = db.bumpVersion(v.id);
    for (const row of db.segmentRows(v.id)) {
      if (row.containerId !== null) touched.push(...db.locationsOfSegment(v.id, row.seg));
      // Without a location the extra legs and stale legs go too, each releasing its reference.
      db.setSegment(v, row.seg, { state: SegmentState.Zero, location: null }, version);
    }
    db.deleteVdisk(v.id);
  });
  host.tables.forgetTable(v.id);
  host.tables.reclaim(v.id);
  return settleAll(host, touched);
}

/** Discards segments at or past `segmentCount` of an unexported vdisk (forced shrink). */
export function shrinkTable(host: SnapshotHost, v: VdiskRow, segmentCount: number): Promise<void> {
  const db = host.db;
  const touched: Location[] = [];
  db.tx(() => {
    const version = db.bumpVersion(v.id);
    for (const row of db.segmentRows(v.id, segmentCount)) {
      if (row.containerId !== null) touched.push(...db.locationsOfSegment(v.id, row.seg));
      db.setSegment(v, row.seg, { state: SegmentState.Zero, location: null }, version);
    }
    db.setVdiskSize(v.id, segmentCount * v.segmentSize, segmentCount);
  });
  host.tables.forgetTable(v.id);
  host.tables.reclaim(v.id);
  return settleAll(host, touched);
}

function settleAll(host: SnapshotHost, locs: readonly Location[]): Promise<void> {
  return host.tables.settleShared(locs.filter((l) => host.db.refcount(l) === 1));
}
