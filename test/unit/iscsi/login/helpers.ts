// Test helpers for the login tests: requests, text and environments built
// independently of src/iscsi/login (text is joined/split by hand here).

import { createHash } from 'node:crypto';
import { Opcode, Stage, type LoginRequest } from '../../../../src/iscsi/pdu/types.js';
import type { AdmitRequest, AdmitResult, LoginEnvironment, TargetInfo, TargetLimits } from '../../../../src/iscsi/login/login-machine.js';

/** "k=v\0" for each line given as "k=v". */
export function text(...pairs: string[]): Buffer {
  return Buffer.from(pairs.map((p) => `${p}\0`).join(''), 'utf8');
}

/** Pairs of a response text, in order. */
export function pairsOf(data: Buffer): [string, string][] {
  const s = data.toString('utf8');
  if (s.length === 0) return [];
  if (!s.endsWith('\0')) throw new Error(`text does not end with NUL: ${JSON.stringify(s)}`);
  return s
    .slice(0, -1)
    .split('\0')
    .map((p) => {
      const i = p.indexOf('=');
      return [p.slice(0, i), p.slice(i + 1)] as [string, string];
    });
}

export function mapOf(data: Buffer): Map<string, string> {
  return new Map(pairsOf(data));
}

export const ISID = 0x23d000000001;
export const INITIATOR = 'iqn.2026-01.org.example:client';
export const TARGET = 'iqn.2026-11.org.tabula:disk0';

export interface ReqOpts {
  csg: Stage;
  nsg?: Stage;
  transit?: boolean;
  cont?: boolean;
  data?: Buffer;
  isid?: number;
  tsih?: number;
  cid?: number;
  itt?: number;
  versionMax?: number;
  versionMin?: number;
}

export function loginReq(o: ReqOpts): LoginRequest {
  return {
    opcode: Opcode.LoginRequest,
    immediate: true,
    ahs: [],
    data: o.data ?? Buffer.alloc(0),
    transit: o.transit ?? false,
    cont: o.cont ?? false,
    csg: o.csg,
    nsg: o.nsg ?? Stage.Security,
    versionMax: o.versionMax ?? 0,
    versionMin: o.versionMin ?? 0,
    isid: o.isid ?? ISID,
    tsih: o.tsih ?? 0,
    itt: o.itt ?? 0x10,
    cid: o.cid ?? 0,
    cmdSN: 1,
    expStatSN: 0,
  };
}

export const LIMITS: TargetLimits = {
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: 1048576,
  firstBurstLength: 262144,
  maxOutstandingR2T: 1,
  immediateData: true,
  initialR2T: false,
  defaultTime2Wait: 2,
  defaultTime2Retain: 0,
};

export function target(over: Partial<TargetInfo> = {}): TargetInfo {
  return {
    name: TARGET,
    portals: [{ address: '127.0.0.1', port: 3260, tpgt: 1 }],
    ...over,
  };
}

export interface TestEnv extends LoginEnvironment {
  admitted: AdmitRequest[];
}

export function makeEnv(targets: TargetInfo[] = [target()], over: Partial<LoginEnvironment> = {}, admitResult: AdmitResult = { ok: true, tsih: 7 }): TestEnv {
  const admitted: AdmitRequest[] = [];
  return {
    target: (name) => targets.find((t) => t.name === name),
    targets: () => targets,
    portalGroupTag: 1,
    limits: LIMITS,
    admit(req) {
      admitted.push(req);
      return admitResult;
    },
    admitted,
    ...over,
  };
}

/** MD5(id || secret || challenge), computed here independently of chap.ts. */
export function md5Chap(id: number, secret: string, challenge: Buffer): Buffer {
  const h = createHash('md5');
  h.update(Buffer.from([id]));
  h.update(Buffer.from(secret, 'utf8'));
  h.update(challenge);
  return h.digest();
}

export function unhex(v: string): Buffer {
  if (!/^0x[0-9a-fA-F]+$/.test(v)) throw new Error(`not 0x hex: ${v}`);
  return Buffer.from(v.slice(2), 'hex');
}

/** Keys libiscsi sends in its operational PDU (lib/login.c), normal session. */
export function libiscsiOpKeys(sessionType: 'Normal' | 'Discovery'): string[] {
  return [
    `InitiatorName=${INITIATOR}`,
    ...(sessionType === 'Normal' ? [`TargetName=${TARGET}`] : []),
    `SessionType=${sessionType}`,
    'HeaderDigest=None,CRC32C',
    'DataDigest=None',
    'InitialR2T=No',
    'ImmediateData=Yes',
    'MaxBurstLength=16776192',
    'FirstBurstLength=262144',
    'DefaultTime2Wait=2',
    'DefaultTime2Retain=0',
    'MaxOutstandingR2T=1',
    'ErrorRecoveryLevel=0',
    'IFMarker=No',
    'OFMarker=No',
    'MaxConnections=1',
    'MaxRecvDataSegmentLength=262144',
    'DataPDUInOrder=Yes',
    'DataSequenceInOrder=Yes',
  ];
}

/** Keys open-iscsi sends in its operational PDU (usr/login.c), normal session. */
export const OPEN_ISCSI_OP_NORMAL = [
  'HeaderDigest=None',
  'DataDigest=None',
  'DefaultTime2Wait=2',
  'DefaultTime2Retain=0',
  'IFMarker=No',
  'OFMarker=No',
  'ErrorRecoveryLevel=0',
  'InitialR2T=No',
  'ImmediateData=Yes',
  'MaxBurstLength=16776192',
  'FirstBurstLength=262144',
  'MaxOutstandingR2T=1',
  'MaxConnections=1',
  'DataPDUInOrder=Yes',
  'DataSequenceInOrder=Yes',
  'MaxRecvDataSegmentLength=262144',
];
