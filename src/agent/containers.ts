// The containers this agent reaches: its `--containers` globs scanned, each
// labelled match opened once and kept open. Scanned again before every
// Register so a disk attached while the agent runs is reported on the next
// connection; containers already open stay open (tables point into them).
import { MapResolver, type ContainerDriver, type ContainerResolver } from '../container/driver.js';
import { openContainer } from '../container/file-driver.js';
import { scanContainers } from '../container/scan.js';
import type { ContainerRef } from '../wire/proto-types.js';
import { log } from '../util/log.js';

export class AgentContainers implements ContainerResolver {
  readonly #globs: readonly string[];
  readonly #resolver = new MapResolver();
  /** Problems already logged, so a rescan does not repeat them every reconnect. */
  readonly #reported = new Set<string>();

  constructor(globs: readonly string[]) {
    this.#globs = globs;
  }

  get(id: string): ContainerDriver | undefined {
    return this.#resolver.get(id);
  }

  /** Scans the globs, opens containers not yet open; returns every open container as Register reports it. */
  async refresh(): Promise<ContainerRef[]> {
    const { found, problems } = await scanContainers(this.#globs);
    for (const p of problems) {
      const key = `${p.kind}|${p.path}`;
      if (this.#reported.has(key)) continue;
      this.#reported.add(key);
      log.warn('container scan', { path: p.path, kind: p.kind, problem: p.message });
    }
    for (const c of found) {
      if (this.#resolver.get(c.id) !== undefined) continue;
      try {
        const d = await openContainer(c.path);
        if (d.id !== c.id) {
          // Relabelled between the scan and the open: report what is there now.
          await d.close();
          log.warn('container changed while scanning; will look again', { path: c.path, was: c.id, now: d.id });
          continue;
        }
        this.#resolver.add(d);
        log.info('container opened', { id: d.id, path: d.path, kind: d.kind, dataBytes: d.dataSize });
      } catch (err) {
        log.warn('cannot open container', { path: c.path, id: c.id, err: (err as Error).message });
      }
    }
    return this.refs();
  }

  refs(): ContainerRef[] {
    return [...this.#resolver.values()].map((d) => ({ id: d.id, path: d.path, size: d.label.size, dataOffset: d.label.dataOffset }));
  }

  async close(): Promise<void> {
    const all = [...this.#resolver.values()];
    for (const d of all) this.#resolver.delete(d.id);
    // Flushed first: a stopping agent leaves every acknowledged write durable, FUA or not.
    await Promise.all(
      all.map(async (d) => {
        await d.flush().catch((err: unknown) => log.warn('flushing container before closing it', { id: d.id, err: (err as Error).message }));
        await d.close().catch((err: unknown) => log.warn('closing container', { id: d.id, err: (err as Error).message }));
      }),
    );
  }
}
