// Run a daemon until SIGINT/SIGTERM, then shut down cleanly (bounded in time).
// SIGHUP, when the daemon can reload, calls `onHup` (one reload at a time;
// a SIGHUP arriving during one runs another afterwards).
import { DRAIN_BOUND_MS, drainAll, drainCount } from '../util/graceful.js';
import { log } from '../util/log.js';

/**
 * The graceful part of a stop, before the daemon's own shutdown: every
 * registered drain (iSCSI portals stop taking logins, let commands in flight
 * finish and ask initiators to log out).
 */
export async function drainBeforeStop(signal: string): Promise<void> {
  const n = drainCount();
  if (n === 0) return;
  log.info('draining before stopping', { signal, drains: n });
  await drainAll((err) => log.error('drain failed', { err: (err as Error).message }));
}

export interface SignalOptions {
  /** Reload on SIGHUP. Without it SIGHUP keeps its default action (the process ends). */
  onHup?: () => void | Promise<void>;
}

export function runUntilSignal(shutdown: (signal: string) => Promise<void>, graceMs = 10_000, opts: SignalOptions = {}): Promise<void> {
  return new Promise<void>((resolve) => {
    let stopping = false;
    let reloading: Promise<void> | null = null;
    let again = false;
    const onHup = (): void => {
      if (stopping || opts.onHup === undefined) return;
      if (reloading) {
        again = true;
        return;
      }
      const hup = opts.onHup;
      reloading = (async () => {
        do {
          again = false;
          try {
            await hup();
          } catch (e) {
            log.error(`SIGHUP: reload failed: ${(e as Error).message}`);
          }
        } while (again && !stopping);
        reloading = null;
      })();
    };
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      process.off('SIGHUP', onHup);
      // Draining bounds its own time (DRAIN_BOUND_MS); the grace comes on top.
      const bound = graceMs + (drainCount() > 0 ? DRAIN_BOUND_MS : 0);
      const timer = setTimeout(() => {
        log.error('shutdown took too long: exiting', { graceMs: bound });
        process.exit(1);
      }, bound);
      timer.unref();
      drainBeforeStop(signal)
        .then(() => shutdown(signal))
        .catch((e: unknown) => log.error('error during shutdown', { err: (e as Error).message }))
        .finally(() => {
          clearTimeout(timer);
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          resolve();
        });
    };
    if (opts.onHup !== undefined) process.on('SIGHUP', onHup);
    // `on`, not `once`: a second SIGTERM during the drain (timeout(1) and
    // service managers signal the child and then its group) must not fall to
    // the default action and kill the process half-way through its stop.
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
