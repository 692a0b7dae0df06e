// The target under test for the Linux end-to-end scenarios, chosen with env
// TABULA_E2E_TARGET: Tabula's `tabula target` (default) or tgtd, the
// reference that proves the harness itself; both started by the interop
// helper (test/support/target-process.ts).
import { startTarget, type RunningTarget, type TargetKind, type TargetOptions } from '../../support/target-process.js';

/** Starts the target under test for one scenario. */
export type E2eTargetStarter = (opts: TargetOptions) => Promise<RunningTarget>;

/** env TABULA_E2E_TARGET: "tabula" (default) or "tgtd". */
export function e2eTargetKind(): TargetKind {
  const v = (process.env.TABULA_E2E_TARGET ?? 'tabula').trim().toLowerCase();
  if (v === '' || v === 'tabula') return 'tabula';
  if (v === 'tgtd' || v === 'tgt') return 'tgtd';
  throw new Error(`TABULA_E2E_TARGET=${v}: expected "tabula" or "tgtd"`);
}

export function e2eTargetStarter(kind: TargetKind = e2eTargetKind()): E2eTargetStarter {
  return (opts) => startTarget({ ...opts, kind });
}
