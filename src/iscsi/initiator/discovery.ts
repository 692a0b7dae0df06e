// SendTargets discovery (RFC 7143 appendix C): a Discovery session on a
// portal, one Text exchange SendTargets=All, logout.

import { connectSession, type ConnectOptions } from './connect.js';
import type { TextPair } from '../login/text.js';

export interface DiscoveredTarget {
  name: string;
  /** "host:port,tpgt" as the target gave them (IPv6 hosts in brackets). */
  addresses: string[];
}

export type DiscoveryOptions = Omit<ConnectOptions, 'targetName' | 'sessionType' | 'initiatorName'> & {
  initiatorName?: string;
};

export const DEFAULT_INITIATOR_NAME = 'iqn.2026-11.org.tabula:initiator';

/** The targets behind a portal. Throws TransportError when the portal cannot be reached or refuses us. */
export async function discoverTargets(opts: DiscoveryOptions): Promise<DiscoveredTarget[]> {
  const session = await connectSession({
    ...opts,
    initiatorName: opts.initiatorName ?? DEFAULT_INITIATOR_NAME,
    sessionType: 'Discovery',
    nopIntervalMs: 0,
  });
  try {
    return parseSendTargets(await session.text([['SendTargets', 'All']], opts.loginTimeoutMs ?? 10_000));
  } finally {
    await session.close();
  }
}

/** Groups TargetName=... followed by its TargetAddress=... pairs. */
export function parseSendTargets(pairs: TextPair[]): DiscoveredTarget[] {
  const out: DiscoveredTarget[] = [];
  let cur: DiscoveredTarget | undefined;
  for (const [k, v] of pairs) {
    if (k === 'TargetName') {
      cur = { name: v, addresses: [] };
      out.push(cur);
    } else if (k === 'TargetAddress' && cur) {
      cur.addresses.push(v);
    }
  }
  return out;
}
