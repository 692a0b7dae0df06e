// The agent's side of "one logical unit on every path": the requests that
// change a vdisk's LU state (PERSISTENT RESERVE OUT, RESERVE, RELEASE, LU
// reset, CLEAR TASK SET, a lost SPC-2 holder) go to the controller as
// LuRequests, and each LU of an exported vdisk gets a ReservationAuthority
// that sends them. The controller answers (LuReply) only after every agent
// holding the vdisk, this one included, has installed the new state, so the
// command completes with the state already in force here.
//
// While the controller cannot be asked (not connected), or gives no answer
// within the hold timeout, or the stream breaks before the answer, the
// request fails with CHECK CONDITION, NOT READY, LOGICAL UNIT NOT
// ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION (02/04/0A): the status
// held I/O gets at its hold timeout, which Linux dm-multipath, Windows MPIO
// and VMware NMP all retry. READ and WRITE meanwhile go on under the state
// last installed (ReservationGate.conflicts reads it locally).
//
// A lost SPC-2 holder is the one request nobody waits for (the agent has
// dropped the reservation on its own path already): if it cannot reach the
// controller, it goes again first thing after the next Welcome, so the
// other paths do not keep a reservation whose holder is gone. (Dropping it
// is harmless if it was already dropped: the controller drops it only for
// that very nexus.)
import type { LuOutcome, LuStateRequest, ReservationAuthority } from '../scsi/lu-api.js';
import type { Nexus } from '../scsi/port.js';
import { ScsiStatus } from '../scsi/port.js';
import { Sense } from '../scsi/sense.js';
import { luOutcomeOf, luRequestKindToWire, nexusRef } from '../wire/lu-state.js';
import type { LuReply } from '../wire/proto-types.js';
import { log } from '../util/log.js';
import type { ControllerLink } from './controller-link.js';

interface Pending {
  resolve: (o: LuOutcome) => void;
  timer: NodeJS.Timeout;
  /** A nexus-lost request, to send again after a reconnect if its answer is lost with the stream. */
  retry?: () => void;
}

function retryable(message: string): LuOutcome {
  return { status: ScsiStatus.CheckCondition, sense: { code: Sense.notReadyTransition, opts: {} }, message };
}

export class LuChannel {
  readonly #link: ControllerLink;
  readonly #holdTimeoutMs: () => number;
  readonly #pending = new Map<number, Pending>();
  /** Lost SPC-2 holders to tell the controller about once it is back. */
  #afterWelcome: (() => void)[] = [];
  #nextRequestId = 1;

  constructor(link: ControllerLink, holdTimeoutMs: () => number) {
    this.#link = link;
    this.#holdTimeoutMs = holdTimeoutMs;
    link.on('luReply', (r) => this.#onReply(r));
    // The answer of a request sent on a broken stream never comes: fail them now (the initiator retries).
    link.on('disconnected', () => this.#failAll('the controller connection broke before it answered'));
    link.on('welcome', () => {
      const again = this.#afterWelcome;
      this.#afterWelcome = [];
      for (const send of again) send();
    });
  }

  /** The authority for one vdisk's LU. */
  authority(vdiskId: string): ReservationAuthority {
    return { decide: (nexus, req) => this.request(vdiskId, nexus, req) };
  }

  /** Sends one request; resolves with the controller's outcome, or with 02/04/0A when it cannot answer in time. */
  request(vdiskId: string, nexus: Nexus, req: LuStateRequest): Promise<LuOutcome> {
    const requestId = this.#nextRequestId++;
    const sent = this.#link.send({
      body: 'luRequest',
      luRequest: {
        requestId,
        vdiskId,
        kind: luRequestKindToWire(req.kind),
        cdb: req.cdb,
        data: req.data ?? Buffer.alloc(0),
        nexus: nexusRef(nexus),
      },
    });
    const retry = req.kind === 'nexus-lost' ? (): void => void this.request(vdiskId, nexus, req) : undefined;
    if (!sent) {
      log.warn(`${req.kind} from ${nexus.initiatorPort} on vdisk ${vdiskId}: the controller is not connected`);
      if (retry) this.#afterWelcome.push(retry);
      return Promise.resolve(retryable('the controller is not connected'));
    }
    return new Promise((resolve) => {
      const ms = this.#holdTimeoutMs();
      const timer = setTimeout(() => {
        this.#pending.delete(requestId);
        log.warn(`${req.kind} from ${nexus.initiatorPort} on vdisk ${vdiskId}: no answer from the controller within ${ms} ms`);
        resolve(retryable(`no answer from the controller within ${ms} ms`));
      }, ms);
      this.#pending.set(requestId, retry ? { resolve, timer, retry } : { resolve, timer });
    });
  }

  /** Fails every pending request (agent shutdown). */
  close(): void {
    this.#failAll('the agent is shutting down');
    this.#afterWelcome = [];
  }

  #onReply(r: LuReply): void {
    const p = this.#pending.get(r.requestId);
    if (p === undefined) {
      log.debug('LU reply for no pending request', { requestId: r.requestId });
      return;
    }
    this.#pending.delete(r.requestId);
    clearTimeout(p.timer);
    p.resolve(luOutcomeOf(r));
  }

  #failAll(why: string): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      if (p.retry) this.#afterWelcome.push(p.retry);
      p.resolve(retryable(why));
    }
  }
}
