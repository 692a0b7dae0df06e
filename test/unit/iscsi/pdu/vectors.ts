// One hand-written vector per opcode: the BHS bytes laid out from the
// RFC 7143 section 11 figures (one 4-byte word per line), the data segment,
// and the typed PDU those bytes mean. Built without the codec under test.
import { Opcode, RejectReason, Stage, TaskAttr, TmfFunction, TmfResponse } from '../../../../src/iscsi/pdu/types.js';
import type { Pdu } from '../../../../src/iscsi/pdu/types.js';
import { bhs, hex } from './hex.js';

export interface Vector {
  name: string;
  /** BHS followed by any AHS. */
  header: Buffer;
  data: Buffer;
  pdu: Pdu;
}

const none: [] = [];

const loginText = Buffer.from('HeaderDigest=None\0', 'latin1'); // 18 bytes: 2 bytes padding
const sendTargets = Buffer.from('SendTargets=All\0', 'latin1'); // 16 bytes: no padding
const sense = hex('70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 00 00 00'); // fixed format, ILLEGAL REQUEST 24/00
const rejected = bhs([
  '01 c1 00 00',
  '00 00 00 00',
  '00 00 00 00',
  '00 00 00 00',
  '00 00 00 33',
  '00 00 02 00',
  '00 00 00 07',
  '00 00 00 08',
  'ff 00 00 00',
  '00 00 00 00',
  '00 00 00 00',
  '00 00 00 00',
]);

export const vectors: Vector[] = [
  {
    name: 'NOP-Out',
    header: bhs([
      '40 80 00 00', // I=1 opcode 0x00; F=1
      '00 00 00 04', // TotalAHSLength 0, DataSegmentLength 4
      '00 01 00 00', // LUN (peripheral, LUN 1)
      '00 00 00 00',
      '11 22 33 44', // ITT
      'ff ff ff ff', // TTT
      '00 00 00 10', // CmdSN
      '00 00 00 20', // ExpStatSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.from('ping'),
    pdu: {
      opcode: Opcode.NopOut,
      immediate: true,
      ahs: none,
      data: Buffer.from('ping'),
      lun: 0x0001000000000000n,
      itt: 0x11223344,
      ttt: 0xffffffff,
      cmdSN: 0x10,
      expStatSN: 0x20,
    },
  },
  {
    name: 'SCSI Command (READ(10))',
    header: bhs([
      '01 c1 00 00', // opcode 0x01; F R, ATTR simple
      '00 00 00 00',
      '00 00 00 00', // LUN 0
      '00 00 00 00',
      '0a 0b 0c 0d', // ITT
      '00 00 10 00', // Expected Data Transfer Length 4096
      '12 34 56 78', // CmdSN
      '9a bc de f0', // ExpStatSN
      '28 00 00 00', // CDB: READ(10) LBA 0x10 length 8
      '10 00 00 00',
      '08 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      final: true,
      read: true,
      write: false,
      attr: TaskAttr.Simple,
      lun: 0n,
      itt: 0x0a0b0c0d,
      expectedDataTransferLength: 4096,
      cmdSN: 0x12345678,
      expStatSN: 0x9abcdef0,
      cdb: hex('28 00 00 00 10 00 00 00 08 00 00 00 00 00 00 00'),
    },
  },
  {
    name: 'SCSI Command (WRITE(6), immediate data with padding)',
    header: bhs([
      '41 a2 00 00', // I=1 opcode 0x01; F W, ATTR ordered
      '00 00 00 05', // DataSegmentLength 5
      '41 00 00 00', // LUN (flat space, LUN 256)
      '00 00 00 00',
      '00 00 00 01', // ITT
      '00 00 00 05', // Expected Data Transfer Length 5
      'ff ff ff ff', // CmdSN
      '00 00 00 00', // ExpStatSN
      '0a 00 00 00', // CDB: WRITE(6)
      '01 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: hex('01 02 03 04 05'),
    pdu: {
      opcode: Opcode.ScsiCommand,
      immediate: true,
      ahs: none,
      data: hex('01 02 03 04 05'),
      final: true,
      read: false,
      write: true,
      attr: TaskAttr.Ordered,
      lun: 0x4100000000000000n,
      itt: 1,
      expectedDataTransferLength: 5,
      cmdSN: 0xffffffff,
      expStatSN: 0,
      cdb: hex('0a 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00'),
    },
  },
  {
    name: 'SCSI Command (18-byte CDB in Extended CDB AHS, bidirectional read length AHS)',
    header: Buffer.concat([
      bhs([
        '01 e4 00 00', // opcode 0x01; F R W, ATTR ACA
        '04 00 00 00', // TotalAHSLength 4 words (16 bytes)
        '00 02 00 00', // LUN 2
        '00 00 00 00',
        '00 00 00 07', // ITT
        '00 00 02 00', // Expected Data Transfer Length 512
        '00 00 00 09', // CmdSN
        '00 00 00 0a', // ExpStatSN
        'c0 c1 c2 c3', // CDB bytes 0..15
        'c4 c5 c6 c7',
        'c8 c9 ca cb',
        'cc cd ce cf',
      ]),
      hex('00 03 01 00 d0 d1 00 00'), // AHSLength 3 (18-15), type 1, reserved, CDB 16..17, pad
      hex('00 05 02 00 00 00 04 00'), // AHSLength 5, type 2, reserved, read length 1024
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: [
        { type: 1, data: hex('00 d0 d1') },
        { type: 2, data: hex('00 00 00 04 00') },
      ],
      data: Buffer.alloc(0),
      final: true,
      read: true,
      write: true,
      attr: TaskAttr.ACA,
      lun: 0x0002000000000000n,
      itt: 7,
      expectedDataTransferLength: 512,
      cmdSN: 9,
      expStatSN: 10,
      cdb: hex('c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 ca cb cc cd ce cf d0 d1'),
      bidiReadLength: 1024,
    },
  },
  {
    name: 'Task Management Function Request',
    header: bhs([
      '42 81 00 00', // I=1 opcode 0x02; 1, function ABORT TASK
      '00 00 00 00',
      '00 02 00 00', // LUN 2
      '00 00 00 00',
      '00 00 01 01', // ITT
      '00 00 00 77', // Referenced Task Tag
      '00 00 00 05', // CmdSN
      '00 00 00 06', // ExpStatSN
      '00 00 00 03', // RefCmdSN
      '00 00 00 04', // ExpDataSN
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.TaskMgmtRequest,
      immediate: true,
      ahs: none,
      data: Buffer.alloc(0),
      fn: TmfFunction.AbortTask,
      lun: 0x0002000000000000n,
      itt: 0x101,
      referencedTaskTag: 0x77,
      cmdSN: 5,
      expStatSN: 6,
      refCmdSN: 3,
      expDataSN: 4,
    },
  },
  {
    name: 'Login Request',
    header: bhs([
      '43 87 00 00', // I=1 opcode 0x03; T, CSG 1, NSG 3; Version-max 0, Version-min 0
      '00 00 00 12', // DataSegmentLength 18
      '80 12 34 56', // ISID
      '78 9a 00 01', // ISID (cont.), TSIH 1
      '00 00 00 00', // ITT
      '00 02 00 00', // CID 2, reserved
      '00 00 00 01', // CmdSN
      '00 00 00 00', // ExpStatSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: loginText,
    pdu: {
      opcode: Opcode.LoginRequest,
      immediate: true,
      ahs: none,
      data: loginText,
      transit: true,
      cont: false,
      csg: Stage.Operational,
      nsg: Stage.FullFeature,
      versionMax: 0,
      versionMin: 0,
      isid: 0x80123456789a,
      tsih: 1,
      itt: 0,
      cid: 2,
      cmdSN: 1,
      expStatSN: 0,
    },
  },
  {
    name: 'Text Request',
    header: bhs([
      '04 80 00 00', // opcode 0x04; F
      '00 00 00 10', // DataSegmentLength 16
      '00 00 00 00', // LUN
      '00 00 00 00',
      '00 00 00 0a', // ITT
      'ff ff ff ff', // TTT
      '00 00 00 07', // CmdSN
      '00 00 00 08', // ExpStatSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: sendTargets,
    pdu: {
      opcode: Opcode.TextRequest,
      immediate: false,
      ahs: none,
      data: sendTargets,
      final: true,
      cont: false,
      lun: 0n,
      itt: 10,
      ttt: 0xffffffff,
      cmdSN: 7,
      expStatSN: 8,
    },
  },
  {
    name: 'SCSI Data-Out',
    header: bhs([
      '05 80 00 00', // opcode 0x05; F
      '00 00 00 07', // DataSegmentLength 7
      '00 03 00 00', // LUN 3
      '00 00 00 00',
      '00 00 00 42', // ITT
      '00 00 10 00', // TTT
      '00 00 00 00', // reserved
      '00 00 00 09', // ExpStatSN
      '00 00 00 00', // reserved
      '00 00 00 02', // DataSN
      '00 00 20 00', // Buffer Offset
      '00 00 00 00', // reserved
    ]),
    data: hex('a1 a2 a3 a4 a5 a6 a7'),
    pdu: {
      opcode: Opcode.DataOut,
      immediate: false,
      ahs: none,
      data: hex('a1 a2 a3 a4 a5 a6 a7'),
      final: true,
      lun: 0x0003000000000000n,
      itt: 0x42,
      ttt: 0x1000,
      expStatSN: 9,
      dataSN: 2,
      bufferOffset: 0x2000,
    },
  },
  {
    name: 'Logout Request',
    header: bhs([
      '46 81 00 00', // I=1 opcode 0x06; 1, reason 1 (close connection)
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 50', // ITT
      '00 03 00 00', // CID 3
      '00 00 00 0a', // CmdSN
      '00 00 00 0b', // ExpStatSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.LogoutRequest,
      immediate: true,
      ahs: none,
      data: Buffer.alloc(0),
      reason: 1,
      itt: 0x50,
      cid: 3,
      cmdSN: 10,
      expStatSN: 11,
    },
  },
  {
    name: 'SNACK Request',
    header: bhs([
      '10 83 00 00', // opcode 0x10; 1, type 3 (DataACK)
      '00 00 00 00',
      '00 04 00 00', // LUN 4
      '00 00 00 00',
      '00 00 00 60', // ITT
      '00 00 20 00', // TTT
      '00 00 00 00', // reserved
      '00 00 00 0c', // ExpStatSN
      '00 00 00 00', // reserved
      '00 00 00 00',
      '00 00 00 04', // BegRun
      '00 00 00 02', // RunLength
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.SnackRequest,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      type: 3,
      lun: 0x0004000000000000n,
      itt: 0x60,
      ttt: 0x2000,
      expStatSN: 12,
      begRun: 4,
      runLength: 2,
    },
  },
  {
    name: 'NOP-In',
    header: bhs([
      '20 80 00 00', // opcode 0x20; F
      '00 00 00 00',
      '00 00 00 00', // LUN
      '00 00 00 00',
      'ff ff ff ff', // ITT (target-initiated ping)
      '00 00 00 99', // TTT
      '00 00 00 64', // StatSN
      '00 00 00 65', // ExpCmdSN
      '00 00 00 a4', // MaxCmdSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.NopIn,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      lun: 0n,
      itt: 0xffffffff,
      ttt: 0x99,
      statSN: 100,
      expCmdSN: 101,
      maxCmdSN: 164,
    },
  },
  {
    name: 'SCSI Response (CHECK CONDITION with sense, underflow)',
    header: bhs([
      '21 82 00 02', // opcode 0x21; 1, U; Response 0; Status CHECK CONDITION
      '00 00 00 14', // DataSegmentLength 20 (2 + 18 sense bytes)
      '00 00 00 00', // reserved
      '00 00 00 00',
      '0a 0b 0c 0d', // ITT
      '00 00 00 00', // SNACK Tag
      '00 00 00 64', // StatSN
      '00 00 00 65', // ExpCmdSN
      '00 00 00 84', // MaxCmdSN
      '00 00 00 01', // ExpDataSN
      '00 00 00 00', // Bidirectional Read Residual Count
      '00 00 02 00', // Residual Count
    ]),
    data: Buffer.concat([hex('00 12'), sense]),
    pdu: {
      opcode: Opcode.ScsiResponse,
      immediate: false,
      ahs: none,
      data: Buffer.concat([hex('00 12'), sense]),
      bidiOverflow: false,
      bidiUnderflow: false,
      overflow: false,
      underflow: true,
      response: 0,
      status: 2,
      itt: 0x0a0b0c0d,
      snack: 0,
      statSN: 100,
      expCmdSN: 101,
      maxCmdSN: 132,
      expDataSN: 1,
      bidiResidualCount: 0,
      residualCount: 0x200,
    },
  },
  {
    name: 'SCSI Response (all residual flags, target failure)',
    header: bhs([
      '21 9e 01 00', // opcode 0x21; 1, o u O U; Response 1
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 02', // ITT
      '00 00 00 03', // SNACK Tag
      '00 00 00 04', // StatSN
      '00 00 00 05', // ExpCmdSN
      '00 00 00 06', // MaxCmdSN
      '00 00 00 07', // ExpDataSN
      '00 00 00 08', // Bidirectional Read Residual Count
      '00 00 00 09', // Residual Count
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.ScsiResponse,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      bidiOverflow: true,
      bidiUnderflow: true,
      overflow: true,
      underflow: true,
      response: 1,
      status: 0,
      itt: 2,
      snack: 3,
      statSN: 4,
      expCmdSN: 5,
      maxCmdSN: 6,
      expDataSN: 7,
      bidiResidualCount: 8,
      residualCount: 9,
    },
  },
  {
    name: 'Task Management Function Response',
    header: bhs([
      '22 80 01 00', // opcode 0x22; 1; Response 1 (task does not exist)
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 01 01', // ITT
      '00 00 00 00', // reserved
      '00 00 00 11', // StatSN
      '00 00 00 12', // ExpCmdSN
      '00 00 00 13', // MaxCmdSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.TaskMgmtResponse,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      response: TmfResponse.TaskDoesNotExist,
      itt: 0x101,
      statSN: 0x11,
      expCmdSN: 0x12,
      maxCmdSN: 0x13,
    },
  },
  {
    name: 'Login Response',
    header: bhs([
      '23 87 00 00', // opcode 0x23; T, CSG 1, NSG 3; Version-max 0, Version-active 0
      '00 00 00 12', // DataSegmentLength 18
      '80 12 34 56', // ISID
      '78 9a 00 07', // ISID (cont.), TSIH 7
      '00 00 00 00', // ITT
      '00 00 00 00', // reserved
      '00 00 00 00', // StatSN
      '00 00 00 02', // ExpCmdSN
      '00 00 00 21', // MaxCmdSN
      '02 01 00 00', // Status-Class 2, Status-Detail 1
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: loginText,
    pdu: {
      opcode: Opcode.LoginResponse,
      immediate: false,
      ahs: none,
      data: loginText,
      transit: true,
      cont: false,
      csg: Stage.Operational,
      nsg: Stage.FullFeature,
      versionMax: 0,
      versionActive: 0,
      isid: 0x80123456789a,
      tsih: 7,
      itt: 0,
      statSN: 0,
      expCmdSN: 2,
      maxCmdSN: 0x21,
      statusClass: 2,
      statusDetail: 1,
    },
  },
  {
    name: 'Text Response',
    header: bhs([
      '24 40 00 00', // opcode 0x24; C (continue)
      '00 00 00 10', // DataSegmentLength 16
      '00 00 00 00', // LUN
      '00 00 00 00',
      '00 00 00 0a', // ITT
      '00 00 00 05', // TTT
      '00 00 00 30', // StatSN
      '00 00 00 31', // ExpCmdSN
      '00 00 00 32', // MaxCmdSN
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: sendTargets,
    pdu: {
      opcode: Opcode.TextResponse,
      immediate: false,
      ahs: none,
      data: sendTargets,
      final: false,
      cont: true,
      lun: 0n,
      itt: 10,
      ttt: 5,
      statSN: 0x30,
      expCmdSN: 0x31,
      maxCmdSN: 0x32,
    },
  },
  {
    name: 'SCSI Data-In (final, with status and underflow)',
    header: bhs([
      '25 83 00 04', // opcode 0x25; F U S; Status CONDITION MET
      '00 00 00 06', // DataSegmentLength 6
      '00 01 00 00', // LUN 1
      '00 00 00 00',
      '00 00 00 11', // ITT
      'ff ff ff ff', // TTT
      '00 00 00 20', // StatSN
      '00 00 00 21', // ExpCmdSN
      '00 00 00 40', // MaxCmdSN
      '00 00 00 03', // DataSN
      '00 00 30 00', // Buffer Offset
      '00 00 00 10', // Residual Count
    ]),
    data: hex('d1 d2 d3 d4 d5 d6'),
    pdu: {
      opcode: Opcode.DataIn,
      immediate: false,
      ahs: none,
      data: hex('d1 d2 d3 d4 d5 d6'),
      final: true,
      ack: false,
      overflow: false,
      underflow: true,
      hasStatus: true,
      status: 4,
      lun: 0x0001000000000000n,
      itt: 0x11,
      ttt: 0xffffffff,
      statSN: 0x20,
      expCmdSN: 0x21,
      maxCmdSN: 0x40,
      dataSN: 3,
      bufferOffset: 0x3000,
      residualCount: 0x10,
    },
  },
  {
    name: 'SCSI Data-In (A bit, overflow, no status)',
    header: bhs([
      '25 44 00 00', // opcode 0x25; A O
      '00 00 00 04', // DataSegmentLength 4
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 12', // ITT
      '00 00 00 13', // TTT
      '00 00 00 00', // StatSN (reserved without S)
      '00 00 00 14', // ExpCmdSN
      '00 00 00 15', // MaxCmdSN
      '00 00 00 00', // DataSN
      '00 00 00 00', // Buffer Offset
      '00 00 00 00', // Residual Count
    ]),
    data: hex('e1 e2 e3 e4'),
    pdu: {
      opcode: Opcode.DataIn,
      immediate: false,
      ahs: none,
      data: hex('e1 e2 e3 e4'),
      final: false,
      ack: true,
      overflow: true,
      underflow: false,
      hasStatus: false,
      status: 0,
      lun: 0n,
      itt: 0x12,
      ttt: 0x13,
      statSN: 0,
      expCmdSN: 0x14,
      maxCmdSN: 0x15,
      dataSN: 0,
      bufferOffset: 0,
      residualCount: 0,
    },
  },
  {
    name: 'Logout Response',
    header: bhs([
      '26 80 02 00', // opcode 0x26; 1; Response 2 (recovery not supported)
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 00',
      '00 00 00 50', // ITT
      '00 00 00 00', // reserved
      '00 00 00 0c', // StatSN
      '00 00 00 0d', // ExpCmdSN
      '00 00 00 0e', // MaxCmdSN
      '00 00 00 00', // reserved
      '00 02 00 14', // Time2Wait 2, Time2Retain 20
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.LogoutResponse,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      response: 2,
      itt: 0x50,
      statSN: 12,
      expCmdSN: 13,
      maxCmdSN: 14,
      time2Wait: 2,
      time2Retain: 20,
    },
  },
  {
    name: 'Ready To Transfer (R2T)',
    header: bhs([
      '31 80 00 00', // opcode 0x31; 1
      '00 00 00 00',
      '00 05 00 00', // LUN 5
      '00 00 00 00',
      '00 00 00 42', // ITT
      '00 00 10 00', // TTT
      '00 00 00 21', // StatSN
      '00 00 00 22', // ExpCmdSN
      '00 00 00 23', // MaxCmdSN
      '00 00 00 01', // R2TSN
      '00 01 00 00', // Buffer Offset
      '00 04 00 00', // Desired Data Transfer Length
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.R2T,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      lun: 0x0005000000000000n,
      itt: 0x42,
      ttt: 0x1000,
      statSN: 0x21,
      expCmdSN: 0x22,
      maxCmdSN: 0x23,
      r2tSN: 1,
      bufferOffset: 0x10000,
      desiredDataTransferLength: 0x40000,
    },
  },
  {
    name: 'Asynchronous Message',
    header: bhs([
      '32 80 00 00', // opcode 0x32; 1
      '00 00 00 00',
      '00 06 00 00', // LUN 6
      '00 00 00 00',
      'ff ff ff ff', // 0xffffffff
      '00 00 00 00', // reserved
      '00 00 00 40', // StatSN
      '00 00 00 41', // ExpCmdSN
      '00 00 00 42', // MaxCmdSN
      '01 00 00 0a', // AsyncEvent 1, AsyncVCode 0, Parameter1 10
      '00 02 00 14', // Parameter2 2, Parameter3 20
      '00 00 00 00',
    ]),
    data: Buffer.alloc(0),
    pdu: {
      opcode: Opcode.AsyncMessage,
      immediate: false,
      ahs: none,
      data: Buffer.alloc(0),
      lun: 0x0006000000000000n,
      statSN: 0x40,
      expCmdSN: 0x41,
      maxCmdSN: 0x42,
      asyncEvent: 1,
      asyncVCode: 0,
      parameter1: 10,
      parameter2: 2,
      parameter3: 20,
    },
  },
  {
    name: 'Reject',
    header: bhs([
      '3f 80 04 00', // opcode 0x3f; 1; Reason 0x04 (protocol error)
      '00 00 00 30', // DataSegmentLength 48
      '00 00 00 00',
      '00 00 00 00',
      'ff ff ff ff', // 0xffffffff
      '00 00 00 00', // reserved
      '00 00 00 50', // StatSN
      '00 00 00 51', // ExpCmdSN
      '00 00 00 52', // MaxCmdSN
      '00 00 00 00', // DataSN/R2TSN
      '00 00 00 00',
      '00 00 00 00',
    ]),
    data: rejected,
    pdu: {
      opcode: Opcode.Reject,
      immediate: false,
      ahs: none,
      data: rejected,
      reason: RejectReason.ProtocolError,
      statSN: 0x50,
      expCmdSN: 0x51,
      maxCmdSN: 0x52,
      dataSN: 0,
    },
  },
];

/** The wire bytes without digests: header, data, zero padding to 4. */
export function wire(v: Vector): Buffer {
  const pad = (4 - (v.data.length % 4)) % 4;
  return Buffer.concat([v.header, v.data, Buffer.alloc(pad)]);
}
