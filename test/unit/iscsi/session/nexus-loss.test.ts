// An initiator that drops its connection loses its I_T nexus at once: a command
// arriving on another connection right after must not see its SPC-2 reservation.
import { expect } from 'chai';
import { IscsiPortalServer } from '../../../../src/iscsi/portal-server.js';
import { TargetRegistry } from '../../../../src/iscsi/target-registry.js';
import { MemoryBlockDevice } from '../../../../src/blockdev/memory-device.js';
import { ScsiTargetDevice } from '../../../../src/scsi/target-device.js';
import { RawInitiator } from '../../../support/raw-initiator.js';

const IQN = 'iqn.2026-11.org.tabula.test:nexus';

describe('nexus loss on connection close', () => {
  it('releases the SPC-2 reservation of a connection closed by the initiator before later commands run', async () => {
    const scsi = new ScsiTargetDevice({ name: IQN });
    scsi.addLun(0, new MemoryBlockDevice(2048));
    const reg = new TargetRegistry();
    reg.add({ name: IQN, portals: [] }, scsi);
    const server = new IscsiPortalServer(reg, { host: '127.0.0.1', port: 0, settings: { nopIntervalSec: 0 } });
    const { port } = await server.listen();
    const other = await RawInitiator.connect(port);
    try {
      expect((await other.login({ targetName: IQN, initiatorName: 'iqn.2026-11.org.tabula.test:b' })).statusClass).to.equal(0);
      for (let i = 0; i < 20; i++) {
        const holder = await RawInitiator.connect(port);
        expect((await holder.login({ targetName: IQN, initiatorName: 'iqn.2026-11.org.tabula.test:a' })).statusClass).to.equal(0);
        expect((await holder.scsi(Buffer.from([0x16, 0, 0, 0, 0, 0]))).status, 'RESERVE(6)').to.equal(0);
        holder.socket.end();
        await new Promise((r) => setTimeout(r, 5));
        const r = await other.scsi(Buffer.from([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), { read: 512 });
        expect(r.status, `READ(10) after the holder left (round ${i})`).to.equal(0);
        holder.destroy();
      }
    } finally {
      other.destroy();
      await server.close();
    }
  });
});
