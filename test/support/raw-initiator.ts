// A minimal iSCSI initiator for tests: speaks PDUs through the project's codec
// so that tests can send exactly what they want (including malformed bytes)
// and observe exactly what the target answers. Every wait is time-bounded.
import { connect, type Socket } from 'node:net';
import { encodePdu } from '../../src/iscsi/pdu/encode.js';
import { PduParser } from '../../src/iscsi/pdu/parser.js';
import { encodeLun } from '../../src/iscsi/pdu/lun.js';
import {
  Opcode,
  RESERVED_TAG,
  Stage,
  TaskAttr,
  type InitiatorPdu,
  type LoginResponse,
  type Pdu,
  type ScsiCommandPdu,
  type TargetPdu,
} from '../../src/iscsi/pdu/types.js';

export interface LoginOptions {
  initiatorName?: string;
  targetName?: string;
  sessionType?: 'Normal' | 'Discovery';
  isid?: number;
  tsih?: number;
  /** Extra or overriding operational keys. */
  keys?: Record<string, string>;
  digests?: boolean;
}

export interface ScsiResult {
  status: number;
  sense?: Buffer;
  data: Buffer;
  residual: number;
  overflow: boolean;
  underflow: boolean;
}

function textData(keys: Record<string, string>): Buffer {
  return Buffer.from(
    Object.entries(keys)
      .map(([k, v]) => `${k}=${v}\0`)
      .join(''),
    'utf8',
  );
}

export function parseTextData(b: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of b.toString('utf8').split('\0')) {
    if (!part) continue;
    const i = part.indexOf('=');
    out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

export class RawInitiator {
  private readonly parser = new PduParser({ maxDataSegmentLength: 1 << 24 });
  private readonly queue: TargetPdu[] = [];
  private waiter: ((p: TargetPdu | null) => void) | null = null;
  private ended = false;
  digests = { header: false, data: false };
  cmdSN = 1;
  expStatSN = 0;
  private nextItt = 1;
  tsih = 0;
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.parser.push(c);
      for (;;) {
        const r = this.parser.next();
        if (!r) break;
        if (!r.ok) throw new Error(`target sent a malformed PDU: ${r.message}`);
        this.deliver(r.pdu as TargetPdu);
      }
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = null;
          w(null);
        }
        resolve();
      });
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<RawInitiator> {
    const s = connect({ port, host });
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    s.setNoDelay(true);
    return new RawInitiator(s);
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private deliver(p: TargetPdu): void {
    if ('statSN' in p && (p.opcode !== Opcode.DataIn || p.hasStatus)) this.expStatSN = (p.statSN + 1) >>> 0;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(p);
    } else this.queue.push(p);
  }

  itt(): number {
    return this.nextItt++;
  }

  send(pdu: InitiatorPdu): void {
    for (const b of encodePdu(pdu as Pdu, this.digests)) this.socket.write(b);
  }

  sendRaw(b: Buffer): void {
    this.socket.write(b);
  }

  /** Next PDU from the target, or null if the connection closed; throws after `ms`. */
  async next(ms = 5000): Promise<TargetPdu | null> {
    const q = this.queue.shift();
    if (q) return q;
    if (this.ended) return null;
    return new Promise<TargetPdu | null>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no PDU from target within ${ms} ms`));
      }, ms);
      this.waiter = (p) => {
        clearTimeout(t);
        resolve(p);
      };
    });
  }

  /** Resolves true if nothing arrives within `ms` (and the connection stays open). */
  async silentFor(ms: number): Promise<boolean> {
    try {
      const p = await this.next(ms);
      if (p) this.queue.unshift(p);
      return false;
    } catch {
      return true;
    }
  }

  async login(o: LoginOptions = {}): Promise<LoginResponse> {
    const keys: Record<string, string> = {
      InitiatorName: o.initiatorName ?? 'iqn.2026-11.org.tabula.test:raw',
      SessionType: o.sessionType ?? 'Normal',
      AuthMethod: 'None',
    };
    if ((o.sessionType ?? 'Normal') === 'Normal') keys.TargetName = o.targetName ?? '';
    const isid = o.isid ?? 0x400001370000 + Math.floor(Math.random() * 0xffff);
    const itt = this.itt();
    const sec = await this.loginPdu({ keys, isid, tsih: o.tsih ?? 0, itt, csg: Stage.Security, nsg: Stage.Operational });
    if (sec.statusClass !== 0) return sec;
    const op: Record<string, string> = {
      HeaderDigest: o.digests ? 'CRC32C' : 'None',
      DataDigest: o.digests ? 'CRC32C' : 'None',
      ...(o.sessionType === 'Discovery'
        ? { MaxRecvDataSegmentLength: '262144' }
        : {
            MaxRecvDataSegmentLength: '262144',
            InitialR2T: 'No',
            ImmediateData: 'Yes',
            MaxBurstLength: '262144',
            FirstBurstLength: '65536',
            MaxOutstandingR2T: '1',
            MaxConnections: '1',
            ErrorRecoveryLevel: '0',
            DefaultTime2Wait: '2',
            DefaultTime2Retain: '0',
            DataPDUInOrder: 'Yes',
            DataSequenceInOrder: 'Yes',
          }),
      ...o.keys,
    };
    const resp = await this.loginPdu({ keys: op, isid, tsih: o.tsih ?? 0, itt, csg: Stage.Operational, nsg: Stage.FullFeature });
    if (resp.statusClass === 0 && resp.transit) {
      this.tsih = resp.tsih;
      const got = parseTextData(resp.data);
      if (o.digests) this.digests = { header: got.HeaderDigest === 'CRC32C', data: got.DataDigest === 'CRC32C' };
      this.parser.setDigests(this.digests.header, this.digests.data);
    }
    return resp;
  }

  private async loginPdu(a: { keys: Record<string, string>; isid: number; tsih: number; itt: number; csg: Stage; nsg: Stage }): Promise<LoginResponse> {
    this.send({
      opcode: Opcode.LoginRequest,
      immediate: true,
      ahs: [],
      data: textData(a.keys),
      transit: true,
      cont: false,
      csg: a.csg,
      nsg: a.nsg,
      versionMax: 0,
      versionMin: 0,
      isid: a.isid,
      tsih: a.tsih,
      itt: a.itt,
      cid: 0,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
    });
    const r = await this.next();
    if (!r || r.opcode !== Opcode.LoginResponse) throw new Error(`expected a login response, got ${r ? r.opcode : 'close'}`);
    return r;
  }

  commandPdu(cdb: Buffer, o: { lun?: number; read?: number; write?: Buffer; immediateBytes?: number; itt?: number; cmdSN?: number; final?: boolean } = {}): ScsiCommandPdu {
    const cdb16 = Buffer.alloc(16);
    cdb.copy(cdb16);
    const write = o.write;
    const imm = write ? write.subarray(0, Math.min(write.length, o.immediateBytes ?? 0)) : Buffer.alloc(0);
    return {
      opcode: Opcode.ScsiCommand,
      immediate: false,
      ahs: [],
      data: imm,
      final: o.final ?? true,
      read: (o.read ?? 0) > 0,
      write: !!write,
      attr: TaskAttr.Simple,
      lun: encodeLun(o.lun ?? 0),
      itt: o.itt ?? this.itt(),
      expectedDataTransferLength: write ? write.length : (o.read ?? 0),
      cmdSN: o.cmdSN ?? this.cmdSN++,
      expStatSN: this.expStatSN,
      cdb: cdb16,
    };
  }

  /** Run one SCSI command to completion (answers R2Ts; collects Data-In). */
  async scsi(cdb: Buffer, o: { lun?: number; read?: number; write?: Buffer; immediateBytes?: number } = {}): Promise<ScsiResult> {
    const pdu = this.commandPdu(cdb, o);
    this.send(pdu);
    const chunks: Buffer[] = [];
    for (;;) {
      const r = await this.next(10_000);
      if (!r) throw new Error('connection closed during command');
      if (r.opcode === Opcode.R2T && r.itt === pdu.itt && o.write) {
        const seg = 65536;
        let dataSN = 0;
        for (let off = r.bufferOffset; off < r.bufferOffset + r.desiredDataTransferLength; off += seg) {
          const len = Math.min(seg, r.bufferOffset + r.desiredDataTransferLength - off);
          this.send({
            opcode: Opcode.DataOut,
            immediate: false,
            ahs: [],
            data: o.write.subarray(off, off + len),
            final: off + len >= r.bufferOffset + r.desiredDataTransferLength,
            lun: pdu.lun,
            itt: pdu.itt,
            ttt: r.ttt,
            expStatSN: this.expStatSN,
            dataSN: dataSN++,
            bufferOffset: off,
          });
        }
        continue;
      }
      if (r.opcode === Opcode.DataIn && r.itt === pdu.itt) {
        chunks.push(Buffer.from(r.data));
        if (r.hasStatus) return { status: r.status, data: Buffer.concat(chunks), residual: r.residualCount, overflow: r.overflow, underflow: r.underflow };
        continue;
      }
      if (r.opcode === Opcode.ScsiResponse && r.itt === pdu.itt) {
        const sense = r.data.length >= 2 ? r.data.subarray(2, 2 + r.data.readUInt16BE(0)) : undefined;
        return { status: r.status, sense, data: Buffer.concat(chunks), residual: r.residualCount, overflow: r.overflow, underflow: r.underflow };
      }
      if (r.opcode === Opcode.NopIn && r.itt === RESERVED_TAG) continue;
      throw new Error(`unexpected PDU opcode 0x${r.opcode.toString(16)} during command`);
    }
  }

  async logout(): Promise<void> {
    this.send({ opcode: Opcode.LogoutRequest, immediate: true, ahs: [], data: Buffer.alloc(0), reason: 0, itt: this.itt(), cid: 0, cmdSN: this.cmdSN, expStatSN: this.expStatSN });
    await this.next();
    this.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}
