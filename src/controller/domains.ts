// Failure domains: the legs of a mirrored segment sit in distinct domains,
// so that one failure (a disk, a storage node, a host) takes at most one
// leg of any segment. A container's domain is the one an admin set
// (`container add --domain`, `container set-domain`), else where it lives:
// a network LUN's storage node (the portal host of its iscsi:// locator),
// a local container's host (the host of the first agent that claims it),
// else the container alone. Derived names carry a prefix so that they
// never equal a name an admin gave.

import { isIscsiLocator, parseIscsiLocator } from '../container/iscsi-locator.js';
import type { AgentRow, ContainerRow, ControllerDb } from './db.js';

/** One agent's claim of a container, as domains need it. */
interface Claim {
  agent: string;
  host: string;
  path: string;
}

/** The storage node of an iscsi:// locator, or null when `path` is not one (or is malformed). */
function portalHost(path: string): string | null {
  if (!isIscsiLocator(path)) return null;
  try {
    return parseIscsiLocator(path).host.toLowerCase();
  } catch {
    return null;
  }
}

function derive(c: ContainerRow, claims: readonly Claim[]): string {
  if (c.domain !== '') return c.domain;
  for (const path of [c.path, ...claims.map((k) => k.path)]) {
    const host = portalHost(path);
    if (host !== null) return `iscsi:${host}`;
  }
  // Claims come sorted by agent: the same agent answers every time.
  const first = claims[0];
  if (first !== undefined) return `host:${first.host !== '' ? first.host : first.agent}`;
  return `container:${c.id}`;
}

/** The failure domain of one container. */
export function effectiveDomain(c: ContainerRow, db: ControllerDb): string {
  return derive(
    c,
    db.allClaims().filter((k) => k.containerId === c.id),
  );
}

/** The failure domain of every container, by container id (one read of the containers and one of the claims). */
export function containerDomains(db: ControllerDb): Map<string, string> {
  const claims = new Map<string, Claim[]>();
  for (const k of db.allClaims()) {
    let list = claims.get(k.containerId);
    if (list === undefined) claims.set(k.containerId, (list = []));
    list.push(k);
  }
  return new Map(db.containers().map((c) => [c.id, derive(c, claims.get(c.id) ?? [])]));
}

/**
 * An agent's own failure domain: that of a local container it reaches
 * (`host:` its host, or its name when it reports none). A container in it is
 * near the agent (ContainerShare.near: its reads go there first).
 */
export function agentDomain(a: Pick<AgentRow, 'name' | 'host'>): string {
  return `host:${a.host !== '' ? a.host : a.name}`;
}
