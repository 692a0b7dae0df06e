// AgentLease, the agent's side of Welcome.lease_ms, as a state machine:
// which event moves it where, and when it tells the devices and the agent.
import { expect } from 'chai';
import { AgentLease } from '../../../src/agent/controller-link.js';

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('agent: controller lease', () => {
  const leases: AgentLease[] = [];
  function lease(): AgentLease {
    const l = new AgentLease();
    leases.push(l);
    return l;
  }
  afterEach(() => {
    for (const l of leases.splice(0)) l.close();
  });

  it('holds nothing when the controller grants no lease', () => {
    const l = lease();
    expect(l.state).to.equal('none');
    expect(l.expired).to.equal(false);
    l.welcomed(0);
    l.answered(performance.now());
    expect(l.state).to.equal('none');
    expect(l.expired).to.equal(false);
  });

  it('starts expired under a lease and is valid only after an answered heartbeat and a confirmed resync', () => {
    const l = lease();
    const resyncs: number[] = [];
    let renewed = 0;
    l.onResync((e) => resyncs.push(e));
    l.onRenewed(() => renewed++);
    l.welcomed(60_000);
    expect(l.state).to.equal('expired');
    expect(l.expired).to.equal(true);

    l.answered(performance.now());
    expect(l.state).to.equal('resyncing');
    expect(l.expired, 'still held while the tables are being installed').to.equal(true);
    expect(resyncs).to.have.length(1);
    expect(renewed).to.equal(0);

    expect(l.confirm((resyncs[0] as number) + 1), 'a confirmation for another resync').to.equal(false);
    expect(l.confirm(resyncs[0] as number)).to.equal(true);
    expect(l.state).to.equal('valid');
    expect(l.expired).to.equal(false);
    expect(renewed).to.equal(1);
  });

  it('a resync interrupted by a disconnect starts over on the next stream', () => {
    const l = lease();
    const resyncs: number[] = [];
    l.onResync((e) => resyncs.push(e));
    l.welcomed(60_000);
    l.answered(performance.now());
    l.disconnected();
    expect(l.state).to.equal('expired');
    expect(l.confirm(resyncs[0] as number)).to.equal(false);
    l.welcomed(60_000);
    l.answered(performance.now());
    expect(resyncs).to.have.length(2);
    expect(l.confirm(resyncs[1] as number)).to.equal(true);
    expect(l.state).to.equal('valid');
  });

  it('stays valid across a disconnect until lease_ms after the newest answered heartbeat was sent', async () => {
    const l = lease();
    let resync = 0;
    l.onResync((e) => (resync = e));
    l.welcomed(150);
    l.answered(performance.now());
    l.confirm(resync);
    expect(l.state).to.equal('valid');
    l.disconnected();
    expect(l.state, 'a broken stream alone does not end the lease').to.equal('valid');
    await until(() => l.expired, 5000, 'the lease to run out');
    expect(l.state).to.equal('expired');
  });

  it('counts the lease from when the heartbeat was sent, not from when its answer came', () => {
    const l = lease();
    let resync = 0;
    l.onResync((e) => (resync = e));
    l.welcomed(1000);
    // The answer to a heartbeat sent 2 s ago (a slow round trip): the lease it grants has already run out.
    l.answered(performance.now() - 2000);
    expect(l.confirm(resync)).to.equal(false);
    expect(l.state).to.equal('expired');
  });

  it('an answer that comes after the lease ran out does not extend it: a resync is needed', async () => {
    const l = lease();
    const resyncs: number[] = [];
    l.onResync((e) => resyncs.push(e));
    l.welcomed(100);
    l.answered(performance.now());
    l.confirm(resyncs[0] as number);
    expect(l.state).to.equal('valid');
    await until(() => l.expired, 5000, 'the lease to run out');
    l.answered(performance.now());
    expect(l.state).to.equal('resyncing');
    expect(resyncs).to.have.length(2);
  });
});
