// The IscsiConnector over this project's own initiator (src/iscsi/initiator):
// a ReconnectingSession per target (an IscsiSessionPool of several, commands
// spread over them, when `sessions` > 1), SendTargets discovery for the
// portal forms.
import { IscsiSessionPool, ReconnectingSession, discoverTargets, type ReconnectingOptions } from '../iscsi/initiator/index.js';
import type { IscsiClientOptions, IscsiConnector, Portal } from './iscsi-client.js';
import { resolveClientOptions } from './iscsi-client.js';
import type { IscsiChap } from './iscsi-locator.js';

function sessionOptions(portal: Portal, chap: IscsiChap | undefined, opts: IscsiClientOptions): ReconnectingOptions {
  const o = resolveClientOptions(opts);
  return {
    host: portal.host,
    port: portal.port,
    initiatorName: o.initiatorName,
    headerDigest: o.headerDigest,
    dataDigest: o.dataDigest,
    ...(chap === undefined ? {} : { chap: { user: chap.user, secret: chap.secret } }),
    // Mutual CHAP rides on CHAP: without a user and secret for the target there is nothing to answer.
    ...(chap !== undefined && o.mutualChap !== undefined ? { mutualChap: { ...o.mutualChap } } : {}),
    // A write of up to 1 MiB (the agent's largest usual I/O) goes out with its command, no R2T round trip,
    // where the target agrees (InitialR2T is Yes if either side says so; FirstBurstLength is the lesser).
    initialR2T: false,
    firstBurstLength: 1 << 20,
    maxBurstLength: 1 << 20,
    queueDepth: o.queueDepth,
    commandTimeoutMs: o.commandTimeoutMs,
    holdMs: o.holdMs,
    // A login that hangs must not outlast the hold either.
    loginTimeoutMs: Math.min(10_000, o.holdMs),
  };
}

export const initiatorConnector: IscsiConnector = {
  async connect(portal, target, chap, opts) {
    const o = { ...sessionOptions(portal, chap, opts), targetName: target };
    const n = Math.max(1, opts.sessions ?? 1);
    return n === 1 ? ReconnectingSession.connect(o) : IscsiSessionPool.connect(o, n);
  },
  async discover(portal, chap, opts) {
    return discoverTargets(sessionOptions(portal, chap, opts));
  },
};
