// Where the persistent reservation state of one LU lives (SPC-4 5.13). The
// Reservations class keeps a working copy and hands every change to a store;
// an agent uses the JSON file store today, the controller will own the state
// cluster-wide later behind the same interface.
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import type { Nexus } from './port.js';

/** One registered I_T nexus. `nexus` is kept whole so that unit attentions can be addressed to it. */
export interface RegistrationRecord {
  key: bigint;
  nexus: Nexus;
  /** Registered through ALL_TG_PT: holds for this initiator port on every target port. */
  allTargetPorts: boolean;
}

export interface ReservationRecord {
  /** PR TYPE (1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR). */
  type: number;
  /** The holding nexus id (`Nexus.id`); null for the all-registrants types, where every registrant holds it. */
  holder: string | null;
}

export interface ReservationState {
  /** PRGENERATION (32-bit, wraps). */
  generation: number;
  /** Activate persist through power loss, from the last REGISTER / REGISTER AND MOVE. */
  aptpl: boolean;
  registrations: RegistrationRecord[];
  reservation: ReservationRecord | null;
}

export interface ReservationStore {
  /** The state to start from (null: nothing survived). Called once when the LU is created. */
  load(): ReservationState | null;
  /** Record the state after a change; the command completes only once this resolves. */
  save(state: ReservationState): Promise<void>;
}

export function emptyReservationState(): ReservationState {
  return { generation: 0, aptpl: false, registrations: [], reservation: null };
}

export function cloneReservationState(s: ReservationState): ReservationState {
  return {
    generation: s.generation,
    aptpl: s.aptpl,
    registrations: s.registrations.map((r) => ({ key: r.key, nexus: { ...r.nexus }, allTargetPorts: r.allTargetPorts })),
    reservation: s.reservation ? { ...s.reservation } : null,
  };
}

/** Keeps the state for the life of the process (power loss = process exit). */
export class MemoryReservationStore implements ReservationStore {
  private state: ReservationState | null = null;

  load(): ReservationState | null {
    return this.state ? cloneReservationState(this.state) : null;
  }

  async save(state: ReservationState): Promise<void> {
    this.state = cloneReservationState(state);
  }
}

interface JsonRegistration {
  key: string;
  nexus: Nexus;
  allTargetPorts: boolean;
}

interface JsonState {
  version: 1;
  generation: number;
  aptpl: boolean;
  registrations: JsonRegistration[];
  reservation: ReservationRecord | null;
}

/**
 * Persists the state in a JSON file, but only while APTPL is set: without
 * APTPL, SPC-4 says registrations and the reservation are lost on power loss,
 * so the file is removed and a restart begins empty. Writes are atomic
 * (temporary file, fsync, rename).
 */
export class JsonFileReservationStore implements ReservationStore {
  constructor(readonly path: string) {}

  load(): ReservationState | null {
    if (!existsSync(this.path)) return null;
    let parsed: JsonState;
    try {
      parsed = JSON.parse(readFileSync(this.path, 'utf8')) as JsonState;
    } catch (e) {
      throw new Error(`reservation state ${this.path}: unreadable (${(e as Error).message})`);
    }
    if (parsed.version !== 1 || !Array.isArray(parsed.registrations)) {
      throw new Error(`reservation state ${this.path}: unknown format`);
    }
    return {
      generation: parsed.generation >>> 0,
      aptpl: parsed.aptpl === true,
      registrations: parsed.registrations.map((r) => ({ key: BigInt(r.key), nexus: r.nexus, allTargetPorts: r.allTargetPorts === true })),
      reservation: parsed.reservation,
    };
  }

  async save(state: ReservationState): Promise<void> {
    if (!state.aptpl) {
      if (existsSync(this.path)) unlinkSync(this.path);
      return;
    }
    const json: JsonState = {
      version: 1,
      generation: state.generation,
      aptpl: state.aptpl,
      registrations: state.registrations.map((r) => ({ key: '0x' + r.key.toString(16).padStart(16, '0'), nexus: r.nexus, allTargetPorts: r.allTargetPorts })),
      reservation: state.reservation,
    };
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(json, null, 2) + '\n');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
  }
}
