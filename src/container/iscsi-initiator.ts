// The IscsiConnector over this project's own initiator (src/iscsi/initiator):
// a ReconnectingSession per target (several, commands spread over them, when
// `sessions` > 1), SendTargets discovery for the portal forms.
import {
  ReconnectingSession,
  discoverTargets,
  type ScsiRequest,
  type ScsiResult,
  type ScsiTransport,
  type TransportState,
} from '../iscsi/initiator/index.js';
import type { IscsiClientOptions, IscsiConnector, Portal } from './iscsi-client.js';
import { resolveClientOptions } from './iscsi-client.js';
import type { IscsiChap } from './iscsi-locator.js';

function sessionOptions(portal: Portal, chap: IscsiChap | undefined, opts: IscsiClientOptions) {
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

/** Several sessions to one target as one transport: each command goes to the up session with the fewest in flight. */
export class SessionPool implements ScsiTransport {
  readonly #busy: number[];

  constructor(readonly sessions: readonly ScsiTransport[]) {
    this.#busy = sessions.map(() => 0);
  }

  get state(): TransportState {
    const states = this.sessions.map((s) => s.state);
    for (const st of ['up', 'connecting', 'down'] as const) if (states.includes(st)) return st;
    return 'closed';
  }

  async execute(req: ScsiRequest): Promise<ScsiResult> {
    let pick = -1;
    for (let i = 0; i < this.sessions.length; i++) {
      const up = this.sessions[i]!.state === 'up';
      if (pick < 0 || (up && (this.sessions[pick]!.state !== 'up' || this.#busy[i]! < this.#busy[pick]!))) pick = i;
    }
    this.#busy[pick]!++;
    try {
      return await this.sessions[pick]!.execute(req);
    } finally {
      this.#busy[pick]!--;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.sessions.map((s) => s.close()));
  }
}

export const initiatorConnector: IscsiConnector = {
  async connect(portal, target, chap, opts) {
    const o = { ...sessionOptions(portal, chap, opts), targetName: target };
    const n = Math.max(1, opts.sessions ?? 1);
    if (n === 1) return ReconnectingSession.connect(o);
    const sessions: ReconnectingSession[] = [];
    try {
      for (let i = 0; i < n; i++) sessions.push(await ReconnectingSession.connect(o));
    } catch (e) {
      await Promise.all(sessions.map((s) => s.close()));
      throw e;
    }
    return new SessionPool(sessions);
  },
  async discover(portal, chap, opts) {
    return discoverTargets(sessionOptions(portal, chap, opts));
  },
};
