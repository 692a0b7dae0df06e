import { expect } from 'chai';
import type { LuOutcome, LuStateRequest } from '../../../src/scsi/lu-api.js';
import type { Nexus } from '../../../src/scsi/port.js';
import { Reservations, applyLuRequest, cloneLuReservationState, emptyLuReservationState, type LuReservationState } from '../../../src/scsi/reservations.js';
import { Sense } from '../../../src/scsi/sense.js';
import { luEventFromWire, luEventToWire, luRequestKindFromWire, luRequestKindToWire, luStateFromWire, luStateToWire } from '../../../src/wire/lu-state.js';
import { nexus } from './fake-lu.js';

// The reservation state transition as a pure step (what the controller runs
// for every agent, and the in-process LU for itself), and its wire form.

const i1 = nexus('iqn.2007-10.test:one', 0x23d000000001);
const i2 = nexus('iqn.2007-10.test:two', 0x23d000000002);

function prout(sa: number, type: number, key: bigint, sark: bigint, flags = 0): LuStateRequest {
  const cdb = Buffer.alloc(10);
  cdb[0] = 0x5f;
  cdb[1] = sa;
  cdb[2] = type;
  cdb.writeUInt32BE(24, 5);
  const data = Buffer.alloc(24);
  data.writeBigUInt64BE(key, 0);
  data.writeBigUInt64BE(sark, 8);
  data[20] = flags;
  return { kind: 'prout', cdb, data };
}

const RESERVE6: LuStateRequest = { kind: 'reserve', cdb: Buffer.from([0x16, 0, 0, 0, 0, 0]), data: null };

/** Applies the steps in order; each must succeed. */
function run(steps: [Nexus, LuStateRequest][]): LuReservationState {
  let s = emptyLuReservationState();
  for (const [n, r] of steps) {
    const t = applyLuRequest(s, n, r);
    expect(t.outcome.status, t.outcome.message).to.equal(0);
    s = t.state;
  }
  return s;
}

describe('applyLuRequest: the reservation state as a pure step', () => {
  it('leaves its input alone, and a failed request changes nothing and raises nothing', () => {
    const s = run([[i1, prout(0, 0, 0n, 0xaan)]]);
    const copy = cloneLuReservationState(s);
    const t = applyLuRequest(s, i2, prout(1, 3, 0xbbn, 0n));
    expect(t.outcome.status).to.equal(0x18);
    expect(t).to.include({ changed: false, prChanged: false });
    expect(t.events).to.deep.equal([]);
    expect(s).to.deep.equal(copy);
    const bad = applyLuRequest(s, i1, prout(0, 0, 0xaan, 1n, 0x08));
    expect(bad.outcome.sense).to.deep.equal({ code: Sense.invalidFieldInParameterList, opts: { field: { inCdb: false, byte: 20, bit: 3 } } });
  });

  it('REGISTER and REGISTER AND IGNORE EXISTING KEY bump the generation; key 0 from an unregistered nexus changes nothing', () => {
    const s = run([
      [i1, prout(0, 0, 0n, 0xaan)],
      [i2, prout(6, 0, 0n, 0xbbn)],
    ]);
    expect(s.pr.generation).to.equal(2);
    const t = applyLuRequest(s, nexus('iqn.2007-10.test:three', 3), prout(0, 0, 0n, 0n));
    expect(t).to.include({ changed: false, prChanged: false });
  });

  it('PREEMPT raises REGISTRATIONS PREEMPTED for the preempted nexus only', () => {
    const s = run([
      [i1, prout(0, 0, 0n, 0xaan)],
      [i2, prout(0, 0, 0n, 0xbbn)],
      [i2, prout(1, 1, 0xbbn, 0n)],
    ]);
    const t = applyLuRequest(s, i1, prout(4, 1, 0xaan, 0xbbn));
    expect(t.outcome.status).to.equal(0);
    expect(t.events).to.deep.equal([{ code: Sense.registrationsPreempted, scope: { only: i2 }, abortTasks: false }]);
    expect(t.state.pr.reservation).to.deep.equal({ type: 1, holder: i1.id });
    expect(t.state.pr.registrations.map((r) => r.key)).to.deep.equal([0xaan]);
  });

  it('PREEMPT AND ABORT aborts the preempted nexus\'s tasks, not those of registrants told of a new type', () => {
    const i3 = nexus('iqn.2007-10.test:three', 0x23d000000003);
    const s = run([
      [i1, prout(0, 0, 0n, 0xaan)],
      [i2, prout(0, 0, 0n, 0xbbn)],
      [i3, prout(0, 0, 0n, 0xccn)],
      [i2, prout(1, 5, 0xbbn, 0n)],
    ]);
    // i1 preempts i2 (the holder) with a new type: i2 is preempted (tasks aborted), i3 learns the reservation changed.
    const t = applyLuRequest(s, i1, prout(5, 1, 0xaan, 0xbbn));
    expect(t.outcome.status).to.equal(0);
    expect(t.events).to.deep.equal([
      { code: Sense.registrationsPreempted, scope: { only: i2 }, abortTasks: true },
      { code: Sense.reservationsReleased, scope: { only: i3 }, abortTasks: false },
    ]);
  });

  it('LU reset drops the SPC-2 reservation, keeps persistent ones, and tells every nexus (tasks aborted)', () => {
    const s = run([[i1, RESERVE6]]);
    expect(s.spc2?.id).to.equal(i1.id);
    const t = applyLuRequest(s, i2, { kind: 'lu-reset', cdb: Buffer.alloc(0), data: null });
    expect(t.state.spc2).to.equal(null);
    expect(t.events).to.deep.equal([{ code: Sense.deviceResetOccurred, scope: {}, abortTasks: true }]);
    expect(t.prChanged).to.equal(false);
  });

  it('CLEAR TASK SET tells every other nexus; a lost nexus drops only its own SPC-2 reservation', () => {
    const c = applyLuRequest(emptyLuReservationState(), i1, { kind: 'clear-task-set', cdb: Buffer.alloc(0), data: null });
    expect(c.events).to.deep.equal([{ code: Sense.commandsClearedByAnotherInitiator, scope: { except: i1 }, abortTasks: true }]);
    const s = run([[i1, RESERVE6]]);
    expect(applyLuRequest(s, i2, { kind: 'nexus-lost', cdb: Buffer.alloc(0), data: null }).changed).to.equal(false);
    expect(applyLuRequest(s, i1, { kind: 'nexus-lost', cdb: Buffer.alloc(0), data: null }).state.spc2).to.equal(null);
  });

  it('survives its wire form unchanged (LuState, LuEvent)', () => {
    const s = run([
      [i1, prout(0, 0, 0n, 0xfedcba9876543210n, 0x05)],
      [i1, prout(1, 5, 0xfedcba9876543210n, 0n)],
    ]);
    expect(luStateFromWire(luStateToWire(s))).to.deep.equal(s);
    const spc2 = run([[i2, RESERVE6]]);
    expect(luStateFromWire(luStateToWire(spc2))).to.deep.equal(spc2);
    for (const e of [
      { code: Sense.registrationsPreempted, scope: { only: i2 }, abortTasks: false },
      { code: Sense.commandsClearedByAnotherInitiator, scope: { except: i1 }, abortTasks: true },
      { code: Sense.deviceResetOccurred, scope: {}, abortTasks: true },
    ]) {
      expect(luEventFromWire(luEventToWire(e))).to.deep.equal(e);
    }
  });
});

/** MODE SELECT(10) of the caching page with WCE on or off (PF=1). */
function modeSelectWce(on: boolean): LuStateRequest {
  const page = [0x08, 0x12, on ? 0x04 : 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
  const data = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, ...page]);
  const cdb = Buffer.from([0x55, 0x10, 0, 0, 0, 0, 0, 0, data.length, 0]);
  return { kind: 'mode-select', cdb, data };
}

describe('applyLuRequest: MODE SELECT', () => {
  it('changes the LU state\'s mode pages and tells every other nexus (MODE PARAMETERS CHANGED)', () => {
    const s = emptyLuReservationState();
    const t = applyLuRequest(s, i1, modeSelectWce(false));
    expect(t.outcome).to.deep.equal({ status: 0 });
    expect(t).to.include({ changed: true, prChanged: false });
    expect(t.events).to.deep.equal([{ code: Sense.modeParametersChanged, scope: { except: i1 }, abortTasks: false }]);
    expect(t.state.mode?.map((m) => [m.page, m.subpage, m.values[2]])).to.deep.equal([[0x08, 0, 0]]);
    expect(s.mode).to.equal(undefined);
    // The same values again: nothing changes, nothing to push, no unit attention.
    const again = applyLuRequest(t.state, i2, modeSelectWce(false));
    expect(again).to.include({ changed: false });
    expect(again.events).to.deep.equal([]);
    // Back to the default: the state lists no page.
    expect(applyLuRequest(t.state, i2, modeSelectWce(true)).state.mode).to.deep.equal([]);
  });

  it('refuses a change to a bit that is not changeable, changing nothing', () => {
    const bad = modeSelectWce(false);
    bad.data![8 + 3] = 0x01; // caching page byte 3: not changeable
    const t = applyLuRequest(emptyLuReservationState(), i1, bad);
    expect(t.outcome.sense).to.deep.equal({ code: Sense.invalidFieldInParameterList, opts: { field: { inCdb: false, byte: 11, bit: 0 } } });
    expect(t).to.include({ changed: false });
  });

  it('is what an installed state shows in the mode pages, and survives the wire form', () => {
    const t = applyLuRequest(emptyLuReservationState(), i1, modeSelectWce(false));
    const back = luStateFromWire(luStateToWire(t.state));
    expect(back).to.deep.equal(t.state);
    expect(luRequestKindFromWire(luRequestKindToWire('mode-select'))).to.equal('mode-select');
    const r = new Reservations();
    expect(r.mode.writeCacheEnabled).to.equal(true);
    r.install(back);
    expect(r.mode.writeCacheEnabled).to.equal(false);
    // A state without mode pages (stored before they were LU state) is the defaults.
    r.install({ pr: back.pr, spc2: null });
    expect(r.mode.writeCacheEnabled).to.equal(true);
  });

  it('in-process: the LU decides, installs, and raises the unit attention on the others', async () => {
    const r = new Reservations();
    const raised: unknown[] = [];
    const o = await r.request({ raiseUnitAttention: (code, scope) => raised.push([code, scope]) }, i1, modeSelectWce(false));
    expect(o).to.deep.equal({ status: 0 });
    expect(r.mode.writeCacheEnabled).to.equal(false);
    expect(raised).to.deep.equal([[Sense.modeParametersChanged, { except: i1 }]]);
  });
});

describe('Reservations with an authority', () => {
  it('asks the authority and leaves its state to what is installed', async () => {
    const asked: [string, string][] = [];
    const r = new Reservations();
    r.authority = {
      decide: async (n: Nexus, req: LuStateRequest): Promise<LuOutcome> => {
        asked.push([n.id, req.kind]);
        return { status: 0 };
      },
    };
    const ua = { raiseUnitAttention: (): void => expect.fail('no unit attention is raised locally') };
    expect(await r.request(ua, i1, RESERVE6)).to.deep.equal({ status: 0 });
    expect(r.spc2Holder).to.equal(null);
    expect(asked).to.deep.equal([[i1.id, 'reserve']]);
    // The installed state is what conflicts read.
    r.install(run([[i1, RESERVE6]]));
    expect(r.spc2Holder?.id).to.equal(i1.id);
    // A lost nexus goes to the authority only when it holds the SPC-2 reservation.
    r.onNexusLost(i2);
    expect(r.spc2Holder?.id).to.equal(i1.id);
    r.onNexusLost(i1);
    // Gone on this path at once; the authority drops it on the others.
    expect(r.spc2Holder).to.equal(null);
    await new Promise((res) => setImmediate(res));
    expect(asked).to.deep.equal([
      [i1.id, 'reserve'],
      [i1.id, 'nexus-lost'],
    ]);
  });
});
