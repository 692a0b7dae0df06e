// INQUIRY (SPC-4 6.6): standard data and the VPD pages of a block device
// (SPC-4 7.8, SBC-4 6.6). Every response is built whole and then clipped to
// the allocation length.
import { alloc16, clip } from './cdb.js';
import type { CommandContext } from './command-spec.js';
import { thirdPartyCopyVpd } from './extended-copy.js';
import { good } from './command-spec.js';
import type { LogicalUnitApi } from './lu-api.js';
import { ScsiError } from './sense.js';
import type { Nexus, ScsiRequest, ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';

export const enum Vpd {
  Supported = 0x00,
  UnitSerial = 0x80,
  DeviceIdentification = 0x83,
  ExtendedInquiry = 0x86,
  ThirdPartyCopy = 0x8f,
  BlockLimits = 0xb0,
  BlockDeviceCharacteristics = 0xb1,
  LogicalBlockProvisioning = 0xb2,
}

/** Version descriptors (SPC-4 table 30): SAM-5, SPC-4, SBC-3, iSCSI. */
const VERSION_DESCRIPTORS = [0x00a0, 0x0460, 0x04c0, 0x0960];


function ascii(s: string, len: number): string {
  // SPC-4 4.3.1: printable ASCII, left-aligned, space padded
  return s.replace(/[^\x20-\x7e]/g, ' ').padEnd(len, ' ').slice(0, len);
}

/** Standard INQUIRY data (96 bytes) for an existing LU. */
export function standardInquiry(lu: LogicalUnitApi): Buffer {
  const b = Buffer.alloc(96);
  b[0] = 0x00; // peripheral qualifier 000b, direct access block device
  b[1] = 0x00; // not removable
  b[2] = 0x06; // SPC-4
  b[3] = 0x12; // HISUP, response data format 2
  b[4] = b.length - 5;
  b[5] = 0x10 | (lu.thirdPartyCopy ? 0x08 : 0); // TPGS=01b (implicit ALUA), 3PC
  b[6] = 0x00;
  b[7] = 0x02; // CMDQUE
  b.write(ascii(lu.identity.vendor, 8), 8, 'ascii');
  b.write(ascii(lu.identity.product, 16), 16, 'ascii');
  b.write(ascii(lu.identity.revision, 4), 32, 'ascii');
  VERSION_DESCRIPTORS.forEach((v, i) => b.writeUInt16BE(v, 58 + i * 2));
  return b;
}

/** Standard INQUIRY data for a LUN that does not exist: peripheral qualifier 011b, device type 1Fh. */
function noLunInquiryData(): Buffer {
  const b = Buffer.alloc(36);
  b[0] = 0x7f;
  b[2] = 0x06;
  b[3] = 0x12;
  b[4] = b.length - 5;
  return b;
}

/** INQUIRY 0x12 to a LUN that does not exist: peripheral qualifier 011b; a VPD request gets the same header. */
export function inquiryNoLun(req: ScsiRequest): ScsiResponse {
  const alloc = req.cdb.readUInt16BE(3);
  const data = noLunInquiryData();
  return { status: ScsiStatus.Good, dataIn: data.length > alloc ? data.subarray(0, alloc) : data };
}

function vpd(page: number, body: Buffer): Buffer {
  const b = Buffer.alloc(4 + body.length);
  b[1] = page;
  b.writeUInt16BE(body.length, 2);
  body.copy(b, 4);
  return b;
}

/** One designation descriptor (SPC-4 7.8.6.1). */
function designator(opts: { codeSet: number; type: number; assoc: number; piv: boolean; value: Buffer }): Buffer {
  const d = Buffer.alloc(4 + opts.value.length);
  d[0] = (opts.piv ? 0x50 : 0x00) | opts.codeSet; // protocol identifier 5 (iSCSI) when PIV
  d[1] = (opts.piv ? 0x80 : 0) | (opts.assoc << 4) | opts.type;
  d[3] = opts.value.length;
  opts.value.copy(d, 4);
  return d;
}

/** SCSI name string: UTF-8, null terminated, padded to a multiple of 4 bytes. */
function nameString(s: string): Buffer {
  const raw = Buffer.from(s, 'utf8');
  const len = (raw.length + 4) & ~3;
  const b = Buffer.alloc(len);
  raw.copy(b);
  return b;
}

function deviceIdentification(lu: LogicalUnitApi, nexus: Nexus): Buffer {
  const rel = Buffer.alloc(4);
  rel.writeUInt16BE(nexus.relativeTargetPortId & 0xffff, 2);
  const tpg = Buffer.alloc(4);
  tpg.writeUInt16BE(nexus.targetPortGroup & 0xffff, 2);
  const descs = [
    // logical unit: NAA IEEE Registered Extended, binary
    designator({ codeSet: 1, type: 3, assoc: 0, piv: false, value: lu.identity.naa }),
    // target port: its SCSI name string, relative port, port group
    designator({ codeSet: 3, type: 8, assoc: 1, piv: true, value: nameString(nexus.targetPort) }),
    designator({ codeSet: 1, type: 4, assoc: 1, piv: true, value: rel }),
    designator({ codeSet: 1, type: 5, assoc: 1, piv: true, value: tpg }),
    // SCSI target device name
    designator({ codeSet: 3, type: 8, assoc: 2, piv: true, value: nameString(lu.target.name) }),
  ];
  return vpd(Vpd.DeviceIdentification, Buffer.concat(descs));
}

function supportedPages(lu: LogicalUnitApi): number[] {
  const pages = [Vpd.Supported, Vpd.UnitSerial, Vpd.DeviceIdentification, Vpd.ExtendedInquiry];
  if (lu.thirdPartyCopy) pages.push(Vpd.ThirdPartyCopy);
  pages.push(Vpd.BlockLimits, Vpd.BlockDeviceCharacteristics, Vpd.LogicalBlockProvisioning);
  return pages;
}

function extendedInquiry(): Buffer {
  const body = Buffer.alloc(0x3c);
  body[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
  body[2] = 0x01; // V_SUP: a volatile cache exists (WCE)
  return vpd(Vpd.ExtendedInquiry, body);
}

function blockLimits(lu: LogicalUnitApi): Buffer {
  const l = lu.limits;
  const body = Buffer.alloc(0x3c);
  body[0] = 0x00; // WSNZ=0: WRITE SAME with zero blocks writes to the end of the medium
  body[1] = Math.min(l.maxCompareAndWriteBlocks, 0xff);
  body.writeUInt16BE(l.transferGranularity, 2);
  body.writeUInt32BE(l.maxTransferBlocks, 4);
  body.writeUInt32BE(l.optimalTransferBlocks, 8);
  body.writeUInt32BE(l.maxTransferBlocks, 12); // maximum prefetch length
  if (lu.device.thin) {
    body.writeUInt32BE(l.maxUnmapBlocks, 16);
    body.writeUInt32BE(l.maxUnmapDescriptors, 20);
    body.writeUInt32BE(l.unmapGranularity, 24);
  }
  body.writeBigUInt64BE(BigInt(l.maxWriteSameBlocks), 32);
  body.writeUInt32BE(l.maxAtomicBlocks, 40);
  body.writeUInt32BE(l.atomicAlignment, 44);
  body.writeUInt32BE(l.atomicGranularity, 48);
  return vpd(Vpd.BlockLimits, body);
}

function blockDeviceCharacteristics(): Buffer {
  const body = Buffer.alloc(0x3c);
  body.writeUInt16BE(0x0001, 0); // non-rotating medium
  // WABEREQ=01b: after SANITIZE BLOCK ERASE, reads succeed (and return zeros); WACEREQ=0: no CRYPTO ERASE
  body[3] = 0x40;
  return vpd(Vpd.BlockDeviceCharacteristics, body);
}

function logicalBlockProvisioning(lu: LogicalUnitApi): Buffer {
  const body = Buffer.alloc(4);
  if (lu.device.thin) {
    body[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ=001b
    body[2] = 0x02; // provisioning type: thin
  }
  return vpd(Vpd.LogicalBlockProvisioning, body);
}

export function vpdPage(lu: LogicalUnitApi, page: number, nexus: Nexus): Buffer | undefined {
  switch (page) {
    case Vpd.Supported: {
      const pages = supportedPages(lu);
      return vpd(Vpd.Supported, Buffer.from(pages));
    }
    case Vpd.UnitSerial:
      return vpd(Vpd.UnitSerial, Buffer.from(ascii(lu.identity.serial, lu.identity.serial.length), 'ascii'));
    case Vpd.DeviceIdentification:
      return deviceIdentification(lu, nexus);
    case Vpd.ExtendedInquiry:
      return extendedInquiry();
    case Vpd.ThirdPartyCopy:
      return lu.thirdPartyCopy ? thirdPartyCopyVpd(lu) : undefined;
    case Vpd.BlockLimits:
      return blockLimits(lu);
    case Vpd.BlockDeviceCharacteristics:
      return blockDeviceCharacteristics();
    case Vpd.LogicalBlockProvisioning:
      return logicalBlockProvisioning(lu);
    default:
      return undefined;
  }
}

/** INQUIRY 0x12. */
export function inquiry(ctx: CommandContext): ScsiResponse {
  const { cdb, nexus } = ctx.req;
  const lu = ctx.lu;
  const evpd = (cdb[1]! & 0x01) !== 0;
  const page = cdb[2]!;
  const allocation = alloc16(cdb, 3);
  if (cdb[1]! & 0x02) throw ScsiError.cdb(1, 1, 'CMDDT is obsolete');
  if (cdb[1]! & 0xfc) throw ScsiError.cdb(1, 31 - Math.clz32(cdb[1]! & 0xfc));
  if (!evpd) {
    if (page !== 0) throw ScsiError.cdb(2, undefined, 'page code without EVPD');
    return good(clip(standardInquiry(lu), allocation));
  }
  const data = vpdPage(lu, page, nexus);
  if (!data) throw ScsiError.cdb(2, undefined, `VPD page 0x${page.toString(16)} is not supported`);
  return good(clip(data, allocation));
}
