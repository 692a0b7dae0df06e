import { expect } from 'chai';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ControllerDb } from '../../../src/controller/db.js';
import { MIGRATIONS, migrate } from '../../../src/controller/schema.js';
import { CA, CB, MiB, tempDir } from './helpers.js';

describe('controller db: agents\' hosts and container reachability (issue 15)', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => {
    t = tempDir();
  });
  afterEach(() => t.cleanup());

  it('keeps an upgraded database\'s agents and claims: no host, every claim reachable', () => {
    const path = join(t.dir, 'old.db');
    const raw = new Database(path);
    migrate(raw, MIGRATIONS.slice(0, MIGRATIONS.length - 1));
    raw.exec(`INSERT INTO containers (id, path, size, data_offset, segment_size, segments_total, added) VALUES ('${CA}', '/c/a', ${9 * MiB}, ${MiB}, ${MiB}, 8, 'now')`);
    raw.exec(`INSERT INTO agents (name, portals, last_seen, registered, number) VALUES ('a1', '[]', 'now', 'now', 1)`);
    raw.exec(`INSERT INTO agent_containers (agent, container_id, path) VALUES ('a1', '${CA}', '/c/a')`);
    raw.close();
    const db = new ControllerDb(path);
    expect(db.agent('a1')?.host).to.equal('');
    expect(db.agentClaims('a1')).to.deep.equal([{ id: CA, path: '/c/a', reachable: true, error: '' }]);
    expect(db.agentContainers('a1')).to.deep.equal([CA]);
    db.close();
  });

  it('records the host and each claim\'s reachability; agentContainers lists only what the agent reaches now', () => {
    const db = new ControllerDb(join(t.dir, 'c.db'));
    for (const id of [CA, CB]) db.insertContainer({ id, path: `/c/${id[0]}`, size: 9 * MiB, dataOffset: MiB, segmentSize: MiB, segmentsTotal: 8, state: 'online' });
    db.registerAgent('a1', ['127.0.0.1:3260'], [{ id: CA, path: '/c/a' }, { id: CB, path: '/c/b', reachable: false, error: 'iSCSI session down' }], 'host-1');
    db.registerAgent('a2', [], [{ id: CB, path: '/c/b' }], 'host-2');
    expect(db.agent('a1')?.host).to.equal('host-1');
    expect(db.agentContainers('a1')).to.deep.equal([CA]);
    expect(db.containerReach(CB)).to.deep.equal([
      { agent: 'a1', host: 'host-1', reachable: false, error: 'iSCSI session down' },
      { agent: 'a2', host: 'host-2', reachable: true, error: '' },
    ]);
    db.updateAgentContainers('a1', [{ id: CB, path: '/c/b' }]);
    expect(db.agentClaims('a1')).to.deep.equal([{ id: CB, path: '/c/b', reachable: true, error: '' }]);
    // A new registration replaces the host too.
    db.registerAgent('a1', [], [], 'host-3');
    expect([db.agent('a1')?.host, db.agentClaims('a1')]).to.deep.equal(['host-3', []]);
    db.close();
  });
});
