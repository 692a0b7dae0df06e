// One agent's connection: the server side of AgentService.Connect. Knows
// which table versions it sent and which the agent acked, per vdisk, and
// lets the controller wait for an ack with a deadline. Message handling is
// the registry's (agent-registry.ts, which hands most messages on); this
// only moves messages and keeps state.

import type * as grpc from '@grpc/grpc-js';
import type { EncodedMessage } from '../wire/grpc.js';
import type { AgentMessage, ControllerMessage, MalformedMessage } from '../wire/proto-types.js';
import { log } from '../util/log.js';

export type AgentCall = grpc.ServerDuplexStream<AgentMessage | MalformedMessage, ControllerMessage | EncodedMessage>;

/** What the controller knows of one vdisk table held by this agent. */
export interface HeldTable {
  /** Last version sent (full or delta). */
  sent: number;
  /** Last version acked. */
  acked: number;
  /** Missed an ack deadline: treated as not holding the table until it acks a full table. */
  fenced: boolean;
  /** Version of the last full table sent; an ack at or past it clears `fenced`. */
  fullAt: number;
}

interface AckWaiter {
  version: number;
  resolve: (acked: boolean) => void;
  timer: NodeJS.Timeout;
}

let nextLinkId = 1;

export class AgentLink {
  readonly id = nextLinkId++;
  /** Set by Register. */
  name: string | null = null;
  /** Set by Register: the agent reads TableFull's run form (Register.table_runs). */
  readsTableRuns = false;
  /** Set by Register: vdisks whose table the agent kept from an earlier connection (Register.tables), and served from while away. */
  keptTables: ReadonlySet<string> = new Set();
  readonly peer: string;
  readonly tables = new Map<string, HeldTable>();
  #call: AgentCall;
  #closed = false;
  #waiters = new Map<string, AckWaiter[]>();

  constructor(call: AgentCall) {
    this.#call = call;
    this.peer = call.getPeer();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** For log and error messages. */
  get label(): string {
    return this.name === null ? `unregistered agent at ${this.peer}` : `agent ${this.name}`;
  }

  /** Sends a message, or one already serialized for many links (EncodedMessage). */
  send(msg: ControllerMessage | EncodedMessage): boolean {
    if (this.#closed) return false;
    try {
      this.#call.write(msg);
      return true;
    } catch (err) {
      log.warn(`send to ${this.label} failed`, { error: (err as Error).message, body: msg.body });
      return false;
    }
  }

  sendError(message: string, fatal = false): void {
    this.send({ body: 'error', error: { message, fatal } });
  }

  held(vdiskId: string): HeldTable | undefined {
    return this.tables.get(vdiskId);
  }

  /** Records that `version` of the vdisk's table went out (full when `full`). */
  noteSent(vdiskId: string, version: number, full: boolean): void {
    const t = this.tables.get(vdiskId);
    if (t === undefined) {
      this.tables.set(vdiskId, { sent: version, acked: 0, fenced: false, fullAt: full ? version : 0 });
      return;
    }
    t.sent = version;
    if (full) t.fullAt = version;
  }

  /** Applies an ack; returns true when it cleared a fence. */
  noteAck(vdiskId: string, version: number): boolean {
    const t = this.tables.get(vdiskId);
    if (t === undefined) return false;
    if (version > t.acked) t.acked = version;
    let unfenced = false;
    if (t.fenced && t.fullAt > 0 && version >= t.fullAt) {
      t.fenced = false;
      unfenced = true;
    }
    const ws = this.#waiters.get(vdiskId);
    if (ws) {
      const keep: AckWaiter[] = [];
      for (const w of ws) {
        if (w.version <= t.acked) {
          clearTimeout(w.timer);
          w.resolve(true);
        } else keep.push(w);
      }
      if (keep.length === 0) this.#waiters.delete(vdiskId);
      else this.#waiters.set(vdiskId, keep);
    }
    return unfenced;
  }

  /** Resolves true once the agent acks `version` (or later), false after `timeoutMs` or on disconnect. */
  waitAck(vdiskId: string, version: number, timeoutMs: number): Promise<boolean> {
    const t = this.tables.get(vdiskId);
    if (t !== undefined && t.acked >= version) return Promise.resolve(true);
    if (this.#closed) return Promise.resolve(false);
    return new Promise((resolve) => {
      const w: AckWaiter = {
        version,
        resolve,
        timer: setTimeout(() => {
          const ws = this.#waiters.get(vdiskId);
          if (ws) {
            const i = ws.indexOf(w);
            if (i >= 0) ws.splice(i, 1);
            if (ws.length === 0) this.#waiters.delete(vdiskId);
          }
          resolve(false);
        }, timeoutMs),
      };
      const ws = this.#waiters.get(vdiskId);
      if (ws) ws.push(w);
      else this.#waiters.set(vdiskId, [w]);
    });
  }

  /** Forgets a vdisk (no longer exported here); pending waits resolve true since nothing is owed. */
  drop(vdiskId: string): void {
    this.tables.delete(vdiskId);
    for (const w of this.#waiters.get(vdiskId) ?? []) {
      clearTimeout(w.timer);
      w.resolve(true);
    }
    this.#waiters.delete(vdiskId);
  }

  /** Marks the link gone; every pending ack wait resolves false. Idempotent. */
  markClosed(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const ws of this.#waiters.values()) {
      for (const w of ws) {
        clearTimeout(w.timer);
        w.resolve(false);
      }
    }
    this.#waiters.clear();
  }

  /** Ends the stream from our side (e.g. replaced by a newer connection of the same agent). */
  close(reason: string): void {
    if (this.#closed) return;
    this.sendError(reason, true);
    this.markClosed();
    try {
      this.#call.end();
    } catch {
      // The stream may already be gone; nothing more to do.
    }
  }
}
