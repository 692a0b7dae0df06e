// `tabula check`: verifies the invariants (docs/architecture.md,
// "What `tabula check` verifies") that the
// database can show, from the database alone, and names every violation.
// (The "no stale data" and "acknowledged writes never lost" invariants are
// properties of the agents' I/O paths; what the DB can show of them is
// that every table entry is well formed and points at allocated space.)

import { SEGMENT_STATE_NAMES, SegmentState } from '../table/index.js';
import type { ControllerDb } from './db.js';
import { containerDomains } from './domains.js';

const stateName = (s: number): string => SEGMENT_STATE_NAMES[s] ?? `state#${s}`;

export function checkInvariants(db: ControllerDb): string[] {
  const out: string[] = [];
  const vname = new Map(db.vdisks().map((v) => [v.id, v.name]));
  const vd = (id: string): string => `vdisk ${vname.get(id) ?? id}`;
  const loc = (c: string, o: number): string => `container ${c} offset ${o}`;

  // Reference counts match table entries.
  for (const r of db.refcountMismatches()) {
    out.push(`${loc(r.containerId, r.offset)} has reference count ${r.refcount} but ${r.refs} table entries reference it`);
  }

  // A count of 0 is legal only while the release waits for acks, or the
  // freed location waits to be zeroed (scrub) before it is free.
  for (const r of db.unreleasedZeroCounts()) out.push(`${loc(r.containerId, r.offset)} is allocated with reference count 0 and no pending release`);

  // A location waiting to be scrubbed holds old data and may be zeroed any
  // moment: nothing may map it.
  for (const r of db.entriesOnScrubbing()) {
    out.push(`${vd(r.vdiskId)} segment ${r.seg} references ${loc(r.containerId, r.offset)}, which is waiting to be scrubbed`);
  }

  // Every referenced location is allocated (not in the free map).
  for (const r of db.entriesOnFreeSpace()) out.push(`${vd(r.vdiskId)} segment ${r.seg} references ${loc(r.containerId, r.offset)}, which is in the free map`);

  // Locations inside their container.
  for (const r of db.locationsBeyondContainer()) out.push(`${loc(r.containerId, r.offset)} is beyond the container's ${r.segmentsTotal} segments`);

  // Space reserved for lazy allocations is free space (or allocated, like any
  // other) and no error; only a reservation outside its container is.
  for (const r of db.reservationsBeyondContainer()) {
    out.push(`container ${r.containerId} reservation of segments ${r.first}+${r.count} is beyond the container's ${r.segmentsTotal} segments`);
  }

  // Shared locations are no-write everywhere (in snapshots and clones alike);
  // no two vdisks write one location.
  for (const r of db.sharedLocations()) {
    const users = db.references(r);
    for (const u of users) {
      if (u.state === SegmentState.NoWrite) continue;
      out.push(`${loc(r.containerId, r.offset)} is referenced ${r.refs} times but ${vd(u.vdiskId)} segment ${u.seg} is ${stateName(u.state)}, not no-write`);
    }
    if (r.vdisks > 1 && r.writable > 0) {
      const writers = users.filter((u) => u.state === SegmentState.Normal).map((u) => `${vd(u.vdiskId)} segment ${u.seg}`);
      out.push(`${loc(r.containerId, r.offset)} is shared by ${r.vdisks} vdisks and writable by ${writers.join(', ')}`);
    }
  }

  // Table entries are well formed.
  for (const e of db.suspectEntries()) {
    const what = `${vd(e.vdiskId)} segment ${e.seg}`;
    if (e.seg >= e.vdiskSegments) out.push(`${what} is beyond the vdisk's ${e.vdiskSegments} segments`);
    if (e.state === SegmentState.Zero) out.push(`${what} is stored as zero${e.containerId ? ` with ${loc(e.containerId, e.offset ?? 0)}` : ''} (zero segments have no entry)`);
    if (e.containerId === null && (e.state === SegmentState.Normal || e.state === SegmentState.NoWrite)) {
      out.push(`${what} is ${stateName(e.state)} without a location`);
    }
    if (e.containerId !== null && e.containerSegmentSize === null) out.push(`${what} references unknown container ${e.containerId}`);
    else if (e.containerId !== null && e.containerSegmentSize !== e.vdiskSegmentSize) {
      out.push(`${what} is in container ${e.containerId} of segment size ${e.containerSegmentSize}, vdisk has ${e.vdiskSegmentSize}`);
    }
  }

  // Snapshots are read-only: no writable entry, no writable export.
  for (const r of db.writableSnapshotEntries()) out.push(`snapshot ${vname.get(r.vdiskId) ?? r.vdiskId} segment ${r.seg} is normal (writable); snapshots are read-only`);
  for (const r of db.writableSnapshotExports()) out.push(`snapshot ${vname.get(r.vdiskId) ?? r.vdiskId} is exported writable on agent ${r.agent}`);

  // Running migrations name containers that exist.
  for (const r of db.migrationsToUnknownContainers()) out.push(`migration of ${vd(r.vdiskId)} names unknown container ${r.toContainer ?? r.fromContainer ?? '?'}`);

  // vdisk geometry.
  for (const v of db.vdisks()) {
    if (v.segmentCount * v.segmentSize < v.size) out.push(`${vd(v.id)}: ${v.segmentCount} segments of ${v.segmentSize} bytes do not cover its size ${v.size}`);
    if (v.size % v.blockSize !== 0) out.push(`${vd(v.id)}: size ${v.size} is not a multiple of its block size ${v.blockSize}`);
  }

  // Exports of a vdisk reach every container it uses.
  for (const r of db.exportsMissingContainers()) out.push(`agent ${r.agent} exports ${vd(r.vdiskId)} but does not reach container ${r.containerId} it uses`);

  out.push(...checkLegs(db, vd));

  // Write owners (COMPARE AND WRITE across agents) name agents that export
  // the vdisk; an owner that no longer does only costs a fault, but points
  // at a number reused or lost (an agent removed, a database restored).
  for (const o of db.allSegmentOwners()) {
    const agent = db.agentByNumber(o.owner);
    const what = `${vd(o.vdiskId)} segment ${o.seg}`;
    if (agent === undefined) out.push(`${what} is owned by agent number ${o.owner}, which is no registered agent`);
    else if (!db.export(o.vdiskId, agent)) out.push(`${what} is owned by agent ${agent}, which does not export it`);
    if (o.seg >= (db.vdisk(o.vdiskId)?.segmentCount ?? 0)) out.push(`${what} has an owner but is beyond the vdisk's end`);
  }

  return out;
}

/**
 * Mirrored entries: legs well formed (ControllerDb.suspectLegs: beside a
 * location, packed, in distinct containers of the vdisk's segment size), in
 * distinct failure domains, no more than the vdisk's copies; stale legs
 * (kept for a resync) beside a live leg, on a container the segment no
 * longer uses.
 */
function checkLegs(db: ControllerDb, vd: (id: string) => string): string[] {
  const out: string[] = [];
  for (const r of db.suspectLegs()) {
    out.push(`${vd(r.vdiskId)} segment ${r.seg} ${r.leg < 0 ? 'stale leg' : `leg ${r.leg}`} on container ${r.containerId} offset ${r.offset}: ${r.problem}`);
  }
  for (const r of db.legShortfalls('over')) {
    out.push(`${vd(r.vdiskId)} segment ${r.seg} has ${r.legs} legs but the vdisk keeps ${r.copies} cop${r.copies === 1 ? 'y' : 'ies'}`);
  }
  const domains = containerDomains(db);
  const domainOf = (id: string): string => domains.get(id) ?? `container:${id}`;
  db.forEachMirroredSegment((vdiskId, seg, _state, locs) => {
    const byDomain = new Map<string, { leg: number; containerId: string }>();
    locs.forEach((l, leg) => {
      const d = domainOf(l.containerId);
      const other = byDomain.get(d);
      // Two legs in one container are suspectLegs' to name.
      if (other !== undefined && other.containerId !== l.containerId) {
        out.push(`${vd(vdiskId)} segment ${seg} has legs ${other.leg} and ${leg} in the same failure domain ${d}`);
      }
      if (other === undefined) byDomain.set(d, { leg, containerId: l.containerId });
    });
  });
  for (const st of db.staleLegs({})) {
    const live = db.locationsOfSegment(st.vdiskId, st.seg);
    // Without a location, or at one of its legs' very location: suspectLegs names it.
    if (live.length === 0 || live.some((l) => l.containerId === st.containerId && l.offset === st.offset)) continue;
    if (live.some((l) => l.containerId === st.containerId)) {
      out.push(`${vd(st.vdiskId)} segment ${st.seg} has a stale leg on container ${st.containerId} offset ${st.offset}, a container the segment still uses`);
    }
  }
  return out;
}

/**
 * What `tabula check` reports without failing: segments of mirrored vdisks
 * with fewer legs than copies (degraded: rebuilt or resynced by the
 * controller), one line per vdisk with the segments as ranges.
 */
export function checkWarnings(db: ControllerDb): string[] {
  const out: string[] = [];
  const bySegs = new Map<string, { copies: number; segs: number[] }>();
  for (const r of db.legShortfalls('degraded')) {
    let d = bySegs.get(r.vdiskId);
    if (d === undefined) bySegs.set(r.vdiskId, (d = { copies: r.copies, segs: [] }));
    d.segs.push(r.seg);
  }
  for (const [id, { copies, segs }] of bySegs) {
    const name = db.vdisk(id)?.name ?? id;
    out.push(`vdisk ${name}: ${segs.length} segment${segs.length === 1 ? ' is' : 's are'} degraded (fewer legs than its ${copies} copies): ${ranges(segs)}`);
  }
  return out;
}

/** Sorted segment numbers as `0-3, 7, 9-12` (at most 20 ranges, then how many more). */
function ranges(segs: readonly number[]): string {
  const parts: string[] = [];
  let i = 0;
  while (i < segs.length) {
    let j = i;
    while (j + 1 < segs.length && segs[j + 1] === (segs[j] as number) + 1) j++;
    parts.push(i === j ? `${segs[i]}` : `${segs[i]}-${segs[j]}`);
    i = j + 1;
  }
  return parts.length <= 20 ? parts.join(', ') : `${parts.slice(0, 20).join(', ')} and ${parts.length - 20} more ranges`;
}
