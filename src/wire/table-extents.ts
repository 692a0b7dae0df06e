// Table extents as they travel (WireExtent, proto/tabula.proto Extent) and as
// src/table holds them (Extent): the controller encodes with wireExtent, the
// agent and the CLI decode with fromWireExtent. Extra legs of mirrored
// vdisks ride in the optional `legs` message, absent for one copy, so a
// one-copy extent is the same bytes and the same object as before mirrors.
// Decoding only maps; checkExtents / MappingTable.setRange check the entry
// (legs included) where it is applied.
import type { Extent } from '../table/index.js';
import type { WireExtent } from './proto-types.js';

export function wireExtent(e: Extent): WireExtent {
  const w: WireExtent = { first: e.first, count: e.count, state: e.state, container: e.container ?? '', offset: e.offset };
  if (e.owner) w.owner = e.owner;
  if (e.legs !== undefined && e.legs.length > 0) w.legs = { list: e.legs.map((l) => ({ container: l.container, offset: l.offset })) };
  return w;
}

export function fromWireExtent(e: WireExtent): Extent {
  const x: Extent = { first: e.first, count: e.count, state: e.state, container: e.container === '' ? null : e.container, offset: e.offset };
  if (e.owner) x.owner = e.owner;
  const legs = e.legs?.list;
  if (legs !== undefined && legs.length > 0) x.legs = legs.map((l) => ({ container: l.container, offset: l.offset }));
  return x;
}
