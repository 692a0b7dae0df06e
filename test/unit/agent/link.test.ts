import { expect } from 'chai';
import { ControllerLink } from '../../../src/agent/controller-link.js';
import { FakeController } from './fake-controller.js';
import { until } from './rig.js';

describe('agent/controller-link', function () {
  this.timeout(20_000);
  const links: ControllerLink[] = [];
  const ctls: FakeController[] = [];

  afterEach(async () => {
    for (const l of links.splice(0)) await l.close();
    for (const c of ctls.splice(0)) await c.stop();
  });

  function link(address: string): ControllerLink {
    const l = new ControllerLink({
      controller: address,
      agentName: 'link-test',
      portals: ['127.0.0.1:3260'],
      registration: () => ({ containers: [], tables: [{ vdiskId: 'v1', version: 7 }] }),
      backoff: { initialMs: 50, maxMs: 200 },
      welcomeTimeoutMs: 1000,
    });
    links.push(l);
    return l;
  }

  it('keeps trying until a controller appears, then registers', async () => {
    const probe = await FakeController.start();
    const port = probe.port;
    await probe.stop();
    const l = link(`127.0.0.1:${port}`);
    const downs: string[] = [];
    l.on('disconnected', (d) => downs.push(d.reason));
    l.start();
    await until(() => downs.length >= 2, 5000, 'failed attempts');
    const ctl = await FakeController.start(port);
    ctls.push(ctl);
    const { register } = await ctl.accept();
    expect(register).to.deep.include({ agentName: 'link-test', portals: ['127.0.0.1:3260'], tables: [{ vdiskId: 'v1', version: 7 }] });
    await until(() => l.connected, 5000, 'Welcome');
  });

  it('gives up a stream that never sends Welcome and registers again', async () => {
    const ctl = await FakeController.start();
    ctls.push(ctl);
    const l = link(ctl.address);
    l.start();
    const first = await ctl.nextStream();
    await first.take('register');
    // no Welcome: after welcomeTimeoutMs the agent tries a new stream
    const second = await ctl.nextStream(5000);
    await second.take('register');
    second.welcome();
    await until(() => l.connected, 5000, 'Welcome');
    expect(l.send({ body: 'heartbeat', heartbeat: { seq: 1, heldIos: 0 } })).to.equal(true);
  });

  it('ignores controller messages that come before Welcome, and a second Welcome', async () => {
    const ctl = await FakeController.start();
    ctls.push(ctl);
    const l = link(ctl.address);
    let exportSets = 0;
    let welcomes = 0;
    l.on('exportSet', () => exportSets++);
    l.on('welcome', () => welcomes++);
    l.on('exportSet', () => {
      throw new Error('a buggy handler');
    });
    l.start();
    const s = await ctl.nextStream();
    await s.take('register');
    s.send({ body: 'exportSet', exportSet: { exports: [] } });
    s.welcome();
    s.welcome();
    s.send({ body: 'exportSet', exportSet: { exports: [] } });
    await until(() => exportSets === 1, 5000, 'the ExportSet after Welcome');
    expect(welcomes).to.equal(1);
    expect(l.connectAttempts).to.equal(1);
  });

  it('says it is not connected, and send() returns false, while the controller is away', async () => {
    const ctl = await FakeController.start();
    const l = link(ctl.address);
    l.start();
    await ctl.accept();
    await until(() => l.connected, 5000, 'Welcome');
    await ctl.stop();
    await until(() => !l.connected, 5000, 'the link to go down');
    expect(l.send({ body: 'heartbeat', heartbeat: { seq: 1, heldIos: 0 } })).to.equal(false);
  });
});
