// FaultChannel's releases: a release the controller never got may be done
// in place by the device, one whose answer was lost with the stream may not
// (the controller may already have made the segments zero).
import { expect } from 'chai';
import { FaultChannel, wireFaultSink, type FaultLink } from '../../../src/agent/fault-channel.js';
import { ReleaseLostError } from '../../../src/agent/fault.js';
import type { LinkEventName, LinkEvents } from '../../../src/agent/controller-link.js';
import { FaultAction, type AgentMessage, type Fault } from '../../../src/wire/proto-types.js';
import { IoOp, SegmentState } from '../../../src/table/segment-state.js';

/** A controller link that is up or down, records what is sent, and can emit events. */
class FakeLink implements FaultLink {
  up = true;
  readonly sent: AgentMessage[] = [];
  readonly #listeners = new Map<LinkEventName, ((arg: never) => void)[]>();

  on<K extends LinkEventName>(event: K, fn: (arg: LinkEvents[K]) => void): this {
    const list = this.#listeners.get(event) ?? [];
    list.push(fn as (arg: never) => void);
    this.#listeners.set(event, list);
    return this;
  }

  emit<K extends LinkEventName>(event: K, arg: LinkEvents[K]): void {
    for (const fn of this.#listeners.get(event) ?? []) (fn as (a: LinkEvents[K]) => void)(arg);
  }

  send(msg: AgentMessage): boolean {
    if (!this.up) return false;
    this.sent.push(msg);
    return true;
  }

  readonly faults: Fault[] = [];

  sendFault(f: Fault): boolean {
    this.faults.push(f);
    return this.up;
  }
}

const RELEASE = { vdiskId: 'v1', version: 3, firstSegment: 4, segmentCount: 2 };

describe('agent: fault channel releases', () => {
  it('rejects a release that could not be sent with a plain error (the device zeroes in place)', async () => {
    const link = new FakeLink();
    link.up = false;
    const sink = wireFaultSink(new FaultChannel(link), () => 10_000);
    const err = await sink.release!(RELEASE).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(Error);
    expect(err).to.not.be.instanceOf(ReleaseLostError);
  });

  it('rejects with ReleaseLostError when the stream breaks after the release was sent', async () => {
    const link = new FakeLink();
    const sink = wireFaultSink(new FaultChannel(link), () => 10_000);
    const asked = sink.release!(RELEASE).then(
      () => null,
      (e: unknown) => e,
    );
    expect(link.sent.map((m) => m.body)).to.deep.equal(['release']);
    link.emit('disconnected', { reason: 'stream ended', retryInMs: 100, wasWelcomed: true });
    expect(await asked).to.be.instanceOf(ReleaseLostError);
  });

  it('resolves with the controller answer when it comes', async () => {
    const link = new FakeLink();
    const sink = wireFaultSink(new FaultChannel(link), () => 10_000);
    const asked = sink.release!(RELEASE);
    const sent = link.sent[0];
    if (sent?.body !== 'release') throw new Error('no release sent');
    link.emit('releaseReply', { requestId: sent.release.requestId, ok: true, tableVersion: 4, error: '' });
    expect(await asked).to.deep.equal({ ok: true, version: 4 });
  });
});

describe('agent: fault channel leg faults', () => {
  it('carries failedContainer for a leg fault only; a one-copy fault has no such field', async () => {
    const link = new FakeLink();
    const sink = wireFaultSink(new FaultChannel(link), () => 10_000);
    const base = { vdiskId: 'v1', version: 7, segment: 3, op: IoOp.Write, lba: 384, blocks: 8, state: SegmentState.Normal };
    const leg = sink.fault({ ...base, detail: 'EIO', failedContainer: 'c2' });
    const one = sink.fault({ ...base, state: SegmentState.Zero });
    expect(link.faults.map((f) => [f.segment, f.state, f.failedContainer, f.detail])).to.deep.equal([
      [3, SegmentState.Normal, 'c2', 'EIO'],
      [3, SegmentState.Zero, undefined, ''],
    ]);
    expect('failedContainer' in (link.faults[1] as object)).to.equal(false);
    for (const f of link.faults) link.emit('faultReply', { faultId: f.faultId, action: FaultAction.Retry, tableVersion: 8, senseKey: 0, asc: 0, ascq: 0, reason: '' });
    expect(await leg).to.deep.equal({ action: 'retry', minVersion: 8 });
    expect(await one).to.deep.equal({ action: 'retry', minVersion: 8 });
  });
});
