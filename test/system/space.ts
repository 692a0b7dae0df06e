// Space accounting as `tabula container ls --json` and `tabula vdisk ls --json`
// report it, for the snapshot, clone and migration tests: the expected
// numbers are counted by the tests from what they wrote, never taken from
// the controller.
import type { ContainerInfo, VdiskInfo } from '../../src/wire/proto-types.js';
import { type Cluster } from './cluster.js';
import { waitFor } from '../support/process.js';

export interface Space {
  /** Summed over containers, in segments. */
  allocated: number;
  shared: number;
  exclusive: number;
  /** Per vdisk name: [shared, exclusive] in segments. */
  vdisks: Record<string, [number, number]>;
}

export async function space(c: Cluster, segmentSize: number): Promise<Space> {
  const [cs, vs] = await Promise.all([c.admin.call('ListContainers', {}), c.admin.call('ListVdisks', {})]);
  const sum = (f: (x: ContainerInfo) => number): number => cs.containers.reduce((n, x) => n + f(x), 0) / segmentSize;
  const vdisks: Record<string, [number, number]> = {};
  for (const v of vs.vdisks as VdiskInfo[]) vdisks[v.name] = [v.sharedBytes / segmentSize, v.exclusiveBytes / segmentSize];
  return { allocated: sum((x) => x.allocatedBytes), shared: sum((x) => x.sharedBytes), exclusive: sum((x) => x.exclusiveBytes), vdisks };
}

/**
 * Waits until the accounting equals `want` (freed segments pass through
 * release and scrubbing before they leave "allocated"), then returns it;
 * the error shows the last state seen.
 */
export async function expectSpace(c: Cluster, segmentSize: number, want: Space, ms = 30_000): Promise<Space> {
  let last: Space | undefined;
  try {
    return await waitFor('space accounting', ms, async () => {
      last = await space(c, segmentSize);
      return JSON.stringify(sorted(last)) === JSON.stringify(sorted(want)) ? last : undefined;
    });
  } catch {
    throw new Error(`space accounting: want ${JSON.stringify(sorted(want))}, have ${JSON.stringify(last && sorted(last))}`);
  }
}

function sorted(s: Space): Space {
  return { ...s, vdisks: Object.fromEntries(Object.entries(s.vdisks).sort(([a], [b]) => a.localeCompare(b))) };
}
