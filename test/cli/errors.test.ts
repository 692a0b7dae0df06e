// Argument errors: one line on stderr naming what is wrong, and a non-zero
// exit, before (or without) any controller being involved.
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { describeCallError } from '../../src/cli/admin-client.js';
import { formatColumns } from '../../src/cli/output.js';
import { parseSegmentRange } from '../../src/cli/segment.js';
import { expectOneLineError, freeLoopbackPort, tabula } from './harness.js';

function serviceError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(`${code} ${details}`), { code, details, metadata: new grpc.Metadata() });
}

describe('tabula CLI: helpers', () => {
  it('names an unreachable controller by its address', () => {
    const e = serviceError(grpc.status.UNAVAILABLE, 'No connection established. Last error: connect ECONNREFUSED 127.0.0.1:9 (2026-11-25T00:00:00Z)');
    expect(describeCallError(e, '127.0.0.1:9')).to.equal('controller unreachable at 127.0.0.1:9 (connection refused)');
  });

  it("passes the controller's own one-line reason through", () => {
    expect(describeCallError(serviceError(grpc.status.NOT_FOUND, 'unknown vdisk nope'), 'h:1')).to.equal('unknown vdisk nope');
    expect(describeCallError(serviceError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded'), 'h:1')).to.equal('controller at h:1 did not answer in time');
    expect(describeCallError(serviceError(grpc.status.UNAUTHENTICATED, 'bad authorization token'), 'h:1')).to.match(/^controller at h:1 refused the request: bad authorization token/);
  });

  it('parses segment numbers and inclusive ranges', () => {
    expect(parseSegmentRange('7')).to.deep.equal({ first: 7, count: 1 });
    expect(parseSegmentRange('16-31')).to.deep.equal({ first: 16, count: 16 });
    expect(() => parseSegmentRange('5-3')).to.throw(/FIRST <= LAST/);
    expect(() => parseSegmentRange('x')).to.throw(/bad segment 'x'/);
    expect(() => parseSegmentRange('-1')).to.throw(/bad segment/);
  });

  it('aligns columns, numbers to the right', () => {
    const text = formatColumns(
      ['NAME', 'N', 'NOTE'],
      [
        ['a', 1, 'x'],
        ['bbb', 100, 'yy'],
      ],
    );
    expect(text.split('\n')).to.deep.equal(['NAME    N  NOTE', 'a       1  x', 'bbb   100  yy']);
  });
});

describe('tabula CLI: argument errors', function () {
  this.timeout(120_000);
  let dir: string;
  let nowhere: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tabula-cli-err-'));
    nowhere = `127.0.0.1:${await freeLoopbackPort()}`;
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('bad sizes name the size', async () => {
    const [a, b, c] = await Promise.all([
      tabula(['vdisk', 'create', 'v', '--size', '12XB', '--controller', nowhere]),
      tabula(['container', 'init', join(dir, 'c.img'), '--size', 'lots']),
      tabula(['up', '--data', join(dir, 'up'), '--size', '1.5.5G']),
    ]);
    expectOneLineError(a, /bad size '12XB'/);
    expectOneLineError(b, /bad size 'lots'/);
    expectOneLineError(c, /bad size '1\.5\.5G'/);
  });

  it('missing options and arguments are named', async () => {
    const [a, b, c, d, e] = await Promise.all([
      tabula(['vdisk', 'create', 'v', '--controller', nowhere]),
      tabula(['export', 'add', 'v', '--controller', nowhere]),
      tabula(['segment', 'set-state', 'v', '3', '--controller', nowhere]),
      tabula(['controller', '--listen', nowhere]),
      tabula(['container', 'init', join(dir, 'new.img')]),
    ]);
    expectOneLineError(a, /Missing required argument: size/);
    expectOneLineError(b, /Missing required argument: agent/);
    expectOneLineError(c, /Missing required argument: state/);
    expectOneLineError(d, /Missing required argument: db/);
    expectOneLineError(e, /new\.img: does not exist: give a size to create it/);
  });

  it('out-of-range values and unknown words are refused', async () => {
    const [a, b, c, d, e, f] = await Promise.all([
      tabula(['vdisk', 'create', 'v', '--size', '1GiB', '--block-size', '1024', '--controller', nowhere]),
      tabula(['segment', 'set-state', 'v', '9-2', '--state', 'zero', '--controller', nowhere]),
      tabula(['segment', 'set-state', 'v', '1', '--state', 'broken', '--controller', nowhere]),
      tabula(['fault', 'ls', '--limit', '0', '--controller', nowhere]),
      tabula(['vdisk', 'frobnicate']),
      tabula(['vdisk']),
    ]);
    expectOneLineError(a, /bad --block-size 1024: must be 512 or 4096/);
    expectOneLineError(b, /bad segment range '9-2'/);
    expectOneLineError(c, /unknown segment state "broken"/);
    expectOneLineError(d, /bad --limit 0/);
    expectOneLineError(e, /frobnicate/);
    expectOneLineError(f, /name a vdisk command/);
  });

  it('says so when the controller cannot be reached, naming HOST:PORT', async () => {
    const [a, b] = await Promise.all([tabula(['vdisk', 'ls', '--controller', nowhere]), tabula(['agent', 'ls'], { TABULA_CONTROLLER: nowhere })]);
    expectOneLineError(a, new RegExp(`controller unreachable at ${nowhere.replace(/\./g, '\\.')}`));
    expectOneLineError(b, new RegExp(`controller unreachable at ${nowhere.replace(/\./g, '\\.')}`));
  });

  it('snapshot, clone and migrate: missing operands are named; well-formed calls go to the controller', async () => {
    const [snap, clone, migrate, noTo, noSnap] = await Promise.all([
      tabula(['vdisk', 'snapshot', 'v', 's', '--controller', nowhere]),
      tabula(['vdisk', 'clone', 's', 'w', '--controller', nowhere]),
      tabula(['vdisk', 'migrate', 'v', '--to', 'c0', '--controller', nowhere]),
      tabula(['vdisk', 'migrate', 'v', '--controller', nowhere]),
      tabula(['vdisk', 'snapshot', 'v', '--controller', nowhere]),
    ]);
    for (const r of [snap, clone, migrate]) expectOneLineError(r, /controller unreachable at/);
    expectOneLineError(noTo, /to/);
    expectOneLineError(noSnap, /snap|SNAP|argument/i);
  });

  it('container add refuses a file without a label', async () => {
    const p = join(dir, 'plain.img');
    writeFileSync(p, Buffer.alloc(8192));
    expectOneLineError(await tabula(['container', 'add', p, '--controller', nowhere]), /plain\.img/);
  });

  it('a bad controller address is refused', async () => {
    expectOneLineError(await tabula(['vdisk', 'ls', '--controller', 'host:99999']), /bad address 'host:99999'/);
  });
});
