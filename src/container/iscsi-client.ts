// How this host's initiator reaches iSCSI containers: the client settings an
// agent takes from `agent.iscsi` / `--iscsi-*` (and an admin's `container
// init|add` from TABULA_ISCSI_*), and the connector that turns a locator into
// a logged-in ScsiTransport. The connector is an interface so that tests can
// plug in an in-process target and the agent the real initiator.
import { hostname } from 'node:os';
import type { ScsiTransport } from '../iscsi/initiator/transport.js';
import type { IscsiChap } from './iscsi-locator.js';

export type DigestSetting = 'None' | 'CRC32C' | 'prefer';

export interface IscsiClientOptions {
  /** Default `iqn.2024-01.io.tabula:agent.<hostname>`. */
  initiatorName?: string;
  /** Mutual CHAP: the name and secret the target must answer this initiator with. */
  mutualChap?: IscsiChap;
  headerDigest?: DigestSetting;
  dataDigest?: DigestSetting;
  /** Commands in flight per session (the target's command window may allow fewer). */
  queueDepth?: number;
  /** Sessions per target (commands spread across them). */
  sessions?: number;
  /** A command without an answer this long is aborted and retried (shorter than holdMs). */
  commandTimeoutMs?: number;
  /** How long I/O is held while a target is unreachable before it fails retryably (the agent's hold timeout). */
  holdMs?: number;
}

export const DEFAULT_QUEUE_DEPTH = 32;
export const DEFAULT_COMMAND_TIMEOUT_MS = 5_000;
export const DEFAULT_CLIENT_HOLD_MS = 10_000;

/** `iqn.2024-01.io.tabula:agent.<hostname>`, the host name reduced to what an IQN may hold. */
export function defaultInitiatorName(host: string = hostname()): string {
  const safe = host.toLowerCase().replace(/[^a-z0-9.-]/g, '-').replace(/^[.-]+|[.-]+$/g, '') || 'localhost';
  return `iqn.2024-01.io.tabula:agent.${safe}`;
}

/** Every option with its default filled in; the command timeout kept below the hold. */
export function resolveClientOptions(o: IscsiClientOptions = {}): Required<Omit<IscsiClientOptions, 'mutualChap'>> & Pick<IscsiClientOptions, 'mutualChap'> {
  const holdMs = o.holdMs ?? DEFAULT_CLIENT_HOLD_MS;
  const commandTimeoutMs = o.commandTimeoutMs ?? Math.min(DEFAULT_COMMAND_TIMEOUT_MS, Math.max(1, Math.floor(holdMs / 2)));
  return {
    initiatorName: o.initiatorName ?? defaultInitiatorName(),
    headerDigest: o.headerDigest ?? 'None',
    dataDigest: o.dataDigest ?? 'None',
    queueDepth: o.queueDepth ?? DEFAULT_QUEUE_DEPTH,
    sessions: o.sessions ?? 1,
    commandTimeoutMs,
    holdMs,
    ...(o.mutualChap === undefined ? {} : { mutualChap: o.mutualChap }),
  };
}

/** A digest flag or key value (`none`, `crc32c`, `prefer`, any case) as the initiator spells it. */
export function parseDigest(v: string): DigestSetting | undefined {
  switch (v.trim().toLowerCase()) {
    case 'none':
      return 'None';
    case 'crc32c':
      return 'CRC32C';
    case 'prefer':
      return 'prefer';
    default:
      return undefined;
  }
}

/**
 * The client settings of an admin command (`container init|add` of a
 * locator) from TABULA_ISCSI_INITIATOR_NAME, _MUTUAL_CHAP_USER,
 * _MUTUAL_CHAP_SECRET, _DIGEST, _QUEUE_DEPTH, _COMMAND_TIMEOUT (seconds) and
 * _HOLD_TIMEOUT (seconds). Throws naming the variable that is wrong.
 */
export function clientOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): IscsiClientOptions {
  const out: IscsiClientOptions = {};
  const get = (k: string): string | undefined => {
    const v = env[`TABULA_ISCSI_${k}`];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  };
  const name = get('INITIATOR_NAME');
  if (name !== undefined) out.initiatorName = name;
  const user = get('MUTUAL_CHAP_USER');
  const secret = get('MUTUAL_CHAP_SECRET');
  if ((user === undefined) !== (secret === undefined)) throw new Error('TABULA_ISCSI_MUTUAL_CHAP_USER and TABULA_ISCSI_MUTUAL_CHAP_SECRET go together');
  if (user !== undefined && secret !== undefined) out.mutualChap = { user, secret };
  const digest = get('DIGEST');
  if (digest !== undefined) {
    const d = parseDigest(digest);
    if (d === undefined) throw new Error(`TABULA_ISCSI_DIGEST '${digest}' is not none, crc32c or prefer`);
    out.headerDigest = d;
    out.dataDigest = d;
  }
  const count = (k: string, max: number): number | undefined => {
    const v = get(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`TABULA_ISCSI_${k} '${v}' is not a whole number from 1 to ${max}`);
    return n;
  };
  const seconds = (k: string): number | undefined => {
    const v = get(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0 || n > 3600) throw new Error(`TABULA_ISCSI_${k} '${v}' is not seconds, more than 0 and at most 3600`);
    return Math.round(n * 1000);
  };
  const depth = count('QUEUE_DEPTH', 1024);
  if (depth !== undefined) out.queueDepth = depth;
  const sessions = count('SESSIONS', 16);
  if (sessions !== undefined) out.sessions = sessions;
  const timeout = seconds('COMMAND_TIMEOUT');
  if (timeout !== undefined) out.commandTimeoutMs = timeout;
  const hold = seconds('HOLD_TIMEOUT');
  if (hold !== undefined) out.holdMs = hold;
  return out;
}

export interface Portal {
  host: string;
  port: number;
}

export interface DiscoveredTarget {
  name: string;
  /** `HOST:PORT,TPGT` as SendTargets reports them. */
  addresses: string[];
}

/** What the iSCSI container code needs from an initiator. */
export interface IscsiConnector {
  /** A logged-in (and reconnecting) transport to one target. */
  connect(portal: Portal, target: string, chap: IscsiChap | undefined, opts: IscsiClientOptions): Promise<ScsiTransport>;
  /** The targets behind a portal (SendTargets=All in a discovery session). */
  discover(portal: Portal, chap: IscsiChap | undefined, opts: IscsiClientOptions): Promise<DiscoveredTarget[]>;
}
