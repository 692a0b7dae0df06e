// SendTargets (RFC 7143 13.3 and appendix C): the text a target returns to
// "SendTargets=All | <target name> | <empty>", filtered by each target's ACL.

import type { LoginEnvironment, PortalInfo, TargetInfo } from './environment.js';
import { initiatorAllowed } from './environment.js';
import { serializeText, type TextPair } from './text.js';

export type SendTargetsEnvironment = Pick<LoginEnvironment, 'target' | 'targets'>;

/** "addr:port,tpgt", IPv6 literals in brackets. */
export function formatTargetAddress(p: PortalInfo): string {
  const host = p.address.includes(':') && !p.address.startsWith('[') ? `[${p.address}]` : p.address;
  return `${host}:${p.port},${p.tpgt}`;
}

/**
 * The SendTargets response text.
 * - "All": every target the initiator may see; only in a Discovery session
 *   (RFC 7143: not supported in a Normal session, answered SendTargets=Reject).
 * - a target name: that target, if it exists and the initiator may see it.
 * - "" : in a Normal session the caller passes the current target's name
 *   instead; in a Discovery session there is no current target, so nothing.
 */
export function sendTargets(
  value: string,
  env: SendTargetsEnvironment,
  initiatorName: string,
  sessionType: 'Discovery' | 'Normal' = 'Discovery',
): Buffer {
  let targets: TargetInfo[];
  if (value === 'All') {
    if (sessionType !== 'Discovery') return serializeText([['SendTargets', 'Reject']]);
    targets = env.targets ? [...env.targets()] : [];
  } else if (value === '') {
    targets = [];
  } else {
    const t = env.target(value);
    targets = t ? [t] : [];
  }
  const pairs: TextPair[] = [];
  for (const t of targets) {
    if (!initiatorAllowed(t, initiatorName)) continue;
    pairs.push(['TargetName', t.name]);
    for (const p of t.portals) pairs.push(['TargetAddress', formatTargetAddress(p)]);
  }
  return serializeText(pairs);
}
