// The all-in-one node (`tabula up`, and the all-in-one systemd unit through
// run.ts): the whole system on one machine in one process — controller,
// one sparse container, one agent named `local`, and a thin vdisk exported as
// LUN 0 — with the embedded defaults (docs/architecture.md,
// "Names other tools rely on"). Every step looks
// first at what an earlier run left (database, container, vdisk, export) and
// reuses it, so restarting serves the same data.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startAgent, formatAddress, type AgentHandle } from '../agent/index.js';
import type { AgentIscsiAuth } from '../agent/targets.js';
import { initContainer, scanContainers, type FoundContainer } from '../container/index.js';
import { defaultTargetIqn } from '../controller/admin.js';
import { startController, type ControllerHandle } from '../controller/daemon.js';
import { formatSize, parseHostPort } from '../util/size.js';
import { log } from '../util/log.js';
import { APPLIANCE_DEFAULTS } from './appliance-defaults.js';

export { APPLIANCE_DEFAULTS } from './appliance-defaults.js';

/** Sparse container room: twice the vdisk, at least 4 GiB (costs nothing until written). */
export function containerSizeFor(vdiskSize: number): number {
  return Math.max(2 * vdiskSize, 4 * 1024 ** 3);
}

export interface ApplianceOptions {
  /** Data directory (default ./data). */
  data?: string;
  /** Controller admin/agent API, HOST:PORT (default 127.0.0.1:7360; port 0 picks one). */
  controllerListen?: string;
  /** iSCSI portal, HOST:PORT (default 127.0.0.1:3260; port 0 picks one). */
  portal?: string;
  /** Size of disk0 in bytes when it is created (default 1 GiB); a larger one on a later run grows it. */
  size?: number;
  /** Shared secret, needed when the controller listens beyond loopback. */
  token?: string;
  /** How long to wait for the agent to register and load the table (default 30 s). */
  readyTimeoutMs?: number;
  holdTimeoutMs?: number;
  /** CHAP for the agent's targets and discovery. */
  iscsiAuth?: AgentIscsiAuth;
  /** Prometheus endpoints (HOST:PORT); none when omitted. */
  controllerMetricsListen?: string;
  agentMetricsListen?: string;
}

export interface ApplianceHandle {
  /** iscsi://HOST:PORT/IQN/LUN of disk0, being served. */
  readonly url: string;
  readonly controller: ControllerHandle;
  readonly agent: AgentHandle;
  readonly dataDir: string;
  readonly targetIqn: string;
  close(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, timeoutMs: number, ready: () => boolean): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > until) throw new Error(`tabula up: ${what} did not happen within ${timeoutMs / 1000} s`);
    await sleep(50);
  }
}

/** The containers under DIR/containers/, making the first one on a fresh data dir. */
async function ensureContainers(dir: string, vdiskSize: number): Promise<FoundContainer[]> {
  const pattern = join(dir, '*');
  const scan = await scanContainers([pattern]);
  for (const p of scan.problems) if (p.kind !== 'no-match') log.warn(`tabula up: ignoring ${p.path}: ${p.message}`);
  if (scan.found.length > 0) return scan.found;
  const path = join(dir, 'container-0.img');
  const r = await initContainer(path, { size: containerSizeFor(vdiskSize) });
  log.info(`tabula up: created container ${r.label.id} at ${path} (${formatSize(r.label.size)} sparse)`);
  return (await scanContainers([pattern])).found;
}

export async function startAppliance(opts: ApplianceOptions = {}): Promise<ApplianceHandle> {
  const dataDir = resolve(opts.data ?? APPLIANCE_DEFAULTS.data);
  const containerDir = join(dataDir, 'containers');
  const wantSize = opts.size ?? APPLIANCE_DEFAULTS.size;
  const readyMs = opts.readyTimeoutMs ?? 30_000;
  const name = APPLIANCE_DEFAULTS.vdisk;
  const agentName = APPLIANCE_DEFAULTS.agentName;
  // Bad addresses fail here, with their own message, before anything is created.
  parseHostPort(opts.controllerListen ?? APPLIANCE_DEFAULTS.controllerListen, 7360);
  parseHostPort(opts.portal ?? APPLIANCE_DEFAULTS.portal, 3260);
  mkdirSync(containerDir, { recursive: true });

  const containers = await ensureContainers(containerDir, wantSize);
  const controller = await startController({
    dbPath: join(dataDir, 'controller.db'),
    listen: opts.controllerListen ?? APPLIANCE_DEFAULTS.controllerListen,
    token: opts.token,
    metricsListen: opts.controllerMetricsListen,
  });
  let agent: AgentHandle | undefined;
  try {
    const admin = controller.admin;
    // Registered before the agent starts: the controller refuses claims on unknown containers.
    const known = new Set(admin.ListContainers({}).containers.map((c) => c.id));
    for (const c of containers) {
      if (known.has(c.id)) continue;
      admin.AddContainer({ id: c.id, path: c.path, size: c.size, dataOffset: c.dataOffset, segmentSize: c.segmentSize });
    }

    agent = await startAgent({
      controller: controller.address,
      name: agentName,
      portals: [opts.portal ?? APPLIANCE_DEFAULTS.portal],
      containers: [join(containerDir, '*')],
      token: opts.token,
      holdTimeoutMs: opts.holdTimeoutMs,
      iscsiAuth: opts.iscsiAuth,
      metricsListen: opts.agentMetricsListen,
    });
    const ids = containers.map((c) => c.id);
    await waitFor(`agent ${agentName} registering with the controller`, readyMs, () => {
      const a = admin.ListAgents({}).agents.find((x) => x.name === agentName);
      return a !== undefined && a.online && ids.every((id) => a.containers.includes(id));
    });

    let vdisk = admin.ListVdisks({}).vdisks.find((v) => v.name === name);
    if (!vdisk) {
      vdisk = admin.CreateVdisk({ name, size: wantSize });
    } else if (opts.size !== undefined && Math.ceil(opts.size / vdisk.segmentSize) * vdisk.segmentSize > vdisk.size) {
      vdisk = await admin.ResizeVdisk({ name, size: opts.size });
      log.info(`tabula up: vdisk ${name} grown to ${formatSize(vdisk.size)}`);
    } else if (opts.size !== undefined && opts.size < vdisk.size) {
      log.warn(`tabula up: vdisk ${name} stays ${formatSize(vdisk.size)}; --size ${formatSize(opts.size)} would shrink it`);
    }
    const targetIqn = defaultTargetIqn(name);
    const existing = admin.ListExports({ vdisk: name, agent: agentName }).exports[0];
    if (!existing) admin.AddExport({ vdisk: name, agent: agentName, targetIqn, lun: APPLIANCE_DEFAULTS.lun });
    const exp = existing ?? { targetIqn, lun: APPLIANCE_DEFAULTS.lun };

    const vdiskId = vdisk.id;
    const a = agent;
    await waitFor(`agent ${agentName} loading the table of ${name}`, readyMs, () =>
      a.exports().some((e) => e.vdiskId === vdiskId && e.tableVersion !== null && !e.fenced),
    );
    const portal = a.portals[0];
    if (!portal) throw new Error('tabula up: the agent has no portal');
    const url = `iscsi://${formatAddress(portal)}/${exp.targetIqn}/${exp.lun}`;
    let closing: Promise<void> | undefined;
    return {
      url,
      controller,
      agent: a,
      dataDir,
      targetIqn: exp.targetIqn,
      close() {
        closing ??= (async () => {
          await a.close().catch((e: unknown) => log.error(`tabula up: stopping the agent: ${(e as Error).message}`));
          await controller.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    await agent?.close().catch(() => undefined);
    await controller.close();
    throw err;
  }
}
