// Agent commands: data work the controller has an agent do on containers,
// copy (copy-on-write, migration) and zero (scrub before reuse). Each is
// one message out and a CopyDone back; a command whose agent disconnects,
// or that is in flight when the controller stops, ends with an error.

import type { CopyDone } from '../wire/proto-types.js';
import type { ControllerDb } from './db.js';
import type { AgentLink } from './agent-link.js';
import type { AgentRegistry } from './agent-registry.js';

/** A copy of `length` bytes between container data areas (byte offsets). */
export interface CopyArgs {
  srcContainer: string;
  srcOffset: number;
  dstContainer: string;
  dstOffset: number;
  length: number;
}

/** `length` bytes of a container's data area to zero (byte offset). */
export interface ZeroArgs {
  container: string;
  offset: number;
  length: number;
}

interface PendingCommand {
  /** Null on success, else the error text. */
  resolve: (err: string | null) => void;
  agent: string;
}

export class AgentCommands {
  readonly #db: ControllerDb;
  readonly #agents: AgentRegistry;
  readonly #pending = new Map<number, PendingCommand>();
  // Above any id an earlier run of the controller handed out (clock-based),
  // so a CopyDone an agent sends late for an old command cannot complete a new one.
  #nextCommandId = Date.now() * 1000;

  constructor(db: ControllerDb, agents: AgentRegistry) {
    this.#db = db;
    this.#agents = agents;
  }

  /**
   * An online agent that reaches every one of `containers`, `prefer` when it
   * does (the faulting agent), else the first by name; null when none.
   */
  copyAgent(containers: readonly string[], prefer?: string | null): string | null {
    const fits = (name: string): boolean => {
      if (this.#agents.link(name) === undefined) return false;
      const reach = new Set(this.#db.agentContainers(name));
      return containers.every((c) => reach.has(c));
    };
    if (prefer && fits(prefer)) return prefer;
    return this.#agents.onlineAgents().sort().find(fits) ?? null;
  }

  /** Commands an agent to copy; resolves with null on success or the error text. */
  copy(agent: string, cmd: CopyArgs): Promise<string | null> {
    const link = this.#agents.link(agent);
    if (!link) return Promise.resolve(`agent ${agent} is offline`);
    const commandId = this.#nextCommandId++;
    return new Promise((resolve) => {
      this.#pending.set(commandId, { resolve, agent });
      link.send({ body: 'copyCommand', copyCommand: { commandId, ...cmd } });
    });
  }

  /** Commands an agent to zero a data-area range (scrub); resolves like copy. */
  zero(agent: string, cmd: ZeroArgs): Promise<string | null> {
    const link = this.#agents.link(agent);
    if (!link) return Promise.resolve(`agent ${agent} is offline`);
    const commandId = this.#nextCommandId++;
    return new Promise((resolve) => {
      this.#pending.set(commandId, { resolve, agent });
      link.send({ body: 'zeroCommand', zeroCommand: { commandId, ...cmd } });
    });
  }

  /** An agent's CopyDone (for a copy or a zero). */
  onDone(link: AgentLink, d: CopyDone): void {
    const c = this.#pending.get(d.commandId);
    if (!c || c.agent !== link.name) {
      link.sendError(`copyDone for unknown command ${d.commandId}`);
      return;
    }
    this.#pending.delete(d.commandId);
    c.resolve(d.ok ? null : d.error || 'copy failed');
  }

  /** The link's agent is gone: its commands end with an error. */
  linkGone(link: AgentLink): void {
    for (const [id, c] of this.#pending) {
      if (link.name !== null && c.agent === link.name) {
        this.#pending.delete(id);
        c.resolve(`agent ${link.name} disconnected`);
      }
    }
  }

  /** Ends every command in flight (controller shutdown). */
  close(): void {
    for (const c of this.#pending.values()) c.resolve('controller shutting down');
    this.#pending.clear();
  }
}
