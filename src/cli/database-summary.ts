// How `tabula backup` and `tabula restore` describe a database file to people.
import { formatSize } from '../util/size.js';

/** One line for people: what a database file holds. */
export function describeSummary(s: { bytes: number; schemaVersion: number; tables: number; vdisks: number; snapshots: number; containers: number; exports: number; agents: number }): string {
  const n = (k: number, one: string, many = `${one}s`): string => `${k} ${k === 1 ? one : many}`;
  return `${formatSize(s.bytes)}, schema version ${s.schemaVersion}, ${n(s.tables, 'table')}; ${n(s.vdisks, 'vdisk')}, ${n(s.snapshots, 'snapshot')}, ${n(s.containers, 'container')}, ${n(s.exports, 'export')}, ${n(s.agents, 'agent')}`;
}
