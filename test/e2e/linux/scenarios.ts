// The Linux-initiator scenarios: what target to start and what the guest does.
// A new scenario (multipath, fstrim, snapshot) is a new entry here plus, if it
// needs new guest behaviour, a workload_<name> function in guest/workload.sh.
import type { TargetOptions } from '../../support/target-process.js';
import type { GuestScenario } from './run-guest.js';

export interface E2eScenario {
  /** Scenario name, as the guest prints it. */
  name: string;
  /** Test title. */
  title: string;
  /** Hard bound on the guest run (boot included). */
  timeoutMs: number;
  /** How the target is set up (its kind comes from TABULA_E2E_TARGET). */
  target: Omit<TargetOptions, 'kind' | 'label'>;
  /** What the guest does; portals, IQN, LUN and size come from the running target. */
  guest: Omit<GuestScenario, 'name' | 'portals' | 'iqn' | 'lun' | 'sizeBytes'>;
}

const MIB = 1 << 20;
const SIZE = 256 * MIB;
/** TCG runs a guest about 10-20x slower than hardware; a clean run of any scenario takes well under half of this. */
const TIMEOUT_MS = 300_000;

// Secrets of 16 characters: iSCSI targets commonly require 12 or more.
const CHAP = { user: 'e2e-initiator', secret: 'initiator-secret' };
const MUTUAL = { user: 'e2e-target', secret: 'target-secret-16' };

export const SCENARIOS: E2eScenario[] = [
  {
    name: 'plain',
    title: 'discovery, login, raw I/O, ext4, fsck, logout (no auth, no digests)',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE },
    guest: { workload: 'basic' },
  },
  {
    name: 'chap',
    title: 'one-way CHAP (wrong secret and no CHAP are refused)',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE, chap: CHAP },
    guest: { workload: 'basic', chap: CHAP, negativeAuth: true },
  },
  {
    name: 'mutual-chap',
    title: 'mutual CHAP (a target answering with the wrong secret is refused)',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE, chap: CHAP, mutualChap: MUTUAL },
    guest: { workload: 'basic', chap: CHAP, mutualChap: MUTUAL, negativeAuth: true },
  },
  {
    name: 'digests',
    title: 'CRC32C header and data digests',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE },
    guest: { workload: 'basic', digests: true },
  },
];
