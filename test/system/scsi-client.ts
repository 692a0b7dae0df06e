// Precise SCSI I/O for the system tests over test/support/raw-initiator.ts:
// READ(16)/WRITE(16) with caller-chosen time limits (a held I/O can take as
// long as the hold timeout), and sense data decoded here, independently of
// src/scsi, so a wrong sense code cannot hide in both.
import { Opcode, RESERVED_TAG, type TargetPdu } from '../../src/iscsi/pdu/types.js';
import { RawInitiator } from '../support/raw-initiator.js';

export const GOOD = 0x00;
export const CHECK_CONDITION = 0x02;

export interface Sense {
  key: number;
  asc: number;
  ascq: number;
}

export interface IoResult {
  status: number;
  sense?: Sense;
  data: Buffer;
}

/** Fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data → key/asc/ascq. */
export function decodeSense(b: Buffer): Sense {
  const code = (b[0] ?? 0) & 0x7f;
  if (code === 0x72 || code === 0x73) return { key: (b[1] ?? 0) & 0x0f, asc: b[2] ?? 0, ascq: b[3] ?? 0 };
  if (code === 0x70 || code === 0x71) return { key: (b[2] ?? 0) & 0x0f, asc: b[12] ?? 0, ascq: b[13] ?? 0 };
  throw new Error(`unknown sense response code 0x${code.toString(16)}`);
}

export function senseText(s: Sense | undefined): string {
  if (s === undefined) return 'no sense';
  const h = (n: number): string => n.toString(16).padStart(2, '0');
  return `${h(s.key)}/${h(s.asc)}/${h(s.ascq)}`;
}

export function describeIo(r: IoResult): string {
  return r.status === GOOD ? 'GOOD' : `status 0x${r.status.toString(16)} sense ${senseText(r.sense)}`;
}

function cdb16(op: number, lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = op;
  c.writeBigUInt64BE(BigInt(lba), 2);
  c.writeUInt32BE(blocks, 10);
  return c;
}

type Handler = (p: TargetPdu | null) => void;

/**
 * A logged-in session to LUN 0 of a target, past the initial UNIT ATTENTION.
 * Commands may run concurrently: one reader hands each PDU to its command by
 * initiator task tag.
 */
export class LunSession {
  readonly #pending = new Map<number, Handler>();

  private constructor(
    readonly ini: RawInitiator,
    readonly blockSize: number,
  ) {
    void this.#pump();
  }

  static async open(portal: string, targetName: string, blockSize = 512): Promise<LunSession> {
    const [host, port] = portal.split(':') as [string, string];
    const ini = await RawInitiator.connect(Number(port), host);
    const resp = await ini.login({ targetName });
    if (resp.statusClass !== 0) {
      ini.destroy();
      throw new Error(`login to ${targetName} at ${portal} refused: class ${resp.statusClass} detail ${resp.statusDetail}`);
    }
    const s = new LunSession(ini, blockSize);
    // TEST UNIT READY until the power-on UNIT ATTENTION is consumed.
    for (let i = 0; i < 5; i++) {
      const r = await s.command(Buffer.from([0, 0, 0, 0, 0, 0]), {});
      if (r.status === GOOD) return s;
    }
    ini.destroy();
    throw new Error(`LUN 0 of ${targetName} at ${portal} not ready`);
  }

  async #pump(): Promise<void> {
    for (;;) {
      let p: TargetPdu | null;
      try {
        p = await this.ini.next(60_000);
      } catch {
        continue; // quiet for a minute: keep listening
      }
      if (p === null) break;
      if (p.opcode === Opcode.NopIn && p.itt === RESERVED_TAG) {
        // Answer target pings so a long hold does not end the connection.
        this.ini.send({ opcode: Opcode.NopOut, immediate: true, ahs: [], data: Buffer.alloc(0), lun: p.lun, itt: RESERVED_TAG, ttt: p.ttt, cmdSN: this.ini.cmdSN, expStatSN: this.ini.expStatSN });
        continue;
      }
      const h = 'itt' in p ? this.#pending.get(p.itt) : undefined;
      if (h !== undefined) h(p);
    }
    for (const h of [...this.#pending.values()]) h(null);
  }

  /** One command to completion within `timeoutMs`: immediate data up to the first burst, the rest on R2T. */
  command(cdb: Buffer, o: { read?: number; write?: Buffer; timeoutMs?: number }): Promise<IoResult> {
    const ini = this.ini;
    const limit = o.timeoutMs ?? 30_000;
    // F set after the immediate data: the target asks for the rest with R2Ts.
    const pdu = ini.commandPdu(cdb, { read: o.read, write: o.write, immediateBytes: 65536 });
    const chunks: Buffer[] = [];
    return new Promise<IoResult>((resolve, reject) => {
      const finish = (err: Error | null, r?: IoResult): void => {
        clearTimeout(timer);
        this.#pending.delete(pdu.itt);
        if (err) reject(err);
        else resolve(r as IoResult);
      };
      const timer = setTimeout(() => finish(new Error(`no answer to CDB 0x${cdb.subarray(0, 1).toString('hex')} within ${limit} ms`)), limit);
      this.#pending.set(pdu.itt, (r) => {
        if (r === null) return finish(new Error('connection closed during a command'));
        if (r.opcode === Opcode.R2T && o.write) {
          const seg = 65536;
          let dataSN = 0;
          const end = r.bufferOffset + r.desiredDataTransferLength;
          for (let off = r.bufferOffset; off < end; off += seg) {
            const len = Math.min(seg, end - off);
            ini.send({
              opcode: Opcode.DataOut,
              immediate: false,
              ahs: [],
              data: o.write.subarray(off, off + len),
              final: off + len >= end,
              lun: pdu.lun,
              itt: pdu.itt,
              ttt: r.ttt,
              expStatSN: ini.expStatSN,
              dataSN: dataSN++,
              bufferOffset: off,
            });
          }
          return;
        }
        if (r.opcode === Opcode.DataIn) {
          chunks.push(Buffer.from(r.data));
          if (r.hasStatus) finish(null, { status: r.status, data: Buffer.concat(chunks) });
          return;
        }
        if (r.opcode === Opcode.ScsiResponse) {
          try {
            const sense = r.data.length >= 2 ? decodeSense(r.data.subarray(2, 2 + r.data.readUInt16BE(0))) : undefined;
            finish(null, { status: r.status, sense, data: Buffer.concat(chunks) });
          } catch (err) {
            finish(err as Error);
          }
          return;
        }
        finish(new Error(`unexpected PDU opcode 0x${r.opcode.toString(16)} for a command`));
      });
      ini.send(pdu);
    });
  }

  read(lba: number, blocks: number, timeoutMs?: number): Promise<IoResult> {
    return this.command(cdb16(0x88, lba, blocks), { read: blocks * this.blockSize, timeoutMs });
  }

  write(lba: number, data: Buffer, timeoutMs?: number): Promise<IoResult> {
    if (data.length % this.blockSize !== 0) throw new Error(`write of ${data.length} bytes is not whole blocks`);
    return this.command(cdb16(0x8a, lba, data.length / this.blockSize), { write: data, timeoutMs });
  }

  /** SYNCHRONIZE CACHE(10) of the whole LUN. */
  sync(timeoutMs?: number): Promise<IoResult> {
    return this.command(Buffer.from([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), { timeoutMs });
  }

  close(): void {
    this.ini.destroy();
  }
}

/**
 * `blocks` blocks whose every 8-byte word is tag ^ absolute byte offset (from
 * `lba`), so data written at the wrong place or under the wrong tag shows.
 */
export function pattern(tag: number, lba: number, blocks: number, blockSize = 512): Buffer {
  const b = Buffer.alloc(blocks * blockSize);
  const base = lba * blockSize;
  for (let i = 0; i < b.length; i += 8) {
    b.writeUInt32BE(tag >>> 0, i);
    b.writeUInt32BE((base + i) >>> 0, i + 4);
  }
  return b;
}
