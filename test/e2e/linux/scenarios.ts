// The Linux-initiator scenarios: what target to start and what the guest does.
// A new scenario is a new entry here plus, if it needs new guest behaviour, a
// workload_<name> function in guest/workload.sh.
//
// Two kinds: `target` scenarios run against one `tabula target --file` (or
// tgtd, to prove the harness); `cluster` scenarios run against the
// table-driven system (a controller and agents as real processes, see
// cluster-target.ts), boot the bigger guest image (dm-multipath, sg3-utils)
// and may ask the host to act in the middle of the workload.
import type { TargetOptions } from '../../support/target-process.js';
import type { GuestScenario } from './run-guest.js';
import type { ClusterSetup } from './cluster-target.js';

interface ScenarioBase {
  /** Scenario name, as the guest prints it. */
  name: string;
  /** Test title. */
  title: string;
  /** Hard bound on the guest run (boot included); qemu is killed after it. */
  timeoutMs: number;
  /** What the guest does; portals, IQN, LUN and size come from the running target. */
  guest: Omit<GuestScenario, 'name' | 'portals' | 'iqn' | 'lun' | 'sizeBytes'>;
  /** In the CI set (TABULA_E2E_SCENARIOS=ci): the scenarios that fit CI's time budget (docs/e2e-linux.md). */
  ci?: boolean;
}

export interface TargetScenario extends ScenarioBase {
  kind: 'target';
  /** How the target is set up (its kind comes from TABULA_E2E_TARGET). */
  target: Omit<TargetOptions, 'kind' | 'label'>;
}

export interface ClusterScenario extends ScenarioBase {
  kind: 'cluster';
  cluster: ClusterSetup;
}

export type E2eScenario = TargetScenario | ClusterScenario;

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
    kind: 'target',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE },
    guest: { workload: 'basic' },
  },
  {
    name: 'chap',
    title: 'one-way CHAP (wrong secret and no CHAP are refused)',
    kind: 'target',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE, chap: CHAP },
    guest: { workload: 'basic', chap: CHAP, negativeAuth: true },
  },
  {
    name: 'mutual-chap',
    title: 'mutual CHAP (a target answering with the wrong secret is refused)',
    kind: 'target',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE, chap: CHAP, mutualChap: MUTUAL },
    guest: { workload: 'basic', chap: CHAP, mutualChap: MUTUAL, negativeAuth: true },
  },
  {
    name: 'digests',
    title: 'CRC32C header and data digests',
    kind: 'target',
    timeoutMs: TIMEOUT_MS,
    target: { sizeBytes: SIZE },
    guest: { workload: 'basic', digests: true },
  },
  {
    kind: 'cluster',
    name: 'multipath',
    ci: true,
    title: 'dm-multipath over two agents: one WWID, ALUA on both paths, SIGKILL one agent under I/O, path comes back',
    // Boot, two logins, mkfs, I/O across the outage (~5 s to fail the path),
    // agent restart (a tsx start takes 5-20 s on a loaded machine), fsck.
    timeoutMs: 480_000,
    cluster: { agents: ['a', 'b'], vdiskSizeBytes: 128 * MIB, prefill: true, holdTimeoutS: 30 },
    guest: { workload: 'multipath', env: { TABULA_KILL_AGENT: 'b' } },
  },
  {
    kind: 'cluster',
    name: 'fstrim',
    ci: true,
    title: 'fstrim on ext4 turns into UNMAP and the thin vdisk allocation drops',
    timeoutMs: TIMEOUT_MS,
    cluster: { agents: ['a'], vdiskSizeBytes: 128 * MIB },
    guest: { workload: 'fstrim' },
  },
  {
    kind: 'cluster',
    name: 'snapshot',
    ci: true,
    title: 'snapshot of a mounted ext4 (two exporting agents): its clone mounts after journal replay with the synced tree',
    timeoutMs: TIMEOUT_MS,
    cluster: { agents: ['a', 'b'], vdiskSizeBytes: 128 * MIB },
    guest: { workload: 'snapshot' },
  },
  {
    kind: 'cluster',
    name: 'alua',
    ci: true,
    title: 'ALUA over two agents: RTPG lists both groups, dm-multipath prefers the optimized one, fails over when it is SIGKILLed and back',
    // As multipath: boot, two logins, mkfs, the outage, an agent restart, fsck.
    timeoutMs: 480_000,
    cluster: { agents: ['a', 'b'], vdiskSizeBytes: 128 * MIB, prefill: true, holdTimeoutS: 30, alua: { b: 'non-optimized' } },
    guest: { workload: 'alua' },
  },
  {
    kind: 'cluster',
    name: 'persist',
    ci: true,
    title: 'persistent reservations across two agents: one path registers and reserves, the other sees it and gets RESERVATION CONFLICT',
    timeoutMs: TIMEOUT_MS,
    cluster: { agents: ['a', 'b'], vdiskSizeBytes: 128 * MIB },
    guest: { workload: 'persist' },
  },
  {
    kind: 'cluster',
    name: 'storage-outage',
    ci: true,
    title: "ext4 on a vdisk whose containers are network LUNs (the agent's own initiator to a `tabula target` storage node): a 20 s storage-node outage under writes, no I/O error, checksums equal, fsck clean",
    // Boot, mkfs, the outage (20 s plus the target's restart), writes after it, fsck.
    timeoutMs: 480_000,
    // The hold outlasts the outage: the agent holds the guest's writes, never fails them.
    // Thin, not prefilled: a first write during the outage finds its only
    // room on the storage node that is down, and waits for it (held) instead
    // of failing as full.
    cluster: { agents: ['a'], vdiskSizeBytes: 128 * MIB, holdTimeoutS: 60, networkLuns: { luns: 2, lunSizeBytes: 128 * MIB } },
    guest: { workload: 'storage_outage', env: { TABULA_OUTAGE_S: '20' } },
  },
  {
    kind: 'cluster',
    name: 'mirror-outage',
    // Not in the CI set: 110 s on a quiet machine (load average 4), 4 to 7
    // minutes at load average 8 to 17: over the ~90 s one more CI scenario
    // may cost (docs/e2e-linux.md).
    title:
      'ext4 on a 2-copy thick vdisk whose legs are network LUNs of two storage nodes (two failure domains): one node SIGKILLed during a 200 MiB write, no I/O error; the node comes back and is resynced; checksums (read from both copies) equal, fsck clean',
    // Boot, mkfs, 200 MiB through TCG and the slirp relay (the slowest part:
    // 140 s of a 410 s guest run at load average 12), the agent's hold before
    // it gives up on the dead node's legs, reading it all back, fsck.
    timeoutMs: 720_000,
    // The hold (also the agent's iSCSI hold: how long the dead node's commands
    // are retried before a leg fault) is short so the stall is; the guest's
    // SCSI timeout outlasts it. Thick: no first write needs an allocation.
    cluster: {
      agents: ['a'],
      vdiskSizeBytes: 384 * MIB,
      holdTimeoutS: 10,
      copies: 2,
      thick: true,
      networkLuns: { nodes: 2, luns: 1, lunSizeBytes: 448 * MIB },
    },
    guest: { workload: 'mirror_outage', env: { TABULA_KILL_NODE: '1', TABULA_BIG_MIB: '200' } },
  },
];
