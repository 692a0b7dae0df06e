// What both daemons' metrics share: a registry of their own (never
// prom-client's global one, so a controller and an agent in one process,
// as `tabula up` runs them, keep apart), the standard process metrics in
// it, and the latency buckets.
import { Registry, collectDefaultMetrics } from 'prom-client';
import { SEGMENT_STATE_NAMES, isSegmentState } from '../table/segment-state.js';

/** Seconds, 100 µs to 10 s: a fault answered from memory up to one held to the hold timeout. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** A fresh registry holding the standard process and Node.js metrics (process_*, nodejs_*). */
export function newRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** A segment state's name as a label value; 'unknown' for numbers off the wire that are no state (bounded label set). */
export function stateLabel(state: number): string {
  return isSegmentState(state) ? (SEGMENT_STATE_NAMES[state] as string) : 'unknown';
}
