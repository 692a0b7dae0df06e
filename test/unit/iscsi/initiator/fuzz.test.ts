// Whatever a target sends, the session neither throws nor leaves a command
// hanging: random PDUs (well framed, random fields) and random bytes, then
// the connection ends, and every command has settled.
import { expect } from 'chai';
import { read16Cdb, write16Cdb } from '../../../../src/iscsi/initiator/cdb.js';
import { encodePdu } from '../../../../src/iscsi/pdu/encode.js';
import { Opcode, type TargetPdu } from '../../../../src/iscsi/pdu/types.js';
import type { ScsiCommandPdu } from '../../../../src/iscsi/pdu/types.js';
import { base, rig } from './fake-target.js';
import { prng } from '../../../support/prng.js';

const TARGET_OPS = [Opcode.NopIn, Opcode.ScsiResponse, Opcode.TaskMgmtResponse, Opcode.TextResponse, Opcode.DataIn, Opcode.LogoutResponse, Opcode.R2T, Opcode.AsyncMessage, Opcode.Reject, Opcode.LoginResponse];

describe('iSCSI initiator session fuzz', () => {
  it('survives 300 rounds of random target PDUs and bytes, and settles every command', async () => {
    const rnd = prng(0x15c51);
    const int = (n: number): number => Math.floor(rnd() * n);
    for (let round = 0; round < 300; round++) {
      const r = rig({ headerDigest: round % 3 === 0, dataDigest: round % 5 === 0 }, { nopIntervalMs: 0, commandTimeoutMs: 0 });
      const settled: Promise<unknown>[] = [];
      for (let i = 0; i < 4; i++) {
        const p =
          i % 2 === 0
            ? r.s.execute({ lun: 0, cdb: read16Cdb(i, 8), dataInLength: 4096 })
            : r.s.execute({ lun: 0, cdb: write16Cdb(i, 64), dataOut: Buffer.alloc(32768, i) });
        settled.push(p.then(() => 'ok', () => 'err'));
      }
      const itts = r.wire.take<ScsiCommandPdu>(Opcode.ScsiCommand).map((c) => c.itt);
      for (let k = 0; k < 12; k++) {
        if (int(4) === 0) {
          const junk = Buffer.alloc(int(200));
          for (let j = 0; j < junk.length; j++) junk[j] = int(256);
          r.s.receive(junk);
          continue;
        }
        const op = TARGET_OPS[int(TARGET_OPS.length)] as Opcode;
        const itt = int(3) === 0 ? int(0xffffffff) : (itts[int(itts.length)] ?? 1);
        const data = Buffer.alloc(int(3) === 0 ? int(9000) : 0, int(256));
        const f = (): number => (int(4) === 0 ? int(0xffffffff) >>> 0 : int(70000));
        // Every field any target PDU has, filled at random; the encoder takes the ones of `op`.
        const pdu = {
          ...base,
          opcode: op,
          data,
          final: int(2) === 0,
          cont: int(4) === 0,
          ack: false,
          overflow: int(4) === 0,
          underflow: int(4) === 0,
          bidiOverflow: false,
          bidiUnderflow: false,
          hasStatus: int(2) === 0,
          status: int(256),
          response: int(3) === 0 ? int(256) : 0,
          itt,
          ttt: f(),
          snack: 0,
          statSN: f(),
          expCmdSN: f(),
          maxCmdSN: f(),
          expDataSN: 0,
          dataSN: f(),
          r2tSN: 0,
          bufferOffset: f(),
          desiredDataTransferLength: f(),
          residualCount: f(),
          bidiResidualCount: 0,
          asyncEvent: int(6),
          asyncVCode: 0,
          parameter1: 0,
          parameter2: 0,
          parameter3: int(3),
          reason: int(16),
          time2Wait: 0,
          time2Retain: 0,
          transit: false,
          csg: 0,
          nsg: 0,
          versionMax: 0,
          versionActive: 0,
          isid: 0,
          tsih: 0,
          statusClass: 0,
          statusDetail: 0,
        } as unknown as TargetPdu;
        let bytes: Buffer;
        try {
          bytes = Buffer.concat(encodePdu(pdu, { header: round % 3 === 0, data: round % 5 === 0 }));
        } catch {
          continue;
        }
        r.s.receive(bytes);
      }
      r.s.connectionClosed('fuzz round over');
      const outcomes = await Promise.all(settled);
      expect(outcomes).to.have.lengthOf(4);
      expect(r.s.state).to.not.equal('up');
    }
  });
});
