// Command-line flags as the strongest configuration layer: each daemon flag
// stands for one dotted key of the YAML file, so `--tls-cert F` and
// `security.tls.cert: F` are one setting, validated once. Errors about a
// value that came from a flag name the flag; others name the file's key.
import { isAbsolute, resolve } from 'node:path';
import { ENV_KEYS, loadConfig, type LoadedConfig } from './load.js';
import { ConfigError, type Role } from './schema.js';

export interface FlagSpec {
  /** Option name without dashes, as yargs gives it. */
  flag: string;
  /** Dotted configuration key. */
  key: string;
  /** A file or glob: made absolute against the working directory (the file needs absolute paths). */
  path?: boolean;
  /** The key takes a list (repeatable flag). */
  list?: boolean;
}

function abs(p: string): string {
  // A URL (an iscsi:// container locator) is not a path.
  return isAbsolute(p) || /^[a-z][a-z0-9+.-]*:\/\//i.test(p) ? p : resolve(p);
}

/** Flag values by dotted key (relative paths made absolute); flags not given are left out. */
export function flagOverrides(args: Readonly<Record<string, unknown>>, specs: readonly FlagSpec[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of specs) {
    const v = args[s.flag];
    if (v === undefined || v === null) continue;
    if (s.list) {
      const items = (Array.isArray(v) ? v : [v]).map(String);
      out[s.key] = s.path ? items.map(abs) : items;
    } else {
      const one = Array.isArray(v) ? v[v.length - 1] : v;
      out[s.key] = s.path && typeof one === 'string' ? abs(one) : one;
    }
  }
  return out;
}

/** TABULA_* variables that hold paths, read relative to the working directory as a shell user expects. */
const PATH_ENV: Readonly<Record<string, 'one' | 'list'>> = { TABULA_CONFIG: 'one', TABULA_DATA: 'one', TABULA_TOKEN_FILE: 'one', TABULA_CONTAINERS: 'list' };

/** The environment for a command's configuration: as given, with relative paths made absolute. */
export function commandEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env };
  for (const [name, kind] of Object.entries(PATH_ENV)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    out[name] = kind === 'one' ? abs(v) : v.split(',').map((x) => (x.trim() === '' ? x : abs(x.trim()))).join(',');
  }
  return out;
}

/**
 * One line for a configuration error met by a command: problems with a
 * value from a flag name the flag (`--ack-timeout: expected seconds...`),
 * the others keep their key and the file or layer they came from.
 */
export function describeConfigError(e: ConfigError, specs: readonly FlagSpec[], fromFlags: readonly string[]): string {
  const fromFile: string[] = [];
  const byFlag: string[] = [];
  for (const p of e.problems) {
    const spec = specs.find((s) => fromFlags.includes(s.key) && (p.startsWith(`${s.key}:`) || p.startsWith(`${s.key}[`)));
    if (spec) byFlag.push(`--${spec.flag}${p.slice(spec.key.length)}`);
    else fromFile.push(p);
  }
  const parts = [...byFlag];
  if (fromFile.length > 0) parts.push(`${e.source}: ${fromFile.join('; ')}`);
  return parts.join('; ');
}

export interface CommandConfigOptions {
  role: Role;
  specs: readonly FlagSpec[];
  /** The parsed arguments (yargs). */
  args: Readonly<Record<string, unknown>>;
  /** `--config FILE`, if given. */
  file?: string;
  /** The command's defaults when no configuration file is used (its historical, loopback ones). */
  defaultsWithoutFile?: Readonly<Record<string, unknown>>;
  /** Keys that must come from a flag or the environment when there is no file, with the error that says so. */
  requiredWithoutFile?: Readonly<Record<string, string>>;
  env?: NodeJS.ProcessEnv;
}

/**
 * How a daemon command reads its configuration: flags > TABULA_* environment
 * > the file of --config or TABULA_CONFIG > defaults. Without a file the
 * command's own defaults apply; with one, the file means exactly what it
 * means to the systemd service. Returns the loader runDaemon (src/daemon/run.ts) calls at start
 * and on SIGHUP; it throws one-line errors.
 */
export function commandLoader(o: CommandConfigOptions): () => LoadedConfig {
  const env = commandEnv(o.env);
  const file = o.file === undefined ? undefined : abs(o.file);
  const overrides = flagOverrides(o.args, o.specs);
  const flagged = Object.keys(overrides);
  const noFile = file === undefined && (env.TABULA_CONFIG ?? '') === '';
  if (noFile) {
    for (const [key, message] of Object.entries(o.requiredWithoutFile ?? {})) {
      const envName = Object.entries(ENV_KEYS).find(([, v]) => v.key === key)?.[0];
      if (overrides[key] === undefined && (envName === undefined || (env[envName] ?? '') === '')) throw new Error(message);
    }
  }
  return () => {
    try {
      return loadConfig({ file, env, noDefaultFile: true, role: o.role, overrides, defaults: noFile ? o.defaultsWithoutFile : undefined });
    } catch (e) {
      if (e instanceof ConfigError) throw new Error(describeConfigError(e, o.specs, flagged));
      throw e;
    }
  };
}

/** Flags every daemon shares. */
export const COMMON_FLAGS: readonly FlagSpec[] = [
  { flag: 'token', key: 'security.token' },
  { flag: 'token-file', key: 'security.token-file', path: true },
  { flag: 'log-level', key: 'log-level' },
];
