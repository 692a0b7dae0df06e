// The controller's TableFull for a mirrored vdisk, in both forms, through
// the real protobuf encoding, rebuilt by the agent's TableAssembly: the same
// table, extra legs included.
import { expect } from 'chai';
import { TableAssembly } from '../../../src/agent/table-assembly.js';
import type { AgentLink } from '../../../src/controller/agent-link.js';
import type { ControllerDb } from '../../../src/controller/db.js';
import { TableChanges } from '../../../src/controller/table-changes.js';
import { MappingTable, SegmentState } from '../../../src/table/index.js';
import { decodeMessage, encodeMessage, messageType } from '../../../src/wire/grpc.js';
import type { ControllerMessage, TableFull } from '../../../src/wire/proto-types.js';

const C1 = '11111111-aaaa-4bbb-8ccc-000000000001';
const C2 = '22222222-aaaa-4bbb-8ccc-000000000002';
const C3 = '33333333-aaaa-4bbb-8ccc-000000000003';
const N = SegmentState.Normal;
const VD = 'vd-1';

function mirroredTable(): MappingTable {
  const t = new MappingTable({ segmentCount: 64, version: 5, name: 'm' });
  t.setRange(0, 20, { state: N, container: C1, offset: 0, legs: [{ container: C2, offset: 30 }] });
  t.setRange(20, 4, { state: N, container: C2, offset: 7, legs: [{ container: C3, offset: 1 }, { container: C1, offset: 50 }] });
  t.setRange(30, 10, { state: N, container: C3, offset: 90 });
  for (let s = 40; s < 48; s++) t.set(s, { state: SegmentState.NoWrite, container: C1, offset: 100 + 2 * s, legs: [{ container: C3, offset: s }] });
  return t;
}

/** TableChanges over a stub db that holds one table; the link records what is sent, through the real encoding. */
function fullTablesOf(t: MappingTable, runs: boolean): TableFull[] {
  const db = { vdisk: (id: string) => (id === VD ? { id, name: 'm' } : undefined), loadTable: () => t.clone(), luState: () => undefined };
  const changes = new TableChanges(db as unknown as ControllerDb, {} as never, {} as never, {} as never, 1000, {} as never);
  const C = messageType('ControllerMessage');
  const sent: TableFull[] = [];
  const link = {
    readsTableRuns: runs,
    send(m: ControllerMessage): boolean {
      const back = decodeMessage<ControllerMessage>(C, encodeMessage(C, m));
      if (back.body === 'tableFull') sent.push(back.tableFull);
      return true;
    },
    noteSent() {},
  };
  changes.sendFullTable(link as unknown as AgentLink, VD);
  return sent;
}

async function assemble(msgs: TableFull[]): Promise<MappingTable> {
  const a = new TableAssembly(msgs[0]!, 'm');
  for (const m of msgs) await a.add(m);
  return a.finish();
}

describe('controller: TableFull of a mirrored vdisk', () => {
  it('the run form carries the legs and rebuilds the same table', async () => {
    const t = mirroredTable();
    const msgs = fullTablesOf(t, true);
    expect(msgs[0]!.runLegCounts).to.have.lengthOf(msgs[0]!.runCounts!.length);
    const u = await assemble(msgs);
    expect(u.equals(t)).to.equal(true);
    expect(u.locationsOf(22)).to.deep.equal([
      { container: C2, offset: 9 },
      { container: C3, offset: 3 },
      { container: C1, offset: 52 },
    ]);
  });

  it('the extents form carries the legs, names every leg container, and rebuilds the same table', async () => {
    const t = mirroredTable();
    const msgs = fullTablesOf(t, false);
    expect(msgs).to.have.lengthOf(1);
    expect([...msgs[0]!.containers].sort()).to.deep.equal([C1, C2, C3]);
    expect((await assemble(msgs)).equals(t)).to.equal(true);
  });

  it('a one-copy table sends no leg fields', () => {
    const t = new MappingTable({ segmentCount: 8, version: 1 });
    t.setRange(0, 4, { state: N, container: C1, offset: 0 });
    const [m] = fullTablesOf(t, true);
    expect([m!.runLegCounts, m!.runLegContainers, m!.runLegOffsets]).to.deep.equal([[], [], []]);
    const [e] = fullTablesOf(t, false);
    expect(e!.extents[0]).to.deep.equal({ first: 0, count: 4, state: N, container: C1, offset: 0 });
  });
});
