// A ScsiPort double for transport tests: just enough SCSI to exercise data
// transfer (READ/WRITE 10 over a memory array), plus a command that blocks
// until released (to test aborts and ordering). SCSI semantics are tested
// elsewhere; here only the iSCSI layer is under test.
import type { Nexus, ScsiPort, ScsiRequest, ScsiResponse, TmfCode, TmfResult } from '../../../../src/scsi/port.js';

export const BLOCK = 512;
export const OP_BLOCKING = 0xc0; // vendor-specific opcode: waits until released

export class FakePort implements ScsiPort {
  readonly disk = Buffer.alloc(BLOCK * 4096);
  readonly executed: ScsiRequest[] = [];
  readonly tmfs: { fn: TmfCode; lun: number; nexus: Nexus }[] = [];
  readonly lost: Nexus[] = [];
  private releases: (() => void)[] = [];

  async execute(req: ScsiRequest): Promise<ScsiResponse> {
    this.executed.push(req);
    const op = req.cdb[0]!;
    if (op === 0x28) {
      const lba = req.cdb.readUInt32BE(2);
      const n = req.cdb.readUInt16BE(7);
      return { status: 0, dataIn: Buffer.from(this.disk.subarray(lba * BLOCK, (lba + n) * BLOCK)) };
    }
    if (op === 0x2a) {
      const lba = req.cdb.readUInt32BE(2);
      const n = req.cdb.readUInt16BE(7);
      const data = req.dataOut ?? Buffer.alloc(0);
      data.copy(this.disk, lba * BLOCK, 0, Math.min(data.length, n * BLOCK));
      return { status: 0, dataOutLength: n * BLOCK };
    }
    if (op === 0x00) return { status: 0 };
    if (op === OP_BLOCKING) {
      await new Promise<void>((r) => this.releases.push(r));
      return { status: 0 };
    }
    const sense = Buffer.alloc(18);
    sense[0] = 0x70;
    sense[2] = 0x05;
    sense[7] = 10;
    sense[12] = 0x20;
    return { status: 2, sense };
  }

  releaseAll(): void {
    const r = this.releases;
    this.releases = [];
    for (const f of r) f();
  }

  get blocked(): number {
    return this.releases.length;
  }

  async taskManagement(fn: TmfCode, nexus: Nexus, lun: number): Promise<TmfResult> {
    this.tmfs.push({ fn, lun, nexus });
    return 0;
  }

  /** Only its WRITE(10) hands data back, as the real command table says of WRITE(10/12/16). */
  releasesDataOut(cdb: Buffer): boolean {
    return cdb[0] === 0x2a;
  }

  hasLun(lun: number): boolean {
    return lun === 0;
  }

  nexusLost(nexus: Nexus): void {
    this.lost.push(nexus);
  }
}
