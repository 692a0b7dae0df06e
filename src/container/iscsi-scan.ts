// What an agent does with an `iscsi://` locator among its `--containers`
// (and `container add` with one): log in, find the LUNs the locator names,
// open each one that carries a container label. Like scanContainers for
// paths, it never throws for a target or LUN that fails: each becomes a
// ScanProblem ('unreachable' when the portal or target cannot be reached or
// refuses the login), so one storage node down does not hide the others.
//
// LUNs of one target share one session (one transport): each driver holds a
// reference, and the session ends with the last driver closed.
import { TransportError, type ScsiTransport } from '../iscsi/initiator/transport.js';
import { ContainerIoError } from './driver.js';
import type { DiscoveredTarget, IscsiClientOptions, IscsiConnector, Portal } from './iscsi-client.js';
import { resolveClientOptions } from './iscsi-client.js';
import { IscsiContainerDriver, iscsiPath, readLunLabel } from './iscsi-driver.js';
// Imported statically: a module loaded twice (once by import(), once not)
// would have two TransportError classes, and instanceof would miss.
import { initiatorConnector } from './iscsi-initiator.js';
import { LocatorError, formatIscsiLocator, lunLocator, parseIscsiLocator, redactLocator, type IscsiLocator } from './iscsi-locator.js';
import { IscsiLun } from './iscsi-lun.js';
import { LabelError } from './label.js';
import type { FoundContainer, ScanProblem } from './scan.js';

export interface IscsiScanOptions extends IscsiClientOptions {
  /** The initiator to use (default: src/iscsi/initiator's ReconnectingSession). */
  connector?: IscsiConnector;
  readOnly?: boolean;
}

export interface IscsiScanResult {
  found: IscsiContainerDriver[];
  problems: ScanProblem[];
}


/** One session shared by the LUN drivers of a target: closed when the last holder closes. */
class SharedTransport {
  #refs = 0;

  constructor(readonly inner: ScsiTransport) {}

  handle(): ScsiTransport {
    this.#refs++;
    let closed = false;
    const inner = this.inner;
    return {
      execute: (req) => inner.execute(req),
      get state() {
        return inner.state;
      },
      close: async () => {
        if (closed) return;
        closed = true;
        if (--this.#refs === 0) await inner.close();
      },
    };
  }
}

function problemOf(path: string, e: unknown): ScanProblem {
  if (e instanceof LabelError) return { path, kind: e.kind, message: e.message };
  if (e instanceof TransportError) return { path, kind: 'unreachable', message: `${path}: ${e.kind}: ${e.message}` };
  if (e instanceof ContainerIoError) return { path, kind: e.code === 'EUNREACHABLE' ? 'unreachable' : 'unreadable', message: e.message };
  return { path, kind: 'unreadable', message: `${path}: ${(e as Error).message}` };
}

/**
 * Opens every labelled LUN `locator` names: the LUN itself (LUN form), every
 * LUN of its target (REPORT LUNS), or every LUN of every target behind the
 * portal (SendTargets, then REPORT LUNS). Unlabelled LUNs are closed and
 * reported as 'unlabelled'; LUNs that are no block device are skipped; a
 * container id met twice is reported as 'duplicate' and the second LUN closed.
 */
export async function scanIscsiLocator(locator: string, opts: IscsiScanOptions = {}): Promise<IscsiScanResult> {
  const shown = redactLocator(locator);
  let loc: IscsiLocator;
  try {
    loc = parseIscsiLocator(locator);
  } catch (e) {
    return { found: [], problems: [{ path: shown, kind: 'unreadable', message: (e as LocatorError).message }] };
  }
  const connector = opts.connector ?? initiatorConnector;
  const client = resolveClientOptions(opts);
  const portal: Portal = { host: loc.host, port: loc.port };
  const out: IscsiScanResult = { found: [], problems: [] };

  let targets: string[];
  if (loc.target !== undefined) {
    targets = [loc.target];
  } else {
    let discovered: DiscoveredTarget[];
    try {
      discovered = await connector.discover(portal, loc.chap, client);
    } catch (e) {
      out.problems.push(problemOf(shown, e));
      return out;
    }
    targets = discovered.map((t) => t.name);
    if (targets.length === 0) out.problems.push({ path: shown, kind: 'no-match', message: `${shown}: the portal reports no targets` });
  }

  const byId = new Map<string, IscsiContainerDriver>();
  for (const target of targets) {
    const targetLoc: IscsiLocator = { ...portal, target, ...(loc.chap ? { chap: loc.chap } : {}) };
    const targetPath = formatIscsiLocator(targetLoc, { redact: true });
    // A LUN named alone is reported by its own locator, as the admin wrote it.
    const failPath = loc.lun === undefined ? targetPath : iscsiPath(lunLocator(loc, target, loc.lun));
    let shared: SharedTransport;
    try {
      shared = new SharedTransport(await connector.connect(portal, target, loc.chap, client));
    } catch (e) {
      out.problems.push(problemOf(failPath, e));
      continue;
    }
    const mine = shared.handle();
    try {
      let luns: number[];
      if (loc.lun !== undefined) {
        luns = [loc.lun];
      } else {
        try {
          luns = await IscsiLun.reportLuns(mine, targetPath, client);
        } catch (e) {
          out.problems.push(problemOf(targetPath, e));
          continue;
        }
        if (luns.length === 0) out.problems.push({ path: targetPath, kind: 'no-match', message: `${targetPath}: the target reports no LUNs` });
      }
      for (const n of luns) {
        const lunLoc = lunLocator(loc, target, n);
        const path = iscsiPath(lunLoc);
        let d: IscsiContainerDriver;
        try {
          d = await IscsiContainerDriver.open(shared.handle(), lunLoc, { ...client, readOnly: opts.readOnly, ownsTransport: true });
        } catch (e) {
          // A LUN that is no disk (tgtd's controller at LUN 0) is no candidate, unless named alone.
          if (loc.lun === undefined && e instanceof ContainerIoError && e.code === 'ENODEV') continue;
          out.problems.push(problemOf(path, e));
          continue;
        }
        const first = byId.get(d.id);
        if (first !== undefined) {
          out.problems.push({ path, kind: 'duplicate', message: `${path}: container id ${d.id} is also at ${first.path}; ignoring this LUN` });
          await d.close().catch(() => undefined);
          continue;
        }
        byId.set(d.id, d);
        out.found.push(d);
      }
    } finally {
      await mine.close().catch(() => undefined);
    }
  }
  return out;
}

/** Logs in to the one LUN a LUN-form locator names and probes it (for `container init`); the caller closes the transport. */
export async function connectLun(locator: IscsiLocator, opts: IscsiScanOptions = {}): Promise<IscsiLun> {
  if (locator.target === undefined || locator.lun === undefined) {
    throw new LocatorError(formatIscsiLocator(locator, { redact: true }), 'name one LUN: iscsi://HOST:PORT/IQN/LUN');
  }
  const connector = opts.connector ?? initiatorConnector;
  const client = resolveClientOptions(opts);
  const transport = await connector.connect({ host: locator.host, port: locator.port }, locator.target, locator.chap, client);
  try {
    return await IscsiLun.probe(transport, locator.lun, iscsiPath(locator), client);
  } catch (e) {
    await transport.close().catch(() => undefined);
    throw e;
  }
}

/** The label of the one LUN a locator names, read through the initiator (`container add`); `path` without the secret. */
export async function readIscsiLabel(locator: string, opts: IscsiScanOptions = {}): Promise<FoundContainer> {
  const lun = await connectLun(parseIscsiLocator(locator), opts);
  try {
    const label = await readLunLabel(lun);
    return { id: label.id, path: lun.path, size: label.size, dataOffset: label.dataOffset, segmentSize: label.segmentSize, medium: 'iscsi', label };
  } finally {
    await lun.transport.close().catch(() => undefined);
  }
}
