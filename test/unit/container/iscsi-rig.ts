// An in-process ScsiTransport for the iSCSI container driver's tests: every
// command runs through the project's real SCSI target stack
// (ScsiTargetDevice over MemoryBlockDevice), so READ CAPACITY, the VPD pages,
// WRITE SAME, UNMAP and sense data are the real ones. `intercept` lets a test
// answer a command itself (BUSY, a unit attention, a transport failure) before
// it reaches the target.
import { MemoryBlockDevice } from '../../../src/blockdev/memory-device.js';
import { ScsiTargetDevice } from '../../../src/scsi/target-device.js';
import { makeNexus, TaskAttribute } from '../../../src/scsi/port.js';
import type { ScsiRequest, ScsiResult, ScsiTransport, TransportState } from '../../../src/iscsi/initiator/transport.js';
import type { IscsiConnector } from '../../../src/container/iscsi-client.js';
import { TransportError } from '../../../src/iscsi/initiator/transport.js';

export const RIG_TARGET = 'iqn.2026-11.org.tabula:rig';
const nexus = makeNexus('iqn.2024-01.io.tabula:agent.test', 0x80_0000_0001, RIG_TARGET, 1);

/** Returns a result (or throws) to answer a command instead of the target; undefined lets it through. */
export type Interceptor = (req: ScsiRequest, n: number) => ScsiResult | undefined | Promise<ScsiResult | undefined>;

export class LoopTransport implements ScsiTransport {
  state: TransportState = 'up';
  intercept: Interceptor | undefined;
  /** Commands executed, by opcode (hex), interceptions included. */
  readonly ops: string[] = [];
  inFlight = 0;
  maxInFlight = 0;
  closed = 0;
  #tag = 1;

  constructor(readonly target: ScsiTargetDevice) {}

  async execute(req: ScsiRequest): Promise<ScsiResult> {
    if (this.state === 'closed') throw new TransportError('closed', 'transport closed');
    const n = this.ops.length;
    this.ops.push(req.cdb[0]!.toString(16).padStart(2, '0'));
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      // Lets other commands start before this one completes, as a network would.
      await new Promise((r) => setImmediate(r));
      const own = await this.intercept?.(req, n);
      if (own !== undefined) return own;
      const cdb = Buffer.alloc(16);
      req.cdb.copy(cdb);
      const dataOut = req.dataOut ?? null;
      const res = await this.target.execute({
        nexus,
        lun: req.lun,
        cdb,
        attr: TaskAttribute.Simple,
        tag: this.#tag++,
        dataOut,
        expectedLength: dataOut ? dataOut.length : (req.dataInLength ?? 0),
      });
      const out: ScsiResult = { status: res.status };
      if (res.sense) out.sense = res.sense;
      if (res.dataIn) {
        const want = req.dataInLength ?? 0;
        out.data = res.dataIn.subarray(0, Math.min(want, res.dataIn.length));
        // As the initiator does: Data-In lands in the caller's buffer, and data is a view of it.
        if (req.dataInBuffer !== undefined) out.data = req.dataInBuffer.subarray(0, out.data.copy(req.dataInBuffer));
        if (res.dataIn.length !== want) out.residual = want - res.dataIn.length;
      }
      return out;
    } finally {
      this.inFlight--;
    }
  }

  async close(): Promise<void> {
    this.state = 'closed';
    this.closed++;
  }

  /** The opcodes seen, e.g. count('93') for WRITE SAME(16). */
  count(op: string): number {
    return this.ops.filter((o) => o === op).length;
  }
}

export interface RigLun {
  lun?: number;
  blocks?: number;
  blockSize?: number;
  thin?: boolean;
  readOnly?: boolean;
}

export interface Rig {
  target: ScsiTargetDevice;
  devs: Map<number, MemoryBlockDevice>;
  transport: LoopTransport;
}

export function rig(luns: RigLun[] = [{}]): Rig {
  const target = new ScsiTargetDevice({ name: RIG_TARGET, portGroups: [{ id: 1, relativePortIds: [1] }] });
  const devs = new Map<number, MemoryBlockDevice>();
  luns.forEach((l, i) => {
    const lun = l.lun ?? i;
    const dev = new MemoryBlockDevice(l.blocks ?? 8192, { thin: l.thin ?? true, blockSize: l.blockSize ?? 512 });
    target.addLun(lun, dev, { readOnly: l.readOnly ?? false, lunId: `rig-${lun}` });
    devs.set(lun, dev);
  });
  return { target, devs, transport: new LoopTransport(target) };
}

/** Fixed-format sense for a CHECK CONDITION. */
export function checkCondition(key: number, asc: number, ascq: number, info?: number): ScsiResult {
  const s = Buffer.alloc(18);
  s[0] = 0x70 | (info !== undefined ? 0x80 : 0);
  s[2] = key;
  if (info !== undefined) s.writeUInt32BE(info, 3);
  s[7] = 10;
  s[12] = asc;
  s[13] = ascq;
  return { status: 0x02, sense: s };
}

/** A connector whose portals are in-process targets: `targets` by "host:port", each a list of targets. */
export function loopConnector(
  portals: Record<string, ScsiTargetDevice[]>,
  opts: { down?: Set<string>; intercept?: Interceptor } = {},
): IscsiConnector & { transports: LoopTransport[] } {
  const transports: LoopTransport[] = [];
  const at = (host: string, port: number): ScsiTargetDevice[] => {
    const key = `${host}:${port}`;
    if (opts.down?.has(key) || portals[key] === undefined) throw new TransportError('unreachable', `connect ${key}: ECONNREFUSED`);
    return portals[key]!;
  };
  return {
    transports,
    async connect(portal, target) {
      const t = at(portal.host, portal.port).find((x) => x.name === target);
      if (t === undefined) throw new TransportError('login', `target ${target} not found (login status 02/03)`);
      const tr = new LoopTransport(t);
      tr.intercept = opts.intercept;
      transports.push(tr);
      return tr;
    },
    async discover(portal) {
      return at(portal.host, portal.port).map((t) => ({ name: t.name, addresses: [`${portal.host}:${portal.port},1`] }));
    },
  };
}
