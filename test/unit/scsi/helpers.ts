// Test helpers: hand-built CDBs sent through ScsiTargetDevice.execute(), and an
// independent decoder for sense data (not the code under test).
import { expect } from 'chai';
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { ScsiTargetDevice } from '../../../src/scsi/target-device.js';
import type { Nexus, ScsiRequest, ScsiResponse } from '../../../src/scsi/port.js';
import { makeNexus, TaskAttribute } from '../../../src/scsi/port.js';

export const TARGET = 'iqn.2026-11.org.tabula:test';
export const nexusA = makeNexus('iqn.1994-05.com.example:a', 0x23d000000001, TARGET, 1);
export const nexusB = makeNexus('iqn.1994-05.com.example:b', 0x23d000000002, TARGET, 1);

export interface Fixture {
  target: ScsiTargetDevice;
  dev: MemoryBlockDevice;
  run(cdb: number[] | Buffer, opts?: RunOptions): Promise<ScsiResponse>;
}

export interface RunOptions {
  nexus?: Nexus;
  lun?: number;
  dataOut?: Buffer | null;
  expectedLength?: number;
  attr?: TaskAttribute;
}

let tag = 1;

export function request(cdb: number[] | Buffer, opts: RunOptions = {}): ScsiRequest {
  const c = Buffer.alloc(16);
  Buffer.from(cdb).copy(c);
  const dataOut = opts.dataOut ?? null;
  return {
    nexus: opts.nexus ?? nexusA,
    lun: opts.lun ?? 0,
    cdb: c,
    attr: opts.attr ?? TaskAttribute.Simple,
    tag: tag++,
    dataOut,
    expectedLength: opts.expectedLength ?? (dataOut ? dataOut.length : 65536),
  };
}

export function fixture(blocks = 2048, opts: { readOnly?: boolean; thin?: boolean; blockSize?: number } = {}): Fixture {
  const target = new ScsiTargetDevice({ name: TARGET, portGroups: [{ id: 1, relativePortIds: [1] }] });
  const dev = new MemoryBlockDevice(blocks, { thin: opts.thin ?? true, blockSize: opts.blockSize ?? 512 });
  target.addLun(0, dev, { readOnly: opts.readOnly ?? false, lunId: 'lun-under-test' });
  return { target, dev, run: (cdb, o) => target.execute(request(cdb, o)) };
}

/** Independent sense decoder: fixed (70h) or descriptor (72h) format. */
export function senseOf(res: ScsiResponse): { key: number; asc: number; ascq: number; format: 'fixed' | 'descriptor'; info?: bigint; sks?: number[] } {
  expect(res.status, 'status').to.equal(0x02);
  const s = res.sense!;
  if ((s[0]! & 0x7f) === 0x70) {
    return {
      key: s[2]! & 0x0f,
      asc: s[12]!,
      ascq: s[13]!,
      format: 'fixed',
      ...(s[0]! & 0x80 ? { info: BigInt(s.readUInt32BE(3)) } : {}),
      ...(s[15]! & 0x80 ? { sks: [s[15]!, s[16]!, s[17]!] } : {}),
    };
  }
  expect(s[0]! & 0x7f).to.equal(0x72);
  const out: ReturnType<typeof senseOf> = { key: s[1]! & 0x0f, asc: s[2]!, ascq: s[3]!, format: 'descriptor' };
  for (let off = 8; off < 8 + s[7]!; off += 2 + s[off + 1]!) {
    if (s[off] === 0x00) out.info = s.readBigUInt64BE(off + 4);
    if (s[off] === 0x02) out.sks = [s[off + 4]!, s[off + 5]!, s[off + 6]!];
  }
  return out;
}

export function expectSense(res: ScsiResponse, key: number, asc: number, ascq: number): void {
  const s = senseOf(res);
  expect([s.key, s.asc, s.ascq], 'sense key/asc/ascq').to.deep.equal([key, asc, ascq]);
}

export function expectGood(res: ScsiResponse): void {
  if (res.status !== 0) expect.fail(`expected GOOD, got status ${res.status} sense ${res.sense?.toString('hex')}`);
}

export function be32(n: number): number[] {
  return [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
}

export function be16(n: number): number[] {
  return [(n >>> 8) & 0xff, n & 0xff];
}

export function be64(n: bigint): number[] {
  const out: number[] = [];
  for (let i = 7; i >= 0; i--) out.push(Number((n >> BigInt(i * 8)) & 0xffn));
  return out;
}

export const cdb = {
  tur: () => [0x00, 0, 0, 0, 0, 0],
  requestSense: (alloc = 252, desc = false) => [0x03, desc ? 1 : 0, 0, 0, alloc, 0],
  inquiry: (evpd: boolean, page: number, alloc = 4096) => [0x12, evpd ? 1 : 0, page, ...be16(alloc), 0],
  read6: (lba: number, len: number) => [0x08, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, len, 0],
  read10: (lba: number, len: number, flags = 0) => [0x28, flags, ...be32(lba), 0, ...be16(len), 0],
  read16: (lba: bigint, len: number, flags = 0) => [0x88, flags, ...be64(lba), ...be32(len), 0, 0],
  write10: (lba: number, len: number, flags = 0) => [0x2a, flags, ...be32(lba), 0, ...be16(len), 0],
  write16: (lba: bigint, len: number, flags = 0) => [0x8a, flags, ...be64(lba), ...be32(len), 0, 0],
  verify10: (lba: number, len: number, bytchk: number) => [0x2f, bytchk << 1, ...be32(lba), 0, ...be16(len), 0],
  caw: (lba: bigint, n: number) => [0x89, 0, ...be64(lba), 0, 0, 0, n, 0, 0],
  readCap10: () => [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  readCap16: (alloc = 32) => [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, ...be32(alloc), 0, 0],
  getLbaStatus: (lba: bigint, alloc = 4096) => [0x9e, 0x12, ...be64(lba), ...be32(alloc), 0, 0],
  unmap: (len: number) => [0x42, 0, 0, 0, 0, 0, 0, ...be16(len), 0],
  writeSame10: (lba: number, n: number, unmap = false) => [0x41, unmap ? 0x08 : 0, ...be32(lba), 0, ...be16(n), 0],
  writeSame16: (lba: bigint, n: number, flags = 0) => [0x93, flags, ...be64(lba), ...be32(n), 0, 0],
  modeSense6: (page: number, opts: { pc?: number; subpage?: number; dbd?: boolean; alloc?: number } = {}) => [
    0x1a,
    opts.dbd ? 0x08 : 0,
    ((opts.pc ?? 0) << 6) | page,
    opts.subpage ?? 0,
    opts.alloc ?? 255,
    0,
  ],
  modeSense10: (page: number, opts: { llbaa?: boolean; dbd?: boolean; alloc?: number } = {}) => [
    0x5a,
    (opts.llbaa ? 0x10 : 0) | (opts.dbd ? 0x08 : 0),
    page,
    0,
    0,
    0,
    0,
    ...be16(opts.alloc ?? 4096),
    0,
  ],
  modeSelect6: (len: number, pf = true) => [0x15, pf ? 0x10 : 0, 0, 0, len, 0],
  reportLuns: (alloc = 4096, select = 0) => [0xa0, 0, select, 0, 0, 0, ...be32(alloc), 0, 0],
  rsoc: (options: number, opcode = 0, sa = 0, rctd = false, alloc = 65535) => [0xa3, 0x0c, (rctd ? 0x80 : 0) | options, opcode, ...be16(sa), ...be32(alloc), 0, 0],
  rstmf: (repd: boolean, alloc = 255) => [0xa3, 0x0d, repd ? 0x80 : 0, 0, 0, 0, ...be32(alloc), 0, 0],
  rtpg: (extended: boolean, alloc = 4096) => [0xa3, 0x0a | (extended ? 0x20 : 0), 0, 0, 0, 0, ...be32(alloc), 0, 0],
};
