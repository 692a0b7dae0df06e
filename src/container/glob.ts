// A small glob expander for the agent's `--containers GLOB...` (Node 20 has no
// fs.glob). Supports `*`, `?`, `[abc]`/`[!abc]`/`[a-z]` within one path
// component, `**` for any number of directories, and `{a,b}` alternatives.
// As in a shell, wildcards do not match a leading dot. Symlinked directories
// are not followed by `**` (no loops); symlinks to files and devices
// (/dev/disk/by-id/...) are returned like any entry.
import { promises as fsp } from 'node:fs';
import { isAbsolute, join, resolve, sep } from 'node:path';

const MAGIC_RE = /[*?[]/;

/** True when the pattern has wildcards or alternatives (else it names one path). */
export function hasMagic(pattern: string): boolean {
  return MAGIC_RE.test(pattern) || expandBraces(pattern).length > 1;
}

/** `a{b,c}d` -> [`abd`, `acd`]; nested braces expand too. Unbalanced braces are literal. */
export function expandBraces(pattern: string): string[] {
  let depth = 0;
  let open = -1;
  const commas: number[] = [];
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') {
      i++;
    } else if (c === '{') {
      if (depth++ === 0) open = i;
    } else if (c === '}' && depth > 0) {
      if (--depth === 0) {
        if (commas.length === 0) {
          // `{x}` is not an alternative; keep it literal and look further on.
          open = -1;
          continue;
        }
        const head = pattern.slice(0, open);
        const tail = pattern.slice(i + 1);
        const bounds = [open, ...commas, i];
        const out: string[] = [];
        for (let k = 0; k + 1 < bounds.length; k++) {
          const alt = pattern.slice((bounds[k] as number) + 1, bounds[k + 1]);
          out.push(...expandBraces(head + alt + tail));
        }
        return out;
      }
    } else if (c === ',' && depth === 1) {
      commas.push(i);
    }
  }
  return [pattern];
}

/** A regular expression for one path component. */
export function componentRegExp(component: string): RegExp {
  let re = '';
  for (let i = 0; i < component.length; i++) {
    const c = component[i] as string;
    if (c === '\\' && i + 1 < component.length) {
      re += escape(component[++i] as string);
    } else if (c === '*') {
      re += '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const close = component.indexOf(']', i + 2);
      if (close < 0) {
        re += '\\[';
        continue;
      }
      let body = component.slice(i + 1, close);
      const negate = body[0] === '!' || body[0] === '^';
      if (negate) body = body.slice(1);
      re += `[${negate ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
      i = close;
    } else {
      re += escape(c);
    }
  }
  return new RegExp(`^${re}$`);
}

function escape(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** Absolute paths of existing entries matching `pattern` (relative patterns resolve against `cwd`), sorted. */
export async function expandGlob(pattern: string, cwd: string = process.cwd()): Promise<string[]> {
  const out = new Set<string>();
  for (const p of expandBraces(pattern)) {
    const abs = isAbsolute(p) ? p : join(cwd, p);
    const parts = abs.split(sep).filter((x) => x !== '');
    await walk(sep, parts, 0, out);
  }
  return [...out].sort();
}

async function walk(dir: string, parts: string[], i: number, out: Set<string>): Promise<void> {
  if (i === parts.length) {
    if (await exists(dir)) out.add(resolve(dir));
    return;
  }
  const part = parts[i] as string;
  if (part === '**') {
    await walk(dir, parts, i + 1, out); // zero directories
    for (const e of await entries(dir)) {
      if (e.isDirectory && !e.name.startsWith('.')) await walk(join(dir, e.name), parts, i, out);
    }
    return;
  }
  if (!MAGIC_RE.test(part)) {
    await walk(join(dir, part.replace(/\\(.)/g, '$1')), parts, i + 1, out);
    return;
  }
  const re = componentRegExp(part);
  const dotOk = part.startsWith('.');
  for (const e of await entries(dir)) {
    if (!dotOk && e.name.startsWith('.')) continue;
    if (re.test(e.name)) await walk(join(dir, e.name), parts, i + 1, out);
  }
}

interface Entry {
  name: string;
  /** A real directory (not a symlink to one). */
  isDirectory: boolean;
}

async function entries(dir: string): Promise<Entry[]> {
  try {
    const list = await fsp.readdir(dir, { withFileTypes: true });
    return list.map((d) => ({ name: d.name, isDirectory: d.isDirectory() })).sort((a, b) => (a.name < b.name ? -1 : 1));
  } catch {
    return []; // unreadable or not a directory: nothing matches below it
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await fsp.lstat(path);
    return true;
  } catch {
    return false;
  }
}
