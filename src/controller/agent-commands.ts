// Agent commands: data work the controller has an agent do on containers,
// copy (copy-on-write, migration) and zero (scrub before reuse). Each is
// one message out and a CopyDone back; a command in flight when the
// controller stops ends with an error.
//
// Every command has a deadline (commandDeadlineMs: a base plus time per
// MiB), so a connected but silent agent (stopped, hung on its medium) cannot
// hold a migration, a copy-on-write or the scrubber forever: past it, the
// caller gets a one-line error, as when the agent's stream goes away
// first. The agent may still run the command when it resumes, so the command stays *overdue* until its CopyDone comes, or the
// agent has registered again and had the command's deadline (its stream
// going away is not enough: linkGone), and the caller's `late` callback runs
// then: whatever the command writes (a copy's destination, the segments
// being zeroed) must not be reused before that, or a late write would land
// on live data. An agent with overdue commands is chosen for new ones only
// when no other fits.
import type { ControllerMessage, CopyDone } from '../wire/proto-types.js';
import { log } from '../util/log.js';
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

/** Deadline of a command moving no data; each MiB adds COMMAND_MS_PER_MIB. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/** 16 MiB/s: the slowest medium a command may run on before it counts as stuck. */
export const COMMAND_MS_PER_MIB = 64;

/** How long a command that moves `length` bytes may take. */
export function commandDeadlineMs(baseMs: number, length: number): number {
  return baseMs + Math.ceil((length / (1 << 20)) * COMMAND_MS_PER_MIB);
}

export interface CommandOptions {
  /**
   * Called once, only for a command that missed its deadline, when it is
   * really over: with null when the agent reported it done after all, else
   * the error (it failed, or it came back without answering). Not called
   * when the controller shuts down.
   */
  late?: (err: string | null) => void;
}

const OVERDUE = 'no answer: ';

/** Whether a command's error says it missed its deadline (its `late` is owed). */
export function isOverdue(err: string | null): boolean {
  return err !== null && err.startsWith(OVERDUE);
}

interface PendingCommand {
  /** Null on success, else the error text. */
  resolve: (err: string | null) => void;
  agent: string;
  what: string;
  timer: NodeJS.Timeout | null;
  deadlineMs: number;
  /** Missed its deadline: the caller has its answer; `late` is owed. */
  overdue: boolean;
  late?: (err: string | null) => void;
}

export class AgentCommands {
  readonly #db: ControllerDb;
  readonly #agents: AgentRegistry;
  readonly #pending = new Map<number, PendingCommand>();
  readonly #timeoutMs: number;
  // Above any id an earlier run of the controller handed out (clock-based),
  // so a CopyDone an agent sends late for an old command cannot complete a new one.
  #nextCommandId = Date.now() * 1000;

  constructor(db: ControllerDb, agents: AgentRegistry, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS) {
    this.#db = db;
    this.#agents = agents;
    this.#timeoutMs = timeoutMs;
  }

  /** Commands of `agent` past their deadline and not answered yet. */
  overdue(agent: string): number {
    let n = 0;
    for (const c of this.#pending.values()) if (c.agent === agent && c.overdue) n++;
    return n;
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
    // An agent with overdue commands may be stopped: last choice.
    const ok = (name: string): boolean => fits(name) && this.overdue(name) === 0;
    if (prefer && ok(prefer)) return prefer;
    const online = this.#agents.onlineAgents().sort();
    return online.find(ok) ?? (prefer && fits(prefer) ? prefer : (online.find(fits) ?? null));
  }

  /**
   * Commands an agent to copy; resolves with null on success or the error
   * text (one line), at the latest at the command's deadline.
   */
  copy(agent: string, cmd: CopyArgs, opts: CommandOptions = {}): Promise<string | null> {
    const what = `copy of ${cmd.length} bytes from ${cmd.srcContainer}@${cmd.srcOffset} to ${cmd.dstContainer}@${cmd.dstOffset}`;
    return this.#run(agent, what, cmd.length, opts, (commandId) => ({ body: 'copyCommand', copyCommand: { commandId, ...cmd } }));
  }

  /** Commands an agent to zero a data-area range (scrub); resolves like copy. */
  zero(agent: string, cmd: ZeroArgs, opts: CommandOptions = {}): Promise<string | null> {
    const what = `zeroing of ${cmd.length} bytes of ${cmd.container}@${cmd.offset}`;
    return this.#run(agent, what, cmd.length, opts, (commandId) => ({ body: 'zeroCommand', zeroCommand: { commandId, ...cmd } }));
  }

  #run(agent: string, what: string, length: number, opts: CommandOptions, message: (id: number) => ControllerMessage): Promise<string | null> {
    const link = this.#agents.link(agent);
    if (!link) return Promise.resolve(`agent ${agent} is offline`);
    const commandId = this.#nextCommandId++;
    const deadline = commandDeadlineMs(this.#timeoutMs, length);
    return new Promise((resolve) => {
      const c: PendingCommand = { resolve, agent, what, timer: null, deadlineMs: deadline, overdue: false };
      if (opts.late !== undefined) c.late = opts.late;
      c.timer = setTimeout(() => {
        c.timer = null;
        if (this.#pending.get(commandId) !== c) return;
        c.overdue = true;
        const reason = `${OVERDUE}agent ${agent} did not finish command ${commandId} (${what}) within ${deadline} ms`;
        log.warn(`${reason}; what it writes stays out of use until it answers, or is back and has had that long again`);
        this.#db.event('command', agent, reason);
        resolve(reason);
      }, deadline);
      c.timer.unref();
      this.#pending.set(commandId, c);
      link.send(message(commandId));
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
    this.#end(c, d.ok ? null : d.error || 'copy failed');
  }

  /** A command's answer: to the caller, or (overdue) to its `late`. */
  #end(c: PendingCommand, err: string | null): void {
    if (c.timer !== null) clearTimeout(c.timer);
    if (!c.overdue) {
      c.resolve(err);
      return;
    }
    log.info(`agent ${c.agent} answered its overdue ${c.what}: ${err ?? 'done'}`);
    c.late?.(err);
  }

  /**
   * The link's agent is gone: the callers of its commands get their answer
   * now, as overdue. A stream going away does not mean the process stopped:
   * a stopped (or partitioned) agent that resumes still reads the commands
   * buffered on its old stream and runs them, so what they write stays out
   * of use the same way (`late`): until the agent answers (on any later
   * stream of the same name) or has been registered again for the command's
   * deadline (registered).
   */
  linkGone(link: AgentLink): void {
    for (const [id, c] of this.#pending) {
      if (link.name === null || c.agent !== link.name) continue;
      if (c.overdue) continue;
      if (c.timer !== null) clearTimeout(c.timer);
      c.timer = null;
      c.overdue = true;
      const reason = `${OVERDUE}agent ${link.name} disconnected before it finished command ${id} (${c.what})`;
      log.warn(`${reason}; what it writes stays out of use until it answers, or is back and has had its deadline again`);
      this.#db.event('command', link.name, reason);
      c.resolve(reason);
    }
  }

  /**
   * The agent registered (again). The commands of its old stream that were
   * overdue have started by now, if ever (it read them before it noticed the
   * stream was gone); each ends once the agent has had its deadline to
   * finish and answer it.
   */
  registered(agent: string): void {
    for (const [id, c] of this.#pending) {
      if (c.agent !== agent || !c.overdue || c.timer !== null) continue;
      c.timer = setTimeout(() => {
        c.timer = null;
        if (this.#pending.get(id) !== c) return;
        this.#pending.delete(id);
        this.#end(c, `agent ${agent} came back without answering command ${id} (${c.what})`);
      }, c.deadlineMs);
      c.timer.unref();
    }
  }

  /** Ends every command in flight (controller shutdown). */
  close(): void {
    for (const c of this.#pending.values()) {
      if (c.timer !== null) clearTimeout(c.timer);
      if (!c.overdue) c.resolve('controller shutting down');
    }
    this.#pending.clear();
  }
}
