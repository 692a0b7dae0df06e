// The controller's scrape-time gauges without any agent: containers, thick
// allocation, and a migration that stays running because no agent can copy.
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startController, type ControllerHandle } from '../../../src/controller/daemon.js';
import { valueOf } from './exposition.js';
import { metrics, untilValue } from './scrape.js';

const MiB = 1 << 20;
const CA = 'aaaaaaaa-0000-4000-8000-00000000000a';
const CB = 'bbbbbbbb-0000-4000-8000-00000000000b';

describe('metrics: controller gauges', function () {
  this.timeout(15_000);
  let dir: string;
  let ctl: ControllerHandle;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-metrics-ctl-'));
    ctl = await startController({ dbPath: join(dir, 'controller.db'), listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0' });
    for (const id of [CA, CB]) ctl.admin.AddContainer({ id, path: `/dev/fake/${id.slice(0, 8)}`, size: 9 * MiB, dataOffset: MiB, segmentSize: MiB });
  });

  after(async () => {
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows containers, their free segments, and a thick vdisk\'s allocations', async () => {
    const e0 = await metrics(ctl.metricsAddress as string);
    expect(valueOf(e0, 'tabula_controller_container_segments', { container: CA })).to.equal(8);
    expect(valueOf(e0, 'tabula_controller_container_free_segments', { container: CB })).to.equal(8);
    expect(valueOf(e0, 'tabula_controller_agents_connected')).to.equal(0);

    ctl.admin.CreateVdisk({ name: 'thick', size: 4 * MiB, thick: true });
    const e = await metrics(ctl.metricsAddress as string);
    expect(valueOf(e, 'tabula_controller_segments_allocated_total')).to.equal(4);
    const freeA = valueOf(e, 'tabula_controller_container_free_segments', { container: CA }) as number;
    const freeB = valueOf(e, 'tabula_controller_container_free_segments', { container: CB }) as number;
    expect(freeA + freeB).to.equal(12);
    expect(valueOf(e, 'tabula_controller_table_version', { vdisk: 'thick' })).to.equal(1);
    expect(valueOf(e, 'tabula_controller_table_pushes_total', { kind: 'full' })).to.equal(0);
  });

  it('shows, per agent and container, whether the agent reaches it (tabula_agent_container_reachable)', async () => {
    // As Register and ContainerUpdate record them.
    ctl.db.registerAgent('ha', [], [{ id: CA, path: '/dev/fake/a' }, { id: CB, path: '/dev/fake/b', reachable: false, error: 'iSCSI session down' }], 'host-a');
    const e = await metrics(ctl.metricsAddress as string);
    expect(valueOf(e, 'tabula_agent_container_reachable', { agent: 'ha', container: CA })).to.equal(1);
    expect(valueOf(e, 'tabula_agent_container_reachable', { agent: 'ha', container: CB })).to.equal(0);
    ctl.db.updateAgentContainers('ha', [{ id: CB, path: '/dev/fake/b' }]);
    const after = await metrics(ctl.metricsAddress as string);
    expect(valueOf(after, 'tabula_agent_container_reachable', { agent: 'ha', container: CB })).to.equal(1);
    expect(valueOf(after, 'tabula_agent_container_reachable', { agent: 'ha', container: CA })).to.equal(undefined);
  });

  it('shows a running migration\'s progress, and drops it once cancelled', async () => {
    // Spread evenly over both containers: the segments on CA are the ones to move.
    const onA = 8 - (valueOf(await metrics(ctl.metricsAddress as string), 'tabula_controller_container_free_segments', { container: CA }) as number);
    expect(onA).to.be.greaterThan(0);
    ctl.admin.MigrateVdisk({ vdisk: 'thick', toContainer: CB });
    const e = await untilValue(ctl.metricsAddress as string, 'tabula_controller_migration_segments_total', { vdisk: 'thick' }, onA);
    // No agent online to copy: nothing moves.
    expect(valueOf(e, 'tabula_controller_migration_segments_done', { vdisk: 'thick' })).to.equal(0);
    expect(valueOf(e, 'tabula_controller_migration_bytes_done', { vdisk: 'thick' })).to.equal(0);
    await ctl.admin.CancelMigration({ vdisk: 'thick' });
    const after = await metrics(ctl.metricsAddress as string);
    expect(valueOf(after, 'tabula_controller_migration_segments_total', { vdisk: 'thick' })).to.equal(undefined);
  });
});
