// Where the effective configuration comes from, weakest first: built-in
// defaults, a command's own defaults, the YAML file (/etc/tabula/tabula.yaml,
// or --config / --file / TABULA_CONFIG), TABULA_* environment variables, then
// flags (dotted keys such as `agent.portals`). Later layers replace whole
// values, lists included.
import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { createRequire } from 'node:module';
import { ConfigError, validateConfig, type Role, type TabulaConfig } from './schema.js';

// Loaded on first use (synchronously: loading a config is synchronous): the
// YAML parser is a good share of what every `tabula` command would load at start.
const requireCjs = createRequire(import.meta.url);
let yamlModule: typeof import('yaml') | undefined;
function yaml(): typeof import('yaml') {
  yamlModule ??= requireCjs('yaml') as typeof import('yaml');
  return yamlModule;
}

export const DEFAULT_CONFIG_FILE = '/etc/tabula/tabula.yaml';

/** Environment variable → dotted key. Lists are comma-separated. */
export const ENV_KEYS: Readonly<Record<string, { key: string; list?: boolean }>> = {
  TABULA_ROLE: { key: 'role' },
  TABULA_DATA: { key: 'data-dir' },
  TABULA_LOG_LEVEL: { key: 'log-level' },
  TABULA_CONTROLLER: { key: 'controller.address' },
  TABULA_CONTROLLER_LISTEN: { key: 'controller.listen' },
  TABULA_AGENT_NAME: { key: 'agent.name' },
  TABULA_PORTAL: { key: 'agent.portals', list: true },
  TABULA_CONTAINERS: { key: 'agent.containers', list: true },
  TABULA_TOKEN: { key: 'security.token' },
  TABULA_TOKEN_FILE: { key: 'security.token-file' },
};

/** Keys that stand for the same setting: giving one drops the other from weaker layers. */
const EXCLUSIVE: Readonly<Record<string, string>> = {
  'security.token': 'security.token-file',
  'security.token-file': 'security.token',
};

export interface LoadOptions {
  /** The YAML file; default env TABULA_CONFIG, then /etc/tabula/tabula.yaml. */
  file?: string;
  /** A missing file is an error (default: only when `file` was given explicitly). */
  requireFile?: boolean;
  /** Read no file unless `file` or TABULA_CONFIG names one (the CLI daemons; the systemd service reads the default file). */
  noDefaultFile?: boolean;
  /**
   * The daemon this configuration is for: the document's role becomes it, and
   * a file or environment that names another role is an error.
   */
  role?: Role;
  /** The command's own defaults by dotted key, under the file (only for keys the file does not set). */
  defaults?: Readonly<Record<string, unknown>>;
  /** Environment to read TABULA_* from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Flag values by dotted key (e.g. {'agent.portals': ['0.0.0.0:3260']}); undefined values are skipped. */
  overrides?: Readonly<Record<string, unknown>>;
  hostname?: string;
}

export interface LoadedConfig {
  config: TabulaConfig;
  /** The file read, or null when none existed (or none was asked for). */
  file: string | null;
  /** Dotted keys set by the environment and by flags, for `config check`. */
  fromEnv: string[];
  fromFlags: string[];
}

/** Parses YAML text; syntax errors name the file, line and column. */
export function parseConfigText(text: string, source: string): unknown {
  const doc = yaml().parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => {
        const before = text.slice(0, e.pos[0]);
        const line = before.split('\n').length;
        const col = e.pos[0] - before.lastIndexOf('\n');
        return `line ${line} column ${col}: ${e.message.split('\n')[0]}`;
      }),
    );
  }
  return doc.toJS() as unknown;
}

/** Sets a dotted key in a nested plain object, creating mappings on the way. */
export function setDotted(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let o = target;
  for (const p of parts.slice(0, -1)) {
    const next = o[p];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) o[p] = {};
    o = o[p] as Record<string, unknown>;
  }
  const last = parts[parts.length - 1]!;
  o[last] = value;
  const other = EXCLUSIVE[dotted];
  if (other) {
    const [section, key] = other.split('.') as [string, string];
    const s = target[section];
    if (typeof s === 'object' && s !== null) delete (s as Record<string, unknown>)[key];
  }
}

export function configFilePath(opts: Pick<LoadOptions, 'file' | 'env'> = {}): string {
  return opts.file ?? (opts.env ?? process.env).TABULA_CONFIG ?? DEFAULT_CONFIG_FILE;
}

function getDotted(target: Record<string, unknown>, dotted: string): unknown {
  let o: unknown = target;
  for (const p of dotted.split('.')) {
    if (typeof o !== 'object' || o === null || Array.isArray(o)) return undefined;
    o = (o as Record<string, unknown>)[p];
  }
  return o;
}

export function loadConfig(opts: LoadOptions = {}): LoadedConfig {
  const env = opts.env ?? process.env;
  const path = configFilePath({ file: opts.file, env });
  const explicit = opts.requireFile ?? (opts.file !== undefined || env.TABULA_CONFIG !== undefined);
  const skipFile = opts.noDefaultFile === true && opts.file === undefined && env.TABULA_CONFIG === undefined;
  let raw: unknown = {};
  let file: string | null = null;
  if (skipFile) {
    // no file: defaults, environment and flags only
  } else if (existsSync(path)) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError(path, [`cannot read: ${(e as Error).message}`]);
    }
    raw = parseConfigText(text, path) ?? {};
    file = path;
  } else if (explicit) {
    throw new ConfigError(path, ['no such file']);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    // validateConfig names the problem; layers cannot be merged into a non-mapping.
    return { config: validateConfig(raw, path, { hostname: opts.hostname ?? hostname() }), file, fromEnv: [], fromFlags: [] };
  }
  const doc = raw as Record<string, unknown>;
  for (const [key, v] of Object.entries(opts.defaults ?? {})) {
    if (v !== undefined && getDotted(doc, key) === undefined) setDotted(doc, key, v);
  }
  const fromEnv: string[] = [];
  for (const [name, { key, list }] of Object.entries(ENV_KEYS)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    setDotted(doc, key, list ? v.split(',').map((x) => x.trim()).filter((x) => x !== '') : v);
    fromEnv.push(key);
  }
  const fromFlags: string[] = [];
  for (const [key, v] of Object.entries(opts.overrides ?? {})) {
    if (v === undefined) continue;
    setDotted(doc, key, v);
    fromFlags.push(key);
  }
  const layers = fromEnv.length + fromFlags.length > 0 ? ', environment and flags' : '';
  const source = file ?? (skipFile ? `flags${layers ? ' and environment' : ''} (no configuration file)` : `${path} (absent; defaults${layers})`);
  if (opts.role !== undefined) {
    const said = doc.role;
    if (said !== undefined && said !== null && said !== opts.role) {
      const where = fromEnv.includes('role') ? 'TABULA_ROLE' : (file ?? source);
      throw new ConfigError(where, [`role: the configuration says '${String(said)}', but this starts the ${opts.role} daemon`]);
    }
    doc.role = opts.role;
  }
  return { config: validateConfig(doc, source, { hostname: opts.hostname ?? hostname() }), file, fromEnv, fromFlags };
}

/** `KEY=VALUE` from `--set`, the value read as YAML (so `[a, b]`, numbers and quotes work). */
export function parseSetting(text: string): [string, unknown] {
  const i = text.indexOf('=');
  if (i <= 0) throw new ConfigError('--set', [`'${text}': expected KEY=VALUE, e.g. agent.portals=[0.0.0.0:3260]`]);
  const key = text.slice(0, i).trim();
  if (!/^[a-z-]+(\.[a-z-]+)*$/.test(key)) throw new ConfigError('--set', [`'${key}': expected a dotted key such as controller.listen`]);
  return [key, parseConfigText(text.slice(i + 1), `--set ${key}`)];
}
