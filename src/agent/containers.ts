// The containers this agent reaches: its `--containers` locators scanned
// (globs of files and block devices, and iscsi:// URLs of network LUNs),
// each labelled container opened once and kept open. Scanned again before
// every Register, on the controller's Rescan (a container was added), on
// SIGHUP and periodically, so a disk or LUN added while the agent runs is
// reported without a restart; containers already open stay open (tables
// point into them).
//
// Each open container is reachable or not: one a rescan no longer finds, or
// whose iSCSI session is down, is reported unreachable (with why) and kept,
// never dropped while tables may point into it. The controller says which
// containers are shared, reached from more than one host (ContainerSet): a
// shared file or block device is reopened with O_DIRECT, since a page cache
// on this host could serve data another host has overwritten. It also says
// which are near (in this agent's own failure domain): reads of a mirrored
// segment go to a near, reachable leg first (near(), reachable()).
import { MapResolver, type ContainerDriver, type ContainerResolver } from '../container/driver.js';
import { openContainer, type FileDriverOptions } from '../container/file-driver.js';
import { IscsiContainerDriver } from '../container/iscsi-driver.js';
import { parseIscsiLocator } from '../container/iscsi-locator.js';
import { scanIscsiLocator, type IscsiScanOptions } from '../container/iscsi-scan.js';
import { scanContainers, type ScanProblem } from '../container/scan.js';
import type { ContainerRef, ContainerShare } from '../wire/proto-types.js';
import { log } from '../util/log.js';

/** What `scanIscsiLocator` (src/container/iscsi-scan.ts) returns: the labelled LUNs behind a locator, opened. */
export interface IscsiScanResult {
  found: ContainerDriver[];
  problems: ScanProblem[];
}

/** Scans one iscsi:// locator (a LUN, a target's LUNs, or every target behind a portal). */
export type IscsiScanner = (locator: string, opts: IscsiScanOptions) => Promise<IscsiScanResult>;

export interface AgentContainersOptions {
  /** Initiator settings for iscsi:// locators (agent.iscsi), passed to the scanner as they are. */
  iscsi?: IscsiScanOptions;
  /** Default: scanIscsiLocator of src/container/iscsi-scan.ts. */
  scanIscsi?: IscsiScanner;
  /** Opens a file or block container (default openContainer); tests count reopenings here. */
  open?: (path: string, opts: FileDriverOptions) => Promise<ContainerDriver>;
}

/** A locator naming network LUNs rather than paths. */
export function isIscsiLocator(locator: string): boolean {
  return /^iscsi:\/\//i.test(locator);
}

/** File and block devices go through a page cache; iSCSI LUNs do not. */
const CACHED_KINDS: ReadonlySet<string> = new Set(['file', 'block']);

/** A driver replaced by its O_DIRECT reopening is closed this long after: I/O started on it has long finished. */
const RETIRE_MS = 30_000;
/** How long close() waits for a scan in progress. */
const CLOSE_SCAN_WAIT_MS = 2000;

interface OpenContainer {
  driver: ContainerDriver;
  /** The locator that found it (an iscsi:// URL), or null for the globs. */
  locator: string | null;
  /** Why the last scan could not see it; null when it did. */
  missing: string | null;
  /** Opened with O_DIRECT. */
  direct: boolean;
}

export class AgentContainers implements ContainerResolver {
  readonly #locators: readonly string[];
  readonly #opts: AgentContainersOptions;
  readonly #resolver = new MapResolver();
  readonly #open = new Map<string, OpenContainer>();
  /** Problems already logged, so a rescan does not repeat them every reconnect. */
  readonly #reported = new Set<string>();
  /** Containers the controller says are shared (ContainerSet). */
  #shared = new Set<string>();
  /** Containers the controller says are in this agent's failure domain (ContainerSet). */
  #near: ReadonlySet<string> = new Set<string>();
  /** Scans run one at a time: Register, Rescan, SIGHUP and the timer may ask together. */
  #scanning: Promise<unknown> = Promise.resolve();
  /** Drivers replaced by a reopening, closed later (or at close). */
  readonly #retired = new Set<ContainerDriver>();
  #closed = false;

  constructor(locators: readonly string[], opts: AgentContainersOptions = {}) {
    this.#locators = locators;
    this.#opts = opts;
  }

  get(id: string): ContainerDriver | undefined {
    return this.#resolver.get(id);
  }

  /** Scans the locators, opens containers not yet open; returns every open container as Register reports it. */
  refresh(): Promise<ContainerRef[]> {
    const run = this.#scanning.then(() => this.#scan());
    this.#scanning = run.catch(() => undefined);
    return run;
  }

  async #scan(): Promise<ContainerRef[]> {
    if (this.#closed) return this.refs();
    const globs = this.#locators.filter((l) => !isIscsiLocator(l));
    const urls = this.#locators.filter(isIscsiLocator);
    const seen = new Map<string, string | null>();
    /** iscsi locators that could not be scanned at all, with why. */
    const failed = new Map<string, string>();

    if (globs.length > 0) {
      const { found, problems } = await scanContainers(globs);
      this.#logProblems(problems);
      for (const c of found) {
        seen.set(c.id, null);
        if (this.#open.has(c.id)) continue;
        try {
          const d = await this.#openFile(c.path, this.#shared.has(c.id));
          if (d.id !== c.id) {
            // Relabelled between the scan and the open: report what is there now.
            await d.close();
            seen.delete(c.id);
            log.warn('container changed while scanning; will look again', { path: c.path, was: c.id, now: d.id });
            continue;
          }
          this.#add(d, null, this.#shared.has(c.id));
        } catch (err) {
          seen.delete(c.id);
          log.warn('cannot open container', { path: c.path, id: c.id, err: (err as Error).message });
        }
      }
    }

    for (const url of urls) {
      // One LUN already open: its session says whether it is there; logging
      // in again every rescan would only churn sessions. Portal and target
      // forms are scanned every time, since new LUNs may be behind them.
      const open = [...this.#open.values()].find((c) => c.locator === url);
      if (open !== undefined && lunForm(url)) {
        seen.set(open.driver.id, url);
        continue;
      }
      let result: IscsiScanResult;
      try {
        result = await (this.#opts.scanIscsi ?? scanIscsiLocator)(url, this.#opts.iscsi ?? {});
      } catch (err) {
        const why = (err as Error).message;
        failed.set(url, why);
        this.#logProblems([{ path: url, kind: 'unreachable', message: why }]);
        continue;
      }
      if (this.#closed) {
        // Closed while this scan waited on a node: nothing may stay open behind close().
        await Promise.all(result.found.map((d) => d.close().catch(() => undefined)));
        return [];
      }
      this.#logProblems(result.problems);
      const down = result.problems.find((p) => p.kind === 'unreachable');
      if (down !== undefined) failed.set(url, down.message);
      for (const d of result.found) {
        seen.set(d.id, url);
        // Open already (this scan found it again, or another locator did): keep the one tables use.
        if (this.#open.has(d.id)) {
          await d.close().catch(() => undefined);
          continue;
        }
        this.#add(d, url, false);
      }
    }

    for (const [id, c] of this.#open) {
      if (seen.has(id)) {
        if (c.missing !== null) log.info('container found again', { id, path: c.driver.path });
        c.missing = null;
        continue;
      }
      // A network LUN whose portal could not be scanned: its own session
      // says whether it is reachable (and says so again when the node is
      // back, with no rescan needed).
      if (c.locator !== null && failed.has(c.locator) && transportState(c.driver) !== undefined) {
        c.missing = null;
        continue;
      }
      const why = c.locator !== null && failed.has(c.locator) ? (failed.get(c.locator) as string) : `not found by the last scan (was at ${c.driver.path})`;
      if (c.missing === null) log.warn('container unreachable: kept open, reported to the controller', { id, path: c.driver.path, why });
      c.missing = why;
    }
    return this.refs();
  }

  #logProblems(problems: readonly ScanProblem[]): void {
    for (const p of problems) {
      const key = `${p.kind}|${p.path}`;
      if (this.#reported.has(key)) continue;
      this.#reported.add(key);
      log.warn('container scan', { path: p.path, kind: p.kind, problem: p.message });
    }
  }

  #openFile(path: string, direct: boolean): Promise<ContainerDriver> {
    return (this.#opts.open ?? openContainer)(path, direct ? { direct: true } : {});
  }

  #add(d: ContainerDriver, locator: string | null, direct: boolean): void {
    this.#resolver.add(d);
    this.#open.set(d.id, { driver: d, locator, missing: null, direct });
    log.info('container opened', { id: d.id, path: d.path, kind: d.kind, dataBytes: d.dataSize, direct });
  }

  /** Whether a container can do I/O now, and why not. */
  #reach(c: OpenContainer): { reachable: boolean; error: string } {
    if (c.missing !== null) return { reachable: false, error: c.missing };
    // A network container's transport says whether its session is up (ScsiTransport.state).
    const state = transportState(c.driver);
    if (state === 'down' || state === 'closed') return { reachable: false, error: `iSCSI session ${state}` };
    return { reachable: true, error: '' };
  }

  /** Whether the controller put the container in this agent's own failure domain (I/O path: a set lookup). */
  near(id: string): boolean {
    return this.#near.has(id);
  }

  /**
   * Whether a container can do I/O now (I/O path: no allocation). A mirrored
   * read skips legs that cannot, rather than wait out the driver's hold; so
   * a network LUN counts only while its session is up (not while it
   * reconnects, which refs() does not yet report as unreachable).
   */
  reachable(id: string): boolean {
    const c = this.#open.get(id);
    if (c === undefined || c.missing !== null) return false;
    const state = transportState(c.driver);
    return state === undefined || state === 'up';
  }

  refs(): ContainerRef[] {
    return [...this.#open.values()].map((c) => {
      const d = c.driver;
      const r = this.#reach(c);
      return { id: d.id, path: d.path, size: d.label.size, dataOffset: d.label.dataOffset, reachable: r.reachable, error: r.error, kind: d.kind };
    });
  }

  /** Whether a container is open with O_DIRECT (diagnostics and tests). */
  direct(id: string): boolean | undefined {
    return this.#open.get(id)?.direct;
  }

  /**
   * The controller's ContainerSet: reopens each shared file or block
   * container with O_DIRECT. The new driver takes new I/O at once; the old
   * one is flushed and closed a while later, when whatever was started on it
   * has finished (an fsync on either reaches the same file). A container no
   * longer shared stays direct: correct either way, and no churn.
   */
  async setShared(set: readonly ContainerShare[]): Promise<void> {
    this.#shared = new Set(set.filter((c) => c.shared).map((c) => c.id));
    // At once, not after the scan below: it only steers reads.
    this.#near = new Set(set.filter((c) => c.near === true).map((c) => c.id));
    const run = this.#scanning.then(async () => {
      for (const id of this.#shared) {
        const c = this.#open.get(id);
        if (c === undefined || c.direct || !CACHED_KINDS.has(c.driver.kind) || this.#closed) continue;
        const old = c.driver;
        let d: ContainerDriver;
        try {
          d = await this.#openFile(old.path, true);
        } catch (err) {
          log.error('shared container: cannot reopen with O_DIRECT; it stays buffered', { id, path: old.path, err: (err as Error).message });
          continue;
        }
        if (d.id !== id || this.#closed) {
          await d.close().catch(() => undefined);
          if (d.id !== id) log.error('shared container: the reopened path holds another container; not switched', { id, path: old.path, now: d.id });
          continue;
        }
        c.driver = d;
        c.direct = true;
        this.#resolver.add(d);
        this.#retire(old);
        // The driver falls back to buffered I/O (with its own warning) where the file system refuses O_DIRECT.
        const really = (d as { direct?: unknown }).direct !== false;
        log.info('shared container reopened with O_DIRECT (other hosts reach it)', { id, path: d.path, kind: d.kind, direct: really });
      }
    });
    this.#scanning = run.catch(() => undefined);
    await run;
  }

  #retire(d: ContainerDriver): void {
    this.#retired.add(d);
    const t = setTimeout(() => {
      if (!this.#retired.delete(d)) return;
      void closeFlushed(d);
    }, RETIRE_MS);
    t.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    // A scan stuck on a storage node that does not answer must not hold the
    // agent's stop; what it opens after this is closed as it returns.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.#scanning, new Promise<void>((r) => (timer = setTimeout(r, CLOSE_SCAN_WAIT_MS)))]);
    clearTimeout(timer);
    const all = [...this.#open.values()].map((c) => c.driver);
    for (const d of all) this.#resolver.delete(d.id);
    this.#open.clear();
    const retired = [...this.#retired];
    this.#retired.clear();
    // Flushed first: a stopping agent leaves every acknowledged write durable, FUA or not.
    await Promise.all([...all, ...retired].map(closeFlushed));
  }
}

/** A locator naming one LUN (iscsi://HOST:PORT/IQN/LUN). */
function lunForm(url: string): boolean {
  try {
    return parseIscsiLocator(url).lun !== undefined;
  } catch {
    return false;
  }
}

/** The iSCSI session state of a network LUN's driver (a test's stand-in may carry `state` itself); undefined for the rest. */
function transportState(d: ContainerDriver): string | undefined {
  if (d instanceof IscsiContainerDriver) return d.lun.transport.state;
  const own = (d as { state?: unknown }).state;
  return typeof own === 'string' ? own : undefined;
}

async function closeFlushed(d: ContainerDriver): Promise<void> {
  await d.flush().catch((err: unknown) => log.warn('flushing container before closing it', { id: d.id, err: (err as Error).message }));
  await d.close().catch((err: unknown) => log.warn('closing container', { id: d.id, err: (err as Error).message }));
}
