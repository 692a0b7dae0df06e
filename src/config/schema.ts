// The shape of /etc/tabula/tabula.yaml and its validation. Keys are kebab-case
// like the command-line flags. Validation never stops at the first problem:
// it collects every error, each naming the key (`agent.portals[1]`), so an
// admin fixes a file in one pass. Unknown keys are errors too, because a
// misspelt key silently ignored is a setting silently lost.
import { parseHostPort, parseSize } from '../util/size.js';
import { DEFAULT_AGENT_METRICS_PORT, DEFAULT_CONTROLLER_METRICS_PORT, parseMetricsListen } from '../metrics/endpoint.js';
import { parseDigest, type DigestSetting } from '../container/iscsi-client.js';

export const ROLES = ['controller', 'agent', 'all-in-one', 'storage'] as const;
export type Role = (typeof ROLES)[number];

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A device to label as a container on first boot, when it is blank. */
export interface ContainerInit {
  device: string;
  /** Bytes; default the whole device. */
  size?: number;
  segmentSize?: number;
}

/** agent.iscsi: how the agent's initiator reaches iscsi:// containers (CHAP user and secret are in each locator). */
export interface AgentIscsiConfig {
  /** Unset: iqn.2024-01.io.tabula:agent.<host name> (defaultInitiatorName). */
  initiatorName?: string;
  /** Mutual CHAP: what the storage targets must answer with. */
  mutualChap?: { user: string; secret: string };
  /** Header and data digests. */
  digest?: DigestSetting;
  queueDepth?: number;
  /** Sessions per target. */
  sessions?: number;
  /** Seconds; below the agent's hold timeout. */
  commandTimeoutSec?: number;
}

export interface ChapConfig {
  user: string;
  secret: string;
  mutualUser?: string;
  mutualSecret?: string;
}

/**
 * PEM files. On the controller: its certificate and key, and with `ca`
 * client certificates are required (mutual TLS). On an agent: `ca` of the
 * controller's certificate, and cert+key when the controller wants one.
 */
export interface TlsConfig {
  cert?: string;
  key?: string;
  ca?: string;
}

/** The effective configuration: every default filled in. */
export interface TabulaConfig {
  role: Role;
  dataDir: string;
  /** A block device of its own for dataDir: formatted ext4 when blank, mounted at dataDir. */
  dataDevice?: string;
  logLevel: LogLevel;
  controller: {
    /** Where the controller API listens (controller, all-in-one). */
    listen: string;
    /** Where agents and admin commands reach the controller (agent). */
    address: string;
    db: string;
    ackTimeoutSec?: number;
    holdTimeoutSec?: number;
    /** Prometheus endpoint of the controller, HOST:PORT (none when absent). */
    metricsListen?: string;
    /** Base deadline of a copy or zero command an agent runs (seconds; default 10, plus 64 ms per MiB). */
    commandTimeoutSec?: number;
    /** A thin allocation (committed lazily) is durable against power loss at most this long after it (seconds; default 1, at most 60). */
    durableIntervalSec?: number;
    /** Bounds of the fault and event logs (unset fields: the defaults in controller/retention.ts). */
    retention: { faults: LogRetention; events: LogRetention };
    /** controller.mirrors: mirrored vdisks. */
    mirrors: MirrorsConfig;
  };
  agent: {
    name: string;
    iscsi: AgentIscsiConfig;
    portals: string[];
    containers: string[];
    holdTimeoutSec?: number;
    metricsListen?: string;
    /** Register.host_id (default: /etc/machine-id, else the host name). */
    hostId?: string;
    /** Seconds between container rescans; 0 = only on Rescan and SIGHUP (default 60). */
    rescanIntervalSec?: number;
  };
  containersInit: ContainerInit[];
  /** The storage role: data disks served as LUNs of one iSCSI target (src/daemon/appliance-storage.ts). */
  storage: StorageConfig;
  allInOne: {
    /**
     * Size of disk0 (bytes): used when disk0 is created (default 1 GiB) and,
     * when given, grows an existing smaller disk0. Unset, a restart keeps
     * disk0 as it is.
     */
    size?: number;
  };
  security: {
    token?: string;
    tokenFile?: string;
    tls?: TlsConfig;
    chap?: ChapConfig;
    allowedInitiators: string[];
  };
}

/** One LUN of a storage node: a block device or file, a glob of them, or a file created at `size`. */
export interface StorageLunConfig {
  path: string;
  /** Bytes: create the file sparse (or grow it) to this size. */
  size?: number;
}

export interface StorageConfig {
  /** LUN 0..n-1 in order (a glob adds its matches sorted). */
  luns: StorageLunConfig[];
  /** Where the target listens. */
  portal: string;
  /** Target name (default iqn.2026-11.org.tabula:storage.<host name>). */
  iqn: string;
  blockSize: 512 | 4096;
}

/** controller.mirrors (unset fields: the controller's defaults, controller/rebuild.ts). */
export interface MirrorsConfig {
  /** Seconds a failed container's stale legs wait for it to come back (a resync) before their segments are rebuilt elsewhere (default 600). */
  rebuildDelaySec?: number;
}

/** controller.retention.faults / .events: newest rows kept, and the oldest age kept. */
export interface LogRetention {
  maxRows?: number;
  maxAgeDays?: number;
}

export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(`${source}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  ${problems.join('\n  ')}`}`);
    this.name = 'ConfigError';
  }
}

export interface DefaultsContext {
  hostname: string;
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Closest known key, for "did you mean" hints (edit distance at most 2). */
function nearest(key: string, known: readonly string[]): string | undefined {
  const dist = (a: string, b: string): number => {
    const d = Array.from({ length: b.length + 1 }, (_, i) => i);
    for (let i = 1; i <= a.length; i++) {
      let prev = d[0]!;
      d[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const cur = d[j]!;
        d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = cur;
      }
    }
    return d[b.length]!;
  };
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const dd = dist(key, k);
    if (dd < bestD) {
      best = k;
      bestD = dd;
    }
  }
  return best;
}

/** Reads typed values out of one mapping, recording errors under their dotted key. */
class Reader {
  constructor(
    private readonly errors: string[],
    private readonly obj: Obj,
    private readonly prefix: string,
    known: readonly string[],
  ) {
    for (const k of Object.keys(obj)) {
      if (known.includes(k)) continue;
      const hint = nearest(k, known);
      errors.push(`${this.key(k)}: unknown key${hint ? ` (did you mean ${this.key(hint)}?)` : ''}`);
    }
  }

  key(k: string): string {
    return this.prefix ? `${this.prefix}.${k}` : k;
  }

  private fail(k: string, why: string): undefined {
    this.errors.push(`${this.key(k)}: ${why}`);
    return undefined;
  }

  string(k: string): string | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v === 'number') return String(v);
    if (typeof v !== 'string' || v.trim() === '') return this.fail(k, `expected a non-empty string, got ${describe(v)}`);
    return v;
  }

  oneOf<T extends string>(k: string, allowed: readonly T[]): T | undefined {
    const v = this.string(k);
    if (v === undefined) return undefined;
    if (!(allowed as readonly string[]).includes(v)) return this.fail(k, `'${v}' is not one of ${allowed.join(', ')}`);
    return v as T;
  }

  path(k: string): string | undefined {
    const v = this.string(k);
    if (v !== undefined && !v.startsWith('/')) return this.fail(k, `'${v}' must be an absolute path`);
    return v;
  }

  address(k: string, defaultPort: number): string | undefined {
    const v = this.string(k);
    if (v === undefined) return undefined;
    return checkAddress(v, defaultPort) ?? this.fail(k, `'${v}' is not HOST:PORT (port 0-65535)`);
  }

  /** HOST:PORT, HOST, :PORT or PORT (the last two on loopback), as the metrics endpoint reads it. */
  listen(k: string, defaultPort: number): string | undefined {
    const v = this.string(k);
    if (v === undefined) return undefined;
    try {
      parseMetricsListen(v, defaultPort);
      return v;
    } catch {
      return this.fail(k, `'${v}' is not HOST:PORT, :PORT or PORT (port 0-65535)`);
    }
  }

  seconds(k: string): number | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0 || n > 3600) return this.fail(k, `expected seconds, more than 0 and at most 3600, got ${describe(v)}`);
    return n;
  }

  /** A whole number in [min, max]. */
  count(k: string, min: number, max: number): number | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) return this.fail(k, `expected a whole number from ${min} to ${max}, got ${describe(v)}`);
    return n;
  }

  /** Days, more than 0 and at most ten years. */
  days(k: string): number | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0 || n > 3650) return this.fail(k, `expected days, more than 0 and at most 3650, got ${describe(v)}`);
    return n;
  }

  /** Seconds where 0 means off: from 0 to `max`. */
  secondsOrOff(k: string, max: number): number | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0 || n > max) return this.fail(k, `expected seconds from 0 (off) to ${max}, got ${describe(v)}`);
    return n;
  }

  size(k: string): number | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' && typeof v !== 'number') return this.fail(k, `expected a size such as 10GiB, got ${describe(v)}`);
    try {
      const n = parseSize(v);
      return n > 0 ? n : this.fail(k, 'must be more than 0');
    } catch (e) {
      return this.fail(k, (e as Error).message);
    }
  }

  /** A list of strings; a single string is a list of one. */
  strings(k: string, check?: (s: string) => string | null): string[] | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    const list = typeof v === 'string' ? [v] : v;
    if (!Array.isArray(list)) return this.fail(k, `expected a list of strings, got ${describe(v)}`);
    const out: string[] = [];
    list.forEach((item: unknown, i) => {
      if (typeof item !== 'string' || item.trim() === '') {
        this.errors.push(`${this.key(k)}[${i}]: expected a non-empty string, got ${describe(item)}`);
        return;
      }
      const why = check?.(item);
      if (why) this.errors.push(`${this.key(k)}[${i}]: ${why}`);
      else out.push(item);
    });
    return out;
  }

  section(k: string, known: readonly string[]): Reader {
    const v = this.obj[k];
    if (v === undefined || v === null) return new Reader(this.errors, {}, this.key(k), known);
    if (!isObj(v)) {
      this.fail(k, `expected a mapping of keys, got ${describe(v)}`);
      return new Reader(this.errors, {}, this.key(k), known);
    }
    return new Reader(this.errors, v, this.key(k), known);
  }

  has(k: string): boolean {
    return this.obj[k] !== undefined && this.obj[k] !== null;
  }

  list(k: string): unknown[] | undefined {
    const v = this.obj[k];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) return this.fail(k, `expected a list, got ${describe(v)}`);
    return v;
  }

  item(k: string, i: number, v: unknown, known: readonly string[]): Reader | undefined {
    if (!isObj(v)) {
      this.errors.push(`${this.key(k)}[${i}]: expected a mapping of keys, got ${describe(v)}`);
      return undefined;
    }
    return new Reader(this.errors, v, `${this.key(k)}[${i}]`, known);
  }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (isObj(v)) return 'a mapping';
  if (typeof v === 'string') return `'${v}'`;
  return String(v);
}

function checkAddress(v: string, defaultPort: number): string | undefined {
  try {
    const { host, port } = parseHostPort(v, defaultPort);
    return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  } catch {
    return undefined;
  }
}

const TOP = ['role', 'data-dir', 'data-device', 'log-level', 'controller', 'agent', 'containers-init', 'all-in-one', 'storage', 'security'] as const;
const STORAGE = ['luns', 'portal', 'iqn', 'block-size'] as const;
const STORAGE_LUN = ['path', 'size'] as const;
const CONTROLLER = ['listen', 'address', 'db', 'ack-timeout', 'hold-timeout', 'metrics-listen', 'command-timeout', 'durable-interval', 'retention', 'mirrors'] as const;
const MIRRORS = ['rebuild-delay'] as const;
/** A week: longer is a rebuild switched off in all but name. */
const MAX_REBUILD_DELAY_SEC = 7 * 86_400;
const RETENTION = ['faults', 'events'] as const;
const LOG_RETENTION = ['max-rows', 'max-age-days'] as const;
const AGENT = ['name', 'portals', 'containers', 'hold-timeout', 'metrics-listen', 'host-id', 'rescan-interval'] as const;
const INIT = ['device', 'size', 'segment-size'] as const;
const SECURITY = ['token', 'token-file', 'tls', 'chap', 'allowed-initiators'] as const;
const TLS = ['cert', 'key', 'ca'] as const;
const CHAP = ['user', 'secret', 'mutual-user', 'mutual-secret'] as const;
/** agent.iscsi; the section itself is listed with the agent's keys where the agent section is read. */
const AGENT_ISCSI = ['initiator-name', 'mutual-chap-user', 'mutual-chap-secret', 'digest', 'queue-depth', 'sessions', 'command-timeout'] as const;

const NAME = /^[A-Za-z0-9._-]{1,64}$/;
const IQN = /^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$/;

/**
 * Validates a parsed document (the merge of file, environment and flags) and
 * fills in defaults. Throws ConfigError listing every problem.
 */
export function validateConfig(raw: unknown, source: string, ctx: DefaultsContext): TabulaConfig {
  const errors: string[] = [];
  if (raw === undefined || raw === null) raw = {};
  if (!isObj(raw)) throw new ConfigError(source, [`expected a mapping of keys at the top, got ${describe(raw)}`]);
  const top = new Reader(errors, raw, '', TOP);

  const role = top.oneOf('role', ROLES) ?? 'all-in-one';
  const dataDir = top.path('data-dir') ?? '/var/lib/tabula';
  const dataDevice = top.path('data-device');
  const logLevel = top.oneOf('log-level', LOG_LEVELS) ?? 'info';

  const c = top.section('controller', CONTROLLER);
  const listen = c.address('listen', 7360);
  const address = c.address('address', 7360);
  const controller = {
    listen: listen ?? (role === 'all-in-one' ? '127.0.0.1:7360' : '0.0.0.0:7360'),
    address: address ?? '127.0.0.1:7360',
    db: c.path('db') ?? `${dataDir}/controller.db`,
    ackTimeoutSec: c.seconds('ack-timeout'),
    holdTimeoutSec: c.seconds('hold-timeout'),
    metricsListen: c.listen('metrics-listen', DEFAULT_CONTROLLER_METRICS_PORT),
    commandTimeoutSec: c.seconds('command-timeout'),
    durableIntervalSec: c.seconds('durable-interval'),
    retention: retentionOf(c.section('retention', RETENTION)),
    mirrors: mirrorsOf(c.section('mirrors', MIRRORS)),
  };
  if (controller.durableIntervalSec !== undefined && (controller.durableIntervalSec > 60 || controller.durableIntervalSec < 0.001)) {
    errors.push(`controller.durable-interval: expected seconds from 0.001 to 60, got ${controller.durableIntervalSec}`);
  }
  if (role === 'agent' && address === undefined && !c.has('address')) errors.push('controller.address: required when role is agent (HOST:PORT of the controller)');

  const a = top.section('agent', [...AGENT, 'iscsi']);
  const iscsi = agentIscsi(errors, a.section('iscsi', AGENT_ISCSI));
  const name = a.string('name');
  if (name !== undefined && !NAME.test(name)) errors.push(`agent.name: '${name}' must be 1-64 of A-Z a-z 0-9 . _ -`);
  const portals = a.strings('portals', (p) => (checkAddress(p, 3260) === undefined ? `'${p}' is not HOST:PORT (port 0-65535)` : null));
  const containers = a.strings('containers', (p) =>
    p.startsWith('/') || /^iscsi:\/\//i.test(p) ? null : `'${p}' must be an absolute path or glob`,
  );
  const hostId = a.string('host-id');
  if (hostId !== undefined && !/^[\x21-\x7e]{1,255}$/.test(hostId)) errors.push(`agent.host-id: '${hostId}' must be 1-255 printable characters without spaces`);
  const rescanIntervalSec = a.secondsOrOff('rescan-interval', 86_400);

  const containersInit: ContainerInit[] = [];
  const inits = top.list('containers-init') ?? [];
  inits.forEach((v, i) => {
    const r = typeof v === 'string' ? top.item('containers-init', i, { device: v }, INIT) : top.item('containers-init', i, v, INIT);
    if (!r) return;
    const device = r.path('device');
    if (device === undefined) {
      if (!r.has('device')) errors.push(`${r.key('device')}: required (the block device to label, e.g. /dev/disk/by-id/...)`);
      return;
    }
    containersInit.push({ device, size: r.size('size'), segmentSize: r.size('segment-size') });
  });

  const agentName = name ?? (NAME.test(ctx.hostname) ? ctx.hostname : 'local');
  const agent = {
    name: role === 'all-in-one' ? 'local' : agentName,
    iscsi,
    portals: portals ?? ['0.0.0.0:3260'],
    containers: containers ?? (containersInit.length > 0 ? containersInit.map((x) => x.device) : [`${dataDir}/containers/*`]),
    holdTimeoutSec: a.seconds('hold-timeout'),
    metricsListen: a.listen('metrics-listen', DEFAULT_AGENT_METRICS_PORT),
    ...(hostId === undefined ? {} : { hostId }),
    ...(rescanIntervalSec === undefined ? {} : { rescanIntervalSec }),
  };
  if (role === 'all-in-one' && name !== undefined && name !== 'local') errors.push(`agent.name: the all-in-one node's agent is always 'local', not '${name}'`);
  if (role === 'all-in-one' && agent.portals.length !== 1) errors.push('agent.portals: the all-in-one node serves exactly one portal');

  const cmdTimeout = agent.iscsi.commandTimeoutSec;
  if (cmdTimeout !== undefined && agent.holdTimeoutSec !== undefined && cmdTimeout >= agent.holdTimeoutSec) {
    errors.push(`agent.iscsi.command-timeout: ${cmdTimeout} s must be shorter than agent.hold-timeout (${agent.holdTimeoutSec} s), so a lost command is retried within the hold`);
  }
  const aio = top.section('all-in-one', ['size']);
  const aioSize = aio.size('size');
  const allInOne = aioSize === undefined ? {} : { size: aioSize };

  const st = top.section('storage', STORAGE);
  const luns: StorageLunConfig[] = [];
  (st.list('luns') ?? []).forEach((v, i) => {
    const r = st.item('luns', i, typeof v === 'string' ? { path: v } : v, STORAGE_LUN);
    if (!r) return;
    const path = r.path('path');
    if (path === undefined) {
      if (!r.has('path')) errors.push(`${r.key('path')}: required (a block device, a file or a glob of them)`);
      return;
    }
    luns.push({ path, size: r.size('size') });
  });
  const iqn = st.string('iqn');
  if (iqn !== undefined && !IQN.test(iqn)) errors.push(`storage.iqn: '${iqn}' is not an iSCSI name (iqn.YYYY-MM.domain...)`);
  const blockSize = st.has('block-size') ? Number(st.string('block-size')) : 512;
  if (blockSize !== 512 && blockSize !== 4096) errors.push(`storage.block-size: expected 512 or 4096, got ${String(blockSize)}`);
  const storage: StorageConfig = {
    luns,
    portal: st.address('portal', 3260) ?? '0.0.0.0:3260',
    iqn: iqn ?? `iqn.2026-11.org.tabula:storage.${ctx.hostname.toLowerCase().replace(/[^a-z0-9.-]/g, '-') || 'node'}`,
    blockSize: blockSize === 4096 ? 4096 : 512,
  };
  if (role === 'storage' && luns.length === 0 && !st.has('luns')) errors.push('storage.luns: required when role is storage (the data disks to serve, e.g. /dev/disk/by-id/...)');
  if (role === 'storage' && containersInit.length > 0) {
    errors.push("containers-init: a storage node serves its disks raw; agents label them over iSCSI (tabula container init iscsi://...)");
  }

  const s = top.section('security', SECURITY);
  const token = s.string('token');
  const tokenFile = s.path('token-file');
  if (token !== undefined && tokenFile !== undefined) errors.push('security.token-file: give security.token or security.token-file, not both');
  let tls: TlsConfig | undefined;
  if (s.has('tls')) {
    const t = s.section('tls', TLS);
    const cert = t.path('cert');
    const key = t.path('key');
    const ca = t.path('ca');
    if (t.has('cert') !== t.has('key')) errors.push(`security.tls.${t.has('cert') ? 'key' : 'cert'}: give the certificate and its key together`);
    if (role === 'agent') {
      if (!t.has('ca')) errors.push("security.tls.ca: required on an agent (the CA of the controller's certificate)");
    } else if (!t.has('cert') && !t.has('key')) {
      errors.push("security.tls.cert: required with security.tls (the controller's certificate, with security.tls.key)");
    }
    tls = { cert, key, ca };
  }
  let chap: ChapConfig | undefined;
  if (s.has('chap')) {
    const h = s.section('chap', CHAP);
    const user = h.string('user');
    const secret = h.string('secret');
    const mutualUser = h.string('mutual-user');
    const mutualSecret = h.string('mutual-secret');
    if (!h.has('user')) errors.push('security.chap.user: required with security.chap');
    if (!h.has('secret')) errors.push('security.chap.secret: required with security.chap');
    if ((mutualUser === undefined) !== (mutualSecret === undefined)) errors.push('security.chap: give both mutual-user and mutual-secret, or neither');
    if (secret !== undefined && secret.length < 12) errors.push('security.chap.secret: at least 12 characters (initiators such as Windows refuse shorter ones)');
    if (user !== undefined && secret !== undefined) chap = { user, secret, mutualUser, mutualSecret };
  }
  const allowedInitiators = s.strings('allowed-initiators', (n) => (IQN.test(n) ? null : `'${n}' is not an iSCSI name (iqn.YYYY-MM.domain..., eui.…, naa.…)`)) ?? [];

  const listenHost = parseHostPort(controller.listen, 7360).host;
  const loopback = listenHost === 'localhost' || listenHost.startsWith('127.') || listenHost === '::1';
  if (role !== 'agent' && role !== 'storage' && !loopback && token === undefined && tokenFile === undefined && tls?.ca === undefined) {
    errors.push(
      `security.token: required when controller.listen (${controller.listen}) is beyond loopback (or give security.token-file, or mutual TLS: security.tls with ca)`,
    );
  }

  if (errors.length > 0) throw new ConfigError(source, errors);
  return {
    role,
    dataDir,
    dataDevice,
    logLevel,
    controller,
    agent,
    containersInit,
    storage,
    allInOne,
    security: { token, tokenFile, tls, chap, allowedInitiators },
  };
}

function agentIscsi(errors: string[], r: Reader): AgentIscsiConfig {
  const initiatorName = r.string('initiator-name');
  if (initiatorName !== undefined && !IQN.test(initiatorName)) {
    errors.push(`agent.iscsi.initiator-name: '${initiatorName}' is not an iSCSI name (iqn.YYYY-MM.domain..., eui.…, naa.…)`);
  }
  const user = r.string('mutual-chap-user');
  const secret = r.string('mutual-chap-secret');
  if ((user === undefined) !== (secret === undefined)) errors.push('agent.iscsi: give both mutual-chap-user and mutual-chap-secret, or neither');
  if (secret !== undefined && secret.length < 12) errors.push('agent.iscsi.mutual-chap-secret: at least 12 characters (targets such as tgtd and LIO refuse shorter ones)');
  let digest: DigestSetting | undefined;
  const d = r.string('digest');
  if (d !== undefined) {
    digest = parseDigest(d);
    if (digest === undefined) errors.push(`agent.iscsi.digest: '${d}' is not one of none, crc32c, prefer`);
  }
  const count = (k: string, max: number): number | undefined => {
    const v = r.string(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (Number.isInteger(n) && n >= 1 && n <= max) return n;
    errors.push(`${r.key(k)}: expected a whole number from 1 to ${max}, got '${v}'`);
    return undefined;
  };
  const commandTimeoutSec = r.seconds('command-timeout');
  const out: AgentIscsiConfig = {};
  if (initiatorName !== undefined) out.initiatorName = initiatorName;
  if (user !== undefined && secret !== undefined) out.mutualChap = { user, secret };
  if (digest !== undefined) out.digest = digest;
  const queueDepth = count('queue-depth', 1024);
  if (queueDepth !== undefined) out.queueDepth = queueDepth;
  const sessions = count('sessions', 16);
  if (sessions !== undefined) out.sessions = sessions;
  if (commandTimeoutSec !== undefined) out.commandTimeoutSec = commandTimeoutSec;
  return out;
}

/** controller.mirrors, as given (defaults are the controller's). */
function mirrorsOf(r: Reader): MirrorsConfig {
  const out: MirrorsConfig = {};
  // 0 is allowed: rebuild at once, never wait for a resync.
  const delay = r.count('rebuild-delay', 0, MAX_REBUILD_DELAY_SEC);
  if (delay !== undefined) out.rebuildDelaySec = delay;
  return out;
}

/** controller.retention: each log's bounds, as given (defaults are the controller's). */
function retentionOf(r: Reader): { faults: LogRetention; events: LogRetention } {
  const one = (k: 'faults' | 'events'): LogRetention => {
    const l = r.section(k, LOG_RETENTION);
    const out: LogRetention = {};
    const maxRows = l.count('max-rows', 0, 100_000_000);
    const maxAgeDays = l.days('max-age-days');
    if (maxRows !== undefined) out.maxRows = maxRows;
    if (maxAgeDays !== undefined) out.maxAgeDays = maxAgeDays;
    return out;
  };
  return { faults: one('faults'), events: one('events') };
}

/**
 * Settings the configuration accepts but this version's daemons do not apply
 * yet, so `config check` and the service log say so instead of pretending.
 */
export function notApplied(cfg: TabulaConfig): string[] {
  const out: string[] = [];
  if (cfg.role === 'all-in-one' && cfg.security.tls) out.push('security.tls: the all-in-one node talks to its controller in-process; TLS applies to controller and agent roles');
  return out;
}
