// Robustness: random and mutated input never crashes or hangs the target, and
// never disturbs another session. Seeded, so a failure reproduces.
import { expect } from 'chai';
import { IscsiPortalServer } from '../../../../src/iscsi/portal-server.js';
import { TargetRegistry } from '../../../../src/iscsi/target-registry.js';
import { encodeHeader } from '../../../../src/iscsi/pdu/encode.js';
import { Opcode } from '../../../../src/iscsi/pdu/types.js';
import { MemoryBlockDevice } from '../../../../src/blockdev/memory-device.js';
import { ScsiTargetDevice } from '../../../../src/scsi/target-device.js';
import { RawInitiator } from '../../../support/raw-initiator.js';

const IQN = 'iqn.2026-11.org.tabula.test:fuzz';

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('fuzzing the target', function () {
  this.timeout(60_000);
  let server: IscsiPortalServer;
  let port: number;

  beforeEach(async () => {
    const scsi = new ScsiTargetDevice({ name: IQN });
    scsi.addLun(0, new MemoryBlockDevice(8192));
    const reg = new TargetRegistry();
    reg.add({ name: IQN, portals: [] }, scsi);
    server = new IscsiPortalServer(reg, { host: '127.0.0.1', port: 0, settings: { loginTimeoutSec: 2, nopIntervalSec: 0 } });
    port = (await server.listen()).port;
  });

  afterEach(async () => {
    await server.close();
  });

  it('answers every random CDB with a status, never a crash or a hang', async () => {
    const rnd = prng(1234);
    const c = await RawInitiator.connect(port);
    try {
      expect((await c.login({ targetName: IQN })).statusClass).to.equal(0);
      for (let i = 0; i < 600; i++) {
        const len = [6, 10, 12, 16][Math.floor(rnd() * 4)]!;
        const cdb = Buffer.alloc(len);
        for (let j = 0; j < len; j++) cdb[j] = Math.floor(rnd() * 256);
        // Keep transfers small so the run stays quick; the CDB's own length fields stay random.
        const write = rnd() < 0.3 ? Buffer.alloc(Math.floor(rnd() * 4) * 512, 0x5a) : undefined;
        const r = await c.scsi(cdb, { read: write ? 0 : Math.floor(rnd() * 8) * 512, write, immediateBytes: write?.length });
        expect([0x00, 0x02, 0x04, 0x08, 0x18, 0x28], `status for CDB ${cdb.toString('hex')}`).to.include(r.status);
        if (r.status === 2) expect(r.sense, `sense for CDB ${cdb.toString('hex')}`).to.not.equal(undefined);
      }
    } finally {
      c.destroy();
    }
  });

  it('survives mutated PDUs: each gets a Reject, a response or a close of that connection only', async () => {
    const rnd = prng(99);
    const witness = await RawInitiator.connect(port);
    expect((await witness.login({ targetName: IQN })).statusClass).to.equal(0);
    try {
      for (let round = 0; round < 25; round++) {
        const c = await RawInitiator.connect(port);
        try {
          if ((await c.login({ targetName: IQN })).statusClass !== 0) continue;
          for (let i = 0; i < 6 && !c.isClosed; i++) {
            const base = c.commandPdu(Buffer.from([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]), { read: 512 });
            const h = encodeHeader(base);
            const flips = 1 + Math.floor(rnd() * 4);
            for (let f = 0; f < flips; f++) h[Math.floor(rnd() * 48)] = Math.floor(rnd() * 256);
            // A length field may now promise data that never comes: send some random tail.
            const tail = Buffer.alloc(Math.floor(rnd() * 64), 0xee);
            c.sendRaw(Buffer.concat([h, tail]));
            try {
              await c.next(100);
            } catch {
              // silence is allowed (e.g. a command outside the CmdSN window, or waiting for data)
            }
          }
        } finally {
          c.destroy();
        }
        // After every round the other session still works.
        const r = await witness.scsi(Buffer.from([0, 0, 0, 0, 0, 0]));
        expect(r.status === 0 || r.status === 2).to.equal(true);
      }
      const opcodeCheck = await witness.scsi(Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), { read: 8 });
      expect(opcodeCheck.status).to.equal(0);
      expect(Opcode.ScsiCommand).to.equal(1);
    } finally {
      witness.destroy();
    }
  });
});
