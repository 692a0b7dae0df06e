import { expect } from 'chai';
import { agentRows } from '../../../src/cli/agents.js';
import { containerRows } from '../../../src/cli/container.js';
import type { AgentInfo, ContainerInfo } from '../../../src/wire/proto-types.js';

const CA = 'aaaaaaaa-0000-4000-8000-00000000000a';
const CB = 'bbbbbbbb-0000-4000-8000-00000000000b';

describe('cli: agent ls and container ls show hosts and reachability', () => {
  it('agent ls: number, host, and the containers an agent reports unreachable', () => {
    const agents: AgentInfo[] = [
      { name: 'ha', number: 1, host: 'host-a', online: true, lastSeen: 't', portals: ['10.0.0.1:3260'], containers: [CA, CB], unreachable: [`${CB}: iSCSI session down`] },
      { name: 'hb', number: 2, host: '', online: false, lastSeen: '', portals: [], containers: [] },
    ];
    const lines = agentRows(agents).trimEnd().split('\n').map((l) => l.split(/\s+/));
    expect(lines).to.deep.equal([
      ['NAME', 'NUMBER', 'HOST', 'STATUS', 'LAST', 'SEEN', 'PORTALS', 'CONTAINERS'],
      ['ha', '1', 'host-a', 'online', 't', '10.0.0.1:3260', 'aaaaaaaa,bbbbbbbb(unreachable)'],
      ['hb', '2', '-', 'offline', '-', '-', '-'],
    ]);
  });

  it('container ls: which agents reach it and which report it unreachable', () => {
    const c: ContainerInfo = {
      id: CA,
      path: 'iscsi://10.0.0.9:3260/iqn.2026-11.org.example:st1/0',
      size: 9 << 20,
      dataOffset: 1 << 20,
      segmentSize: 1 << 20,
      state: 'online',
      segmentsTotal: 8,
      segmentsUsed: 0,
      agents: ['ha', 'hb'],
      unreachable: ['hb: connect ECONNREFUSED'],
      shared: true,
      capacityBytes: 8 << 20,
      allocatedBytes: 0,
      sharedBytes: 0,
      exclusiveBytes: 0,
      freeBytes: 8 << 20,
    };
    const row = containerRows([c]).trimEnd().split('\n')[1]!.split(/\s+/);
    expect(row.at(-1)).to.equal('ha,hb(unreachable)');
  });
});
