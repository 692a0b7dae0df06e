// The ALUA fields on the wire (proto/tabula.proto): Export.port_groups and
// own_port_group, Welcome.agent_number, Heartbeat.draining, AddExportRequest
// and ExportInfo alua, survive an encode/decode through protobufjs with the
// numbers and names the TypeScript shapes use.
import { expect } from 'chai';
import { messageType } from '../../../src/wire/grpc.js';
import { AluaState } from '../../../src/wire/proto-types.js';

const TO_OBJECT = { longs: Number, enums: Number, defaults: true, arrays: true, objects: true, oneofs: true };

function roundTrip(type: string, m: object): Record<string, unknown> {
  const t = messageType(type);
  const bytes = t.encode(t.fromObject(m as Record<string, unknown>)).finish();
  return t.toObject(t.decode(bytes), TO_OBJECT);
}

describe('wire: ALUA fields', () => {
  it('Export carries every port group with its SPC-4 state code and relative ports, and which group is the agent own', () => {
    const e = roundTrip('Export', {
      vdiskId: 'v',
      portGroups: [
        { id: 1, state: AluaState.ActiveOptimized, relativePortIds: [17, 18], agent: 'a' },
        { id: 4095, state: AluaState.Transitioning, relativePortIds: [65535], agent: 'b' },
        { id: 2, state: AluaState.Unavailable, relativePortIds: [33], agent: 'c' },
      ],
      ownPortGroup: 4095,
    });
    expect(e.portGroups).to.deep.equal([
      { id: 1, state: 0, relativePortIds: [17, 18], agent: 'a' },
      { id: 4095, state: 15, relativePortIds: [65535], agent: 'b' },
      { id: 2, state: 3, relativePortIds: [33], agent: 'c' },
    ]);
    expect(e.ownPortGroup).to.equal(4095);
    // An Export without them (an older controller): no groups, group 0.
    expect(roundTrip('Export', { vdiskId: 'v' })).to.include({ ownPortGroup: 0 }).and.to.have.deep.property('portGroups', []);
  });

  it('Welcome.agent_number, Heartbeat.draining, AddExportRequest.alua, ExportInfo.alua and alua_state, AgentInfo.number', () => {
    expect(roundTrip('Welcome', { agentNumber: 7 }).agentNumber).to.equal(7);
    expect(roundTrip('Heartbeat', { seq: 1, draining: true }).draining).to.equal(true);
    expect(roundTrip('AddExportRequest', { alua: 'non-optimized' }).alua).to.equal('non-optimized');
    expect(roundTrip('ExportInfo', { alua: 'optimized', aluaState: 'unavailable' })).to.include({ alua: 'optimized', aluaState: 'unavailable' });
    expect(roundTrip('AgentInfo', { number: 3 }).number).to.equal(3);
  });
});
