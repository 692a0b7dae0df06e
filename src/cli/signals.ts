// Run a daemon until SIGINT/SIGTERM, then shut down cleanly (bounded in time).
import { log } from '../util/log.js';

export function runUntilSignal(shutdown: (signal: string) => Promise<void>, graceMs = 10_000): Promise<void> {
  return new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      const timer = setTimeout(() => {
        log.error('shutdown took too long: exiting', { graceMs });
        process.exit(1);
      }, graceMs);
      timer.unref();
      shutdown(signal)
        .catch((e: unknown) => log.error('error during shutdown', { err: (e as Error).message }))
        .finally(() => {
          clearTimeout(timer);
          resolve();
        });
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
}
