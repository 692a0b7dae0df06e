// `tabula check`: verifies the invariants of design notes §3 that the
// database can show, from the database alone, and names every violation.
// (The "no stale data" and "acknowledged writes never lost" invariants are
// properties of the agents' I/O paths; what the DB can show of them is
// that every table entry is well formed and points at allocated space.)

import { SEGMENT_STATE_NAMES, SegmentState } from '../table/index.js';
import type { ControllerDb } from './db.js';

const stateName = (s: number): string => SEGMENT_STATE_NAMES[s] ?? `state#${s}`;

export function checkInvariants(db: ControllerDb): string[] {
  const sql = db.sql;
  const out: string[] = [];
  const vname = new Map(db.vdisks().map((v) => [v.id, v.name]));
  const vd = (id: string): string => `vdisk ${vname.get(id) ?? id}`;
  const loc = (c: string, o: number): string => `container ${c} offset ${o}`;

  // Reference counts match table entries.
  const counts = sql
    .prepare(
      `SELECT cs.container_id AS c, cs.offset AS o, cs.refcount AS rc, COUNT(s.seg) AS refs
       FROM container_segments cs LEFT JOIN segments s ON s.container_id = cs.container_id AND s.offset = cs.offset
       GROUP BY cs.container_id, cs.offset HAVING refs != cs.refcount`,
    )
    .all() as { c: string; o: number; rc: number; refs: number }[];
  for (const r of counts) out.push(`${loc(r.c, r.o)} has reference count ${r.rc} but ${r.refs} table entries reference it`);

  // A count of 0 is legal only while the release waits for acks, or the
  // freed location waits to be zeroed (scrub) before it is free.
  const orphans = sql
    .prepare(
      'SELECT container_id AS c, offset AS o FROM container_segments WHERE refcount = 0 AND scrub = 0 AND (release_vdisk IS NULL OR release_version IS NULL)',
    )
    .all() as { c: string; o: number }[];
  for (const r of orphans) out.push(`${loc(r.c, r.o)} is allocated with reference count 0 and no pending release`);

  // A location waiting to be scrubbed holds old data and may be zeroed any
  // moment: nothing may map it.
  const scrubMapped = sql
    .prepare(
      `SELECT s.vdisk_id AS v, s.seg AS seg, s.container_id AS c, s.offset AS o FROM segments s
       JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
       WHERE cs.scrub = 1 ORDER BY s.vdisk_id, s.seg`,
    )
    .all() as { v: string; seg: number; c: string; o: number }[];
  for (const r of scrubMapped) out.push(`${vd(r.v)} segment ${r.seg} references ${loc(r.c, r.o)}, which is waiting to be scrubbed`);

  // Every referenced location is allocated (not in the free map).
  const unallocated = sql
    .prepare(
      `SELECT s.vdisk_id AS v, s.seg AS seg, s.container_id AS c, s.offset AS o FROM segments s
       LEFT JOIN container_segments cs ON cs.container_id = s.container_id AND cs.offset = s.offset
       WHERE s.container_id IS NOT NULL AND cs.container_id IS NULL`,
    )
    .all() as { v: string; seg: number; c: string; o: number }[];
  for (const r of unallocated) out.push(`${vd(r.v)} segment ${r.seg} references ${loc(r.c, r.o)}, which is in the free map`);

  // Locations inside their container.
  const outside = sql
    .prepare(
      `SELECT cs.container_id AS c, cs.offset AS o, ct.segments_total AS total FROM container_segments cs
       JOIN containers ct ON ct.id = cs.container_id WHERE cs.offset >= ct.segments_total`,
    )
    .all() as { c: string; o: number; total: number }[];
  for (const r of outside) out.push(`${loc(r.c, r.o)} is beyond the container's ${r.total} segments`);

  // Shared locations are no-write everywhere (in snapshots and clones alike);
  // no two vdisks write one location.
  const shared = sql
    .prepare(
      `SELECT container_id AS c, offset AS o, COUNT(*) AS refs, COUNT(DISTINCT vdisk_id) AS vdisks,
              SUM(state = ${SegmentState.Normal}) AS writable
       FROM segments WHERE container_id IS NOT NULL GROUP BY container_id, offset HAVING refs > 1`,
    )
    .all() as { c: string; o: number; refs: number; vdisks: number; writable: number }[];
  for (const r of shared) {
    const users = sql
      .prepare('SELECT vdisk_id AS v, seg, state FROM segments WHERE container_id = ? AND offset = ? ORDER BY vdisk_id, seg')
      .all(r.c, r.o) as { v: string; seg: number; state: number }[];
    for (const u of users) {
      if (u.state === SegmentState.NoWrite) continue;
      out.push(`${loc(r.c, r.o)} is referenced ${r.refs} times but ${vd(u.v)} segment ${u.seg} is ${stateName(u.state)}, not no-write`);
    }
    if (r.vdisks > 1 && r.writable > 0) {
      const writers = users.filter((u) => u.state === SegmentState.Normal).map((u) => `${vd(u.v)} segment ${u.seg}`);
      out.push(`${loc(r.c, r.o)} is shared by ${r.vdisks} vdisks and writable by ${writers.join(', ')}`);
    }
  }

  // Table entries are well formed.
  const entries = sql
    .prepare(
      `SELECT s.vdisk_id AS v, s.seg AS seg, s.state AS state, s.container_id AS c, s.offset AS o,
              vd.segment_count AS n, vd.segment_size AS vss, ct.segment_size AS css
       FROM segments s JOIN vdisks vd ON vd.id = s.vdisk_id LEFT JOIN containers ct ON ct.id = s.container_id
       WHERE s.seg >= vd.segment_count OR s.state = ${SegmentState.Zero}
          OR (s.container_id IS NULL AND s.state IN (${SegmentState.Normal}, ${SegmentState.NoWrite}))
          OR (s.container_id IS NOT NULL AND (ct.id IS NULL OR ct.segment_size != vd.segment_size))`,
    )
    .all() as { v: string; seg: number; state: number; c: string | null; o: number | null; n: number; vss: number; css: number | null }[];
  for (const e of entries) {
    const what = `${vd(e.v)} segment ${e.seg}`;
    if (e.seg >= e.n) out.push(`${what} is beyond the vdisk's ${e.n} segments`);
    if (e.state === SegmentState.Zero) out.push(`${what} is stored as zero${e.c ? ` with ${loc(e.c, e.o ?? 0)}` : ''} (zero segments have no entry)`);
    if (e.c === null && (e.state === SegmentState.Normal || e.state === SegmentState.NoWrite)) {
      out.push(`${what} is ${stateName(e.state)} without a location`);
    }
    if (e.c !== null && e.css === null) out.push(`${what} references unknown container ${e.c}`);
    else if (e.c !== null && e.css !== e.vss) out.push(`${what} is in container ${e.c} of segment size ${e.css}, vdisk has ${e.vss}`);
  }

  // Snapshots are read-only: no writable entry, no writable export.
  const snapWritable = sql
    .prepare(
      `SELECT s.vdisk_id AS v, s.seg AS seg FROM segments s JOIN vdisks vd ON vd.id = s.vdisk_id
       WHERE vd.kind = 'snapshot' AND s.state = ${SegmentState.Normal} ORDER BY s.vdisk_id, s.seg`,
    )
    .all() as { v: string; seg: number }[];
  for (const r of snapWritable) out.push(`snapshot ${vname.get(r.v) ?? r.v} segment ${r.seg} is normal (writable); snapshots are read-only`);
  const snapExports = sql
    .prepare(`SELECT e.vdisk_id AS v, e.agent AS a FROM exports e JOIN vdisks vd ON vd.id = e.vdisk_id WHERE vd.kind = 'snapshot' AND e.read_only = 0`)
    .all() as { v: string; a: string }[];
  for (const r of snapExports) out.push(`snapshot ${vname.get(r.v) ?? r.v} is exported writable on agent ${r.a}`);

  // Running migrations name containers that exist.
  const migrations = sql
    .prepare(
      `SELECT m.vdisk_id AS v, m.to_container AS t, m.from_container AS f FROM migrations m
       WHERE m.state = 'running' AND ((m.to_container IS NOT NULL AND m.to_container NOT IN (SELECT id FROM containers))
          OR (m.from_container IS NOT NULL AND m.from_container NOT IN (SELECT id FROM containers)))`,
    )
    .all() as { v: string; t: string | null; f: string | null }[];
  for (const r of migrations) out.push(`migration of ${vd(r.v)} names unknown container ${r.t ?? r.f ?? '?'}`);

  // vdisk geometry.
  for (const v of db.vdisks()) {
    if (v.segmentCount * v.segmentSize < v.size) out.push(`${vd(v.id)}: ${v.segmentCount} segments of ${v.segmentSize} bytes do not cover its size ${v.size}`);
    if (v.size % v.blockSize !== 0) out.push(`${vd(v.id)}: size ${v.size} is not a multiple of its block size ${v.blockSize}`);
  }

  // Exports of a vdisk reach every container it uses.
  const unreachable = sql
    .prepare(
      `SELECT DISTINCT e.agent AS a, e.vdisk_id AS v, s.container_id AS c FROM exports e
       JOIN segments s ON s.vdisk_id = e.vdisk_id AND s.container_id IS NOT NULL
       LEFT JOIN agent_containers ac ON ac.agent = e.agent AND ac.container_id = s.container_id
       WHERE ac.container_id IS NULL`,
    )
    .all() as { a: string; v: string; c: string }[];
  for (const r of unreachable) out.push(`agent ${r.a} exports ${vd(r.v)} but does not reach container ${r.c} it uses`);

  return out;
}
