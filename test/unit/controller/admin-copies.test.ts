import { expect } from 'chai';
import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { Admin, AdminError } from '../../../src/controller/admin.js';
import { Controller } from '../../../src/controller/controller.js';
import { ControllerDb } from '../../../src/controller/db.js';
import { checkInvariants } from '../../../src/controller/check.js';
import { containerDomains } from '../../../src/controller/domains.js';
import { SegmentState } from '../../../src/table/index.js';
import { CA, CB, CC, MiB, tempDir } from './helpers.js';

const errorOf = (fn: () => unknown): AdminError => {
  try {
    fn();
  } catch (e) {
    if (e instanceof AdminError) return e;
    throw e;
  }
  throw new Error('no error');
};

describe('controller admin: failure domains and vdisk copies', () => {
  let t: ReturnType<typeof tempDir>;
  let db: ControllerDb;
  let ctrl: Controller;
  let admin: Admin;
  const add = (id: string, segs: number, domain?: string) =>
    admin.AddContainer({ id, path: `/c/${id.slice(0, 1)}`, size: (segs + 1) * MiB, dataOffset: MiB, ...(domain === undefined ? {} : { domain }) });

  beforeEach(() => {
    t = tempDir();
    db = new ControllerDb(join(t.dir, 'c.db'));
    ctrl = new Controller(db, { ackTimeoutMs: 60_000 });
    admin = new Admin(ctrl);
  });
  afterEach(() => {
    ctrl.close();
    db.close();
    t.cleanup();
  });

  it('container add --domain, set-domain and ls show each container its failure domain', () => {
    expect(add(CA, 8, 'rack-1').domain).to.equal('rack-1');
    expect(add(CB, 8).domain).to.equal(`container:${CB}`);
    expect(admin.SetContainerDomain({ id: CB.slice(0, 8), domain: 'rack-2' }).domain).to.equal('rack-2');
    expect(admin.ListContainers({}).containers.map((c) => c.domain)).to.deep.equal(['rack-1', 'rack-2']);
    expect(admin.SetContainerDomain({ id: CB, domain: '' }).domain).to.equal(`container:${CB}`);
    expect(errorOf(() => admin.SetContainerDomain({ id: CB, domain: 'bad name' })).code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(errorOf(() => admin.SetContainerDomain({ id: 'nope', domain: 'x' })).code).to.equal(grpc.status.NOT_FOUND);
    expect(errorOf(() => add(CC, 8, '-x')).message).to.match(/bad failure domain "-x"/);
  });

  it('vdisk create --copies: thin records the copies and allocates nothing; 0 or absent is 1; out of range refused', () => {
    add(CA, 8, 'd1');
    const v = admin.CreateVdisk({ name: 'm', size: 4 * MiB, copies: 2 });
    expect(v).to.include({ copies: 2, segmentsAllocated: 0, thin: true });
    expect(admin.ShowVdisk({ name: 'm' }).copies).to.equal(2);
    expect(admin.CreateVdisk({ name: 'one', size: MiB }).copies).to.equal(1);
    expect(admin.CreateVdisk({ name: 'zero', size: MiB, copies: 0 }).copies).to.equal(1);
    const e = errorOf(() => admin.CreateVdisk({ name: 'four', size: MiB, copies: 4 }));
    expect(e.code).to.equal(grpc.status.INVALID_ARGUMENT);
    expect(e.message).to.equal('vdisk four: --copies 4 out of range 1-3');
  });

  it('a thick mirrored vdisk gets every copy of every segment now, in distinct domains, as runs', () => {
    add(CA, 8, 'd1');
    add(CB, 8, 'd2');
    add(CC, 8, 'd3');
    const v = admin.CreateVdisk({ name: 'm', size: 6 * MiB, copies: 3, thick: true });
    expect(v).to.include({ copies: 3, segmentsAllocated: 6 });
    const domains = containerDomains(db);
    for (let s = 0; s < 6; s++) {
      const locs = db.locationsOfSegment(v.id, s);
      expect(locs).to.have.length(3);
      expect(new Set(locs.map((l) => domains.get(l.containerId))).size).to.equal(3);
    }
    const table = ctrl.tables.table(v.id);
    expect(table.runEnd(0)).to.equal(6);
    expect(table.stateOf(0)).to.equal(SegmentState.Normal);
    expect(db.legShortfalls('degraded')).to.deep.equal([]);
    expect(checkInvariants(db)).to.deep.equal([]);
    expect(admin.ListContainers({}).containers.map((c) => c.segmentsUsed)).to.deep.equal([6, 6, 6]);
  });

  it('refuses a thick mirrored vdisk, in one line, when fewer domains than copies have room; takes nothing', () => {
    add(CA, 8, 'd1');
    add(CB, 8, 'd1');
    add(CC, 3, 'd2');
    const e = errorOf(() => admin.CreateVdisk({ name: 'm', size: 4 * MiB, copies: 2, thick: true }));
    expect(e.code).to.equal(grpc.status.FAILED_PRECONDITION);
    expect(e.message).to.equal(
      'vdisk m: 2 copies of 4 segments need room in 2 failure domains, but only 1 has 4 free segments (free per domain: d1 16, d2 3); ' +
        'add containers in other domains (container add --domain) or use fewer copies',
    );
    expect(e.message).to.not.include('\n');
    expect(admin.ListVdisks({}).vdisks).to.deep.equal([]);
    expect(ctrl.allocator.freeSegments(CC)).to.equal(3);
    // It fits with three segments, and a thin one is created whatever the domains.
    expect(admin.CreateVdisk({ name: 'fits', size: 3 * MiB, copies: 2, thick: true }).segmentsAllocated).to.equal(3);
    expect(admin.CreateVdisk({ name: 'thin', size: 64 * MiB, copies: 3 }).copies).to.equal(3);
  });

  it('a one-copy thick vdisk is allocated as before: no legs', () => {
    add(CA, 8, 'd1');
    add(CB, 8, 'd2');
    const v = admin.CreateVdisk({ name: 'plain', size: 4 * MiB, thick: true });
    expect(v.copies).to.equal(1);
    expect(db.legsOfVdisk(v.id)).to.deep.equal([]);
    expect(ctrl.tables.table(v.id).maxLegs).to.equal(1);
  });
});
