// What an agent does with its `--containers GLOB...`: expand the globs, read
// each match's label, and report which container ids it reaches. Never
// throws for a bad path: each one becomes a problem the agent logs (and the
// controller can show), so one broken disk does not stop the others.
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { ContainerIoError } from './driver.js';
import { call, callVoid, errnoName, readFully, sizeOf, type FileMedium } from '../blockdev/file-io.js';
import { expandGlob, hasMagic } from './glob.js';
import { LABEL_SIZE, LabelError, decodeLabel, type ContainerLabel, type LabelErrorKind } from './label.js';

export interface FoundContainer {
  id: string;
  /** Path as matched (symlinks not resolved, so /dev/disk/by-id names stay readable); an iSCSI locator without its secret. */
  path: string;
  size: number;
  dataOffset: number;
  segmentSize: number;
  medium: FileMedium | 'iscsi';
  label: ContainerLabel;
}

/**
 * - `no-match`: a pattern matched nothing (path is the pattern);
 * - `unreadable`: cannot be opened or read, or is not a file or block device;
 * - `duplicate`: a second path with a container id already found elsewhere (a copied image?);
 * - `unreachable`: a network locator whose portal or target did not answer (or refused the login);
 * - label kinds: `unlabelled`, `truncated` (label cut short, or the label's
 *   size exceeds the file or device), `corrupt`, `unsupported-version`, `invalid`.
 */
export type ScanProblemKind = 'no-match' | 'unreadable' | 'duplicate' | 'unreachable' | LabelErrorKind;

export interface ScanProblem {
  path: string;
  kind: ScanProblemKind;
  message: string;
}

export interface ScanResult {
  found: FoundContainer[];
  problems: ScanProblem[];
}

export interface ScanOptions {
  /** Directory relative patterns resolve against (default: the process's). */
  cwd?: string;
}

/** Reads and checks one path's label; throws LabelError or ContainerIoError. (readIscsiLabel for a LUN.) */
export async function readContainerLabel(path: string): Promise<FoundContainer> {
  let fd: number;
  try {
    fd = await call<number>((cb) => fs.open(path, fs.constants.O_RDONLY, cb));
  } catch (e) {
    throw new ContainerIoError('open', path, -1, errnoName(e), (e as Error).message);
  }
  try {
    let medium: FileMedium;
    let size: number;
    try {
      ({ medium, size } = await sizeOf(fd, path));
    } catch (e) {
      throw new ContainerIoError('open', path, -1, 'EINVAL', (e as Error).message.replace(`${path}: `, ''));
    }
    const block = Buffer.alloc(Math.min(size, LABEL_SIZE));
    try {
      await readFully(fd, block, 0, block.length, 0);
    } catch (e) {
      throw new ContainerIoError('read', path, 0, errnoName(e), `reading the label: ${(e as Error).message}`);
    }
    const label = decodeLabel(block, path);
    if (size < label.size) {
      throw new LabelError('truncated', `label says ${label.size} bytes but the ${medium === 'block' ? 'device' : 'file'} has ${size}`, path);
    }
    return { id: label.id, path, size: label.size, dataOffset: label.dataOffset, segmentSize: label.segmentSize, medium, label };
  } finally {
    await callVoid((cb) => fs.close(fd, cb)).catch(() => undefined);
  }
}

export async function scanContainers(patterns: readonly string[], opts: ScanOptions = {}): Promise<ScanResult> {
  const found: FoundContainer[] = [];
  const problems: ScanProblem[] = [];
  const seenReal = new Set<string>();
  const byId = new Map<string, FoundContainer>();
  for (const pattern of patterns) {
    const paths = await expandGlob(pattern, opts.cwd);
    if (paths.length === 0) {
      problems.push({
        path: pattern,
        kind: 'no-match',
        message: hasMagic(pattern) ? `${pattern}: matches nothing` : `${pattern}: does not exist`,
      });
      continue;
    }
    for (const path of paths) {
      // The same file through two patterns or a symlink is one container, seen once.
      const real = await fsp.realpath(path).catch(() => path);
      if (seenReal.has(real)) continue;
      seenReal.add(real);
      try {
        const c = await readContainerLabel(path);
        const first = byId.get(c.id);
        if (first !== undefined) {
          problems.push({
            path,
            kind: 'duplicate',
            message: `${path}: container id ${c.id} is also at ${first.path}; ignoring this copy`,
          });
          continue;
        }
        byId.set(c.id, c);
        found.push(c);
      } catch (e) {
        if (e instanceof LabelError) problems.push({ path, kind: e.kind, message: e.message });
        else problems.push({ path, kind: 'unreadable', message: (e as Error).message });
      }
    }
  }
  return { found, problems };
}
