import { expect } from 'chai';
import { containerRows } from '../../../src/cli/container.js';
import { vdiskDetail, vdiskRows } from '../../../src/cli/vdisk.js';
import type { ContainerInfo, VdiskInfo } from '../../../src/wire/proto-types.js';

const MiB = 1 << 20;

function container(id: string, domain: string): ContainerInfo {
  return {
    id,
    path: `/c/${id}`,
    size: 9 * MiB,
    dataOffset: MiB,
    segmentSize: MiB,
    state: 'online',
    segmentsTotal: 8,
    segmentsUsed: 0,
    agents: [],
    capacityBytes: 8 * MiB,
    allocatedBytes: 0,
    sharedBytes: 0,
    exclusiveBytes: 0,
    freeBytes: 8 * MiB,
    domain,
  };
}

function vdisk(name: string, copies: number | undefined): VdiskInfo {
  return {
    id: `id-${name}`,
    name,
    size: 4 * MiB,
    blockSize: 512,
    segmentSize: MiB,
    thin: true,
    version: 1,
    created: 't',
    segmentCount: 4,
    segmentsAllocated: 0,
    allocatedBytes: 0,
    states: { zero: 4 },
    exports: [],
    sharedBytes: 0,
    exclusiveBytes: 0,
    kind: 'vdisk',
    parent: '',
    parentId: '',
    migration: null,
    ...(copies === undefined ? {} : { copies }),
  };
}

const cells = (text: string): string[][] => text.trimEnd().split('\n').map((l) => l.split(/\s{2,}/));

describe('cli: failure domains in container ls, copies in vdisk ls and show', () => {
  it('container ls shows DOMAIN when the containers span domains or one was named', () => {
    const rows = cells(containerRows([container('a', 'rack-1'), container('b', 'iscsi:10.0.0.2')]));
    expect(rows[0]).to.deep.equal(['ID', 'PATH', 'DOMAIN', 'CAPACITY', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'FREE', 'STATE', 'AGENTS']);
    expect(rows.slice(1).map((r) => r[2])).to.deep.equal(['rack-1', 'iscsi:10.0.0.2']);
    expect(cells(containerRows([container('a', 'rack-1')]))[0]).to.include('DOMAIN');
  });

  it('container ls of one container in its derived domain (or from an older controller) is as before mirrors', () => {
    const before = ['ID', 'PATH', 'CAPACITY', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'FREE', 'STATE', 'AGENTS'];
    expect(cells(containerRows([container('a', 'host:h1'), container('b', 'host:h1')]))[0]).to.deep.equal(before);
    const old = container('a', '');
    delete old.domain;
    expect(cells(containerRows([old]))[0]).to.deep.equal(before);
  });

  it('vdisk ls shows COPIES once some vdisk is mirrored, and not otherwise', () => {
    const rows = cells(vdiskRows([vdisk('m', 2), vdisk('p', 1), vdisk('old', undefined)]));
    expect(rows[0]).to.deep.equal(['NAME', 'KIND', 'PROVISIONED', 'ALLOCATED', 'SHARED', 'EXCLUSIVE', 'TYPE', 'COPIES', 'BLOCK', 'SEGMENT', 'VERSION', 'EXPORTS']);
    expect(rows.slice(1).map((r) => r[7])).to.deep.equal(['2', '1', '1']);
    expect(cells(vdiskRows([vdisk('p', 1)]))[0]).to.not.include('COPIES');
  });

  it('vdisk show has the copies', () => {
    expect(vdiskDetail(vdisk('m', 3))).to.match(/^copies:\s+3$/m);
    expect(vdiskDetail(vdisk('old', undefined))).to.match(/^copies:\s+1$/m);
  });
});
