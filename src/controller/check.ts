// `tabula check`: verifies the invariants (docs/architecture.md,
// "What `tabula check` verifies") that the
// database can show, from the database alone, and names every violation.
// (The "no stale data" and "acknowledged writes never lost" invariants are
// properties of the agents' I/O paths; what the DB can show of them is
// that every table entry is well formed and points at allocated space.)

import { SEGMENT_STATE_NAMES, SegmentState } from '../table/index.js';
import type { ControllerDb } from './db.js';

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
