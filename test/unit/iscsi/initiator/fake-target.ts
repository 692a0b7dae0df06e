// A fake target for the initiator's unit tests: a Wire that decodes what
// the session writes, and builders for the target's PDUs (made with the codec).
import { IscsiInitiatorSession, type SessionOptions, type Wire } from '../../../../src/iscsi/initiator/session.js';
import type { InitiatorParams, LoginResult } from '../../../../src/iscsi/initiator/login.js';
import { encodePdu, senseSegment } from '../../../../src/iscsi/pdu/encode.js';
import { PduParser } from '../../../../src/iscsi/pdu/parser.js';
import { Opcode, RESERVED_TAG, type AhsSegment, type Pdu, type TargetPdu } from '../../../../src/iscsi/pdu/types.js';

export const PARAMS: InitiatorParams = {
  headerDigest: false,
  dataDigest: false,
  maxRecvDataSegmentLength: 65536,
  targetMaxRecvDataSegmentLength: 8192,
  maxBurstLength: 65536,
  firstBurstLength: 16384,
  initialR2T: true,
  immediateData: true,
  maxOutstandingR2T: 1,
  defaultTime2Wait: 0,
  defaultTime2Retain: 0,
  errorRecoveryLevel: 0,
};

export class FakeWire implements Wire {
  readonly sent: Pdu[] = [];
  destroyed = false;
  readonly parser: PduParser;

  constructor(digests: { header: boolean; data: boolean }) {
    this.parser = new PduParser({ headerDigest: digests.header, dataDigest: digests.data, maxDataSegmentLength: 1 << 24, hardMaxDataSegmentLength: 1 << 24 });
  }

  write(chunks: Buffer[]): void {
    this.parser.push(Buffer.concat(chunks));
    for (let r = this.parser.next(); r !== null; r = this.parser.next()) {
      if (!r.ok) throw new Error(`the session wrote a bad PDU: ${r.message}`);
      this.sent.push(r.pdu);
    }
  }

  destroy(): void {
    this.destroyed = true;
  }

  take<T extends Pdu>(op: Opcode): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.sent.length; ) {
      if (this.sent[i]!.opcode === op) out.push(this.sent.splice(i, 1)[0] as T);
      else i++;
    }
    return out;
  }
}

export interface Rig {
  s: IscsiInitiatorSession;
  wire: FakeWire;
  feed(pdu: TargetPdu): void;
  /** StatSN/ExpCmdSN/MaxCmdSN for the next status PDU. */
  sn(): { statSN: number; expCmdSN: number; maxCmdSN: number };
  window: { maxCmdSN: number };
}

export function rig(over: Partial<InitiatorParams> = {}, opts: SessionOptions = {}, maxCmdSN = 100): Rig {
  const params = { ...PARAMS, ...over };
  const digests = { header: params.headerDigest, data: params.dataDigest };
  const wire = new FakeWire(digests);
  const login: LoginResult = { params, tsih: 5, isid: 1, expStatSN: 10, cmdSN: 1, expCmdSN: 1, maxCmdSN };
  const s = new IscsiInitiatorSession(wire, new PduParser(), login, { nopIntervalMs: 0, ...opts });
  let statSN = 10;
  const window = { maxCmdSN };
  return {
    s,
    wire,
    window,
    feed: (pdu) => s.receive(Buffer.concat(encodePdu(pdu, digests))),
    sn: () => ({ statSN: statSN++, expCmdSN: 1, maxCmdSN: window.maxCmdSN }),
  };
}

export const base = { immediate: false, ahs: [] as AhsSegment[], lun: 0n };

export function dataIn(r: Rig, itt: number, offset: number, data: Buffer, status?: number): TargetPdu {
  // Only a PDU with status consumes a StatSN.
  const sn = status !== undefined ? r.sn() : { statSN: 0, expCmdSN: 1, maxCmdSN: r.window.maxCmdSN };
  return {
    ...base,
    opcode: Opcode.DataIn,
    data,
    final: status !== undefined,
    ack: false,
    overflow: false,
    underflow: false,
    hasStatus: status !== undefined,
    status: status ?? 0,
    itt,
    ttt: RESERVED_TAG,
    statSN: status !== undefined ? sn.statSN : 0,
    expCmdSN: sn.expCmdSN,
    maxCmdSN: sn.maxCmdSN,
    dataSN: 0,
    bufferOffset: offset,
    residualCount: 0,
  };
}

export function response(r: Rig, itt: number, status: number, extra: { sense?: Buffer; underflow?: number } = {}): TargetPdu {
  return {
    ...base,
    opcode: Opcode.ScsiResponse,
    data: extra.sense ? senseSegment(extra.sense) : Buffer.alloc(0),
    bidiOverflow: false,
    bidiUnderflow: false,
    overflow: false,
    underflow: extra.underflow !== undefined,
    response: 0,
    status,
    itt,
    snack: 0,
    ...r.sn(),
    expDataSN: 0,
    bidiResidualCount: 0,
    residualCount: extra.underflow ?? 0,
  };
}

export function r2t(r: Rig, itt: number, ttt: number, offset: number, length: number): TargetPdu {
  const { expCmdSN, maxCmdSN } = r.sn();
  return { ...base, opcode: Opcode.R2T, data: Buffer.alloc(0), itt, ttt, statSN: 0, expCmdSN, maxCmdSN, r2tSN: 0, bufferOffset: offset, desiredDataTransferLength: length };
}

