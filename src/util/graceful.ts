// Work a daemon finishes before it stops: whatever serves clients (an iSCSI
// portal) registers a drain while it listens; the SIGTERM/SIGINT handler
// runs every registered drain, all at once, before the shutdown proper. Each
// drain bounds its own time.

export type Drain = () => Promise<void>;

/**
 * The longest a registered drain may take (an iSCSI portal: 10 s for
 * commands in flight and logouts, plus slack); a stopping daemon allows
 * this on top of its shutdown grace.
 */
export const DRAIN_BOUND_MS = 12_000;

const drains = new Set<Drain>();

/** Adds a drain; the function returned removes it (call it on close). */
export function registerDrain(fn: Drain): () => void {
  drains.add(fn);
  return () => {
    drains.delete(fn);
  };
}

/** How many drains are registered (diagnostics and tests). */
export function drainCount(): number {
  return drains.size;
}

/** Runs every registered drain concurrently; a failing one does not stop the others. */
export async function drainAll(onError: (err: unknown) => void = () => undefined): Promise<void> {
  const results = await Promise.allSettled([...drains].map((fn) => fn()));
  for (const r of results) if (r.status === 'rejected') onError(r.reason);
}
