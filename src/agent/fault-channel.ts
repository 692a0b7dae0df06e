// Faults and releases in flight between the agent's devices and the
// controller (docs/architecture.md, "Faults and holds"). A fault is held here until a FaultReply with
// its id arrives: WAIT keeps it held, anything else settles it. Faults
// outlive the stream: after a reconnect every one still held is sent again
// (same id; ids are unique for the life of the agent, hence per connection).
// The device's hold timeout, not this module, decides when to give up; it
// aborts its report, which forgets the fault here.
//
// Releases are the opposite: they only make sense on the stream they were
// sent on (the controller answers with the version that made the segments
// zero). One that could not be sent settles as 'not-sent' (the device zeroes
// the blocks in place instead); one outstanding when the stream breaks
// settles as 'answer-lost': the controller may have applied it, so the
// device must fail the UNMAP retryably rather than complete it in place.
import type { AgentMessage, Fault, FaultReply, Release, ReleaseReply } from '../wire/proto-types.js';
import { FaultAction } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { LinkEventName, LinkEvents } from './controller-link.js';
import { ReleaseLostError, type Fault as DeviceFault, type FaultDecision, type FaultSink, type ReleaseRequest as DeviceRelease, type ReleaseResult } from './fault.js';

/** A fault without its id: what a device reports. */
export type FaultReport = Omit<Fault, 'faultId' | 'detail'> & { detail?: string };

/** A release without its id. */
export type ReleaseRequest = Omit<Release, 'requestId'>;

export class FaultAbortedError extends Error {
  constructor(readonly faultId: number, reason: string) {
    super(`fault ${faultId} given up: ${reason}`);
    this.name = 'FaultAbortedError';
  }
}

interface HeldFault {
  fault: Fault;
  resolve: (r: FaultReply) => void;
  reject: (e: Error) => void;
  /** The controller answered WAIT at least once. */
  waiting: boolean;
  onAbort?: () => void;
  signal?: AbortSignal;
}

/** How a release ended without a reply: never sent, or sent and its answer lost with the stream. */
export type ReleaseUnanswered = 'not-sent' | 'answer-lost';

interface PendingRelease {
  resolve: (r: ReleaseReply | ReleaseUnanswered) => void;
}

/** What the channel uses of the controller link (ControllerLink; tests give it a fake). */
export interface FaultLink {
  on<K extends LinkEventName>(event: K, fn: (arg: LinkEvents[K]) => void): unknown;
  send(msg: AgentMessage): boolean;
  sendFault(fault: Fault): boolean;
}

export class FaultChannel {
  readonly #link: FaultLink;
  readonly #held = new Map<number, HeldFault>();
  readonly #releases = new Map<number, PendingRelease>();
  #nextFaultId = 1;
  #nextRequestId = 1;

  constructor(link: FaultLink) {
    this.#link = link;
    link.on('faultReply', (r) => this.#onReply(r));
    link.on('releaseReply', (r) => this.#onReleaseReply(r));
    link.on('welcome', () => this.#resend());
    link.on('disconnected', () => this.#dropReleases());
  }

  /** I/O pieces held for fault replies (heartbeats report it). */
  get held(): number {
    return this.#held.size;
  }

  /**
   * Reports a fault and resolves with the controller's final answer (RETRY,
   * FAIL or DONE). Rejects with FaultAbortedError when `signal` aborts (the
   * device's hold timeout) or the channel closes.
   */
  report(report: FaultReport, signal?: AbortSignal): Promise<FaultReply> {
    const faultId = this.#nextFaultId++;
    const fault: Fault = { ...report, detail: report.detail ?? '', faultId };
    return new Promise<FaultReply>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new FaultAbortedError(faultId, 'aborted before it was sent'));
        return;
      }
      const h: HeldFault = { fault, resolve, reject, waiting: false };
      if (signal) {
        h.signal = signal;
        h.onAbort = () => {
          if (this.#held.delete(faultId)) reject(new FaultAbortedError(faultId, String(signal.reason ?? 'aborted')));
        };
        signal.addEventListener('abort', h.onAbort, { once: true });
      }
      this.#held.set(faultId, h);
      // Not connected: it goes out with the others after the next Welcome.
      this.#link.sendFault(fault);
    });
  }

  /**
   * Asks the controller to release whole segments. Resolves with its reply;
   * 'not-sent' when the controller cannot be asked (not connected); or
   * 'answer-lost' when the stream broke (or the agent shut down) after it
   * was sent, so the controller may or may not have applied it.
   */
  release(req: ReleaseRequest): Promise<ReleaseReply | ReleaseUnanswered> {
    const requestId = this.#nextRequestId++;
    if (!this.#link.send({ body: 'release', release: { ...req, requestId } })) return Promise.resolve('not-sent');
    return new Promise((resolve) => this.#releases.set(requestId, { resolve }));
  }

  /** Gives up every held fault and release (agent shutdown). */
  close(): void {
    for (const [id, h] of this.#held) {
      this.#forget(id, h);
      h.reject(new FaultAbortedError(id, 'agent shutting down'));
    }
    this.#dropReleases();
  }

  #onReply(r: FaultReply): void {
    const h = this.#held.get(r.faultId);
    if (h === undefined) {
      // Late (after the hold timeout) or for an id of another life of this agent.
      log.debug('fault reply for no held fault', { faultId: r.faultId, action: r.action });
      return;
    }
    switch (r.action) {
      case FaultAction.Wait:
        h.waiting = true;
        return;
      case FaultAction.Retry:
      case FaultAction.Fail:
      case FaultAction.Done:
        this.#forget(r.faultId, h);
        h.resolve(r);
        return;
      default:
        // An action this build does not know: keep holding; the hold timeout bounds it.
        log.warn('fault reply with an unknown action: still holding', { faultId: r.faultId, action: r.action });
    }
  }

  #forget(id: number, h: HeldFault): void {
    this.#held.delete(id);
    if (h.signal && h.onAbort) h.signal.removeEventListener('abort', h.onAbort);
  }

  #resend(): void {
    if (this.#held.size === 0) return;
    log.info('re-sending held faults after reconnect', { count: this.#held.size });
    for (const h of this.#held.values()) this.#link.sendFault(h.fault);
  }

  #onReleaseReply(r: ReleaseReply): void {
    const p = this.#releases.get(r.requestId);
    if (p === undefined) {
      log.debug('release reply for no pending release', { requestId: r.requestId });
      return;
    }
    this.#releases.delete(r.requestId);
    p.resolve(r);
  }

  #dropReleases(): void {
    const pending = [...this.#releases.values()];
    this.#releases.clear();
    for (const p of pending) p.resolve('answer-lost');
  }
}

/** The controller's reply as the device's decision. */
export function decisionOf(r: FaultReply): FaultDecision {
  switch (r.action) {
    case FaultAction.Retry:
      return r.tableVersion > 0 ? { action: 'retry', minVersion: r.tableVersion } : { action: 'retry' };
    case FaultAction.Fail:
      return r.senseKey !== 0
        ? { action: 'fail', sense: { key: r.senseKey, asc: r.asc, ascq: r.ascq }, reason: r.reason }
        : { action: 'fail', reason: r.reason };
    case FaultAction.Done:
      return { action: 'done' };
    default:
      return { action: 'wait' };
  }
}

/**
 * The devices' FaultSink over the wire. A fault stays pending while the
 * controller is away (the device enforces its hold timeout itself); it is
 * forgotten here a little after that timeout so nothing piles up.
 */
export function wireFaultSink(channel: FaultChannel, holdTimeoutMs: () => number): FaultSink {
  return {
    async fault(f: DeviceFault): Promise<FaultDecision> {
      const signal = AbortSignal.timeout(holdTimeoutMs() + 1000);
      const report: FaultReport = { vdiskId: f.vdiskId, tableVersion: f.version, segment: f.segment, op: f.op, lba: f.lba, blocks: f.blocks, state: f.state, detail: f.detail };
      // A leg fault only: one-copy faults stay the objects (and bytes) they were.
      if (f.failedContainer !== undefined) report.failedContainer = f.failedContainer;
      const reply = await channel.report(report, signal);
      return decisionOf(reply);
    },
    async release(r: DeviceRelease): Promise<ReleaseResult> {
      const reply = await channel.release({ vdiskId: r.vdiskId, tableVersion: r.version, firstSegment: r.firstSegment, segmentCount: r.segmentCount });
      // A plain rejection means "not delivered": the device zeroes in place
      // instead. A lost answer must not be taken for that (the controller
      // may have made the segments zero; a write completed after zeroing in
      // place would then be lost to the next table), hence ReleaseLostError.
      if (reply === 'not-sent') throw new Error('controller not reachable');
      if (reply === 'answer-lost') throw new ReleaseLostError(`release of ${r.vdiskId} segments ${r.firstSegment}+${r.segmentCount}: sent, but the stream broke before its answer`);
      return reply.ok ? { ok: true, version: reply.tableVersion } : { ok: false, version: reply.tableVersion, error: reply.error };
    },
  };
}
