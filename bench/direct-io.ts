// What O_DIRECT costs a container (file-io.ts, direct mode) against buffered
// I/O: 4 KiB random reads and writes at depth 32 through FileContainerDriver
// on one file, buffered and direct, with the caller's buffer aligned (no
// bounce copy) and unaligned (as the agent's iSCSI buffers are), and 512-byte
// writes into 4 KiB-aligned direct I/O (read-modify-write). Prints IOPS and
// CPU per I/O of this process. Not part of `npm run bench`:
//
//   npx tsx bench/direct-io.ts [--dir /var/tmp] [--size 256MiB] [--seconds 5]
//
// Buffered reads come from the page cache once the file has been read (the
// file is written first), so the buffered read row is the cache's speed, not
// the disk's: that gap is what direct mode gives up for coherence across hosts.
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { alignedBuffer } from '../src/blockdev/aligned-buffers.js';
import { openContainer, type FileContainerDriver } from '../src/container/file-driver.js';
import { initContainer } from '../src/container/init.js';
import { parseSize } from '../src/util/size.js';

interface Row {
  mode: string;
  op: 'read' | 'write';
  buffer: string;
  iops: number;
  usPerIo: number;
  cpuUsPerIo: number;
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? (process.argv[i + 1] as string) : dflt;
}

/** A buffer 4 KiB-aligned (shift -1), or a view `shift` bytes into a Node allocation (aligned to 8 at best). */
function buffer(len: number, shift: number): Buffer {
  if (shift < 0) return alignedBuffer(len, 4096).fill(0x5a);
  return Buffer.alloc(len + shift, 0x5a).subarray(shift);
}

async function run(d: FileContainerDriver, op: 'read' | 'write', ioBytes: number, unalignedBy: number, seconds: number, depth: number): Promise<{ ios: number; wallUs: number; cpuUs: number }> {
  const blocks = Math.floor(d.dataSize / 4096) - 1;
  let seed = 12345;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  const until = Date.now() + seconds * 1000;
  let ios = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const worker = async (): Promise<void> => {
    const buf = buffer(ioBytes, unalignedBy);
    while (Date.now() < until) {
      const off = (next() % blocks) * 4096 + (ioBytes < 4096 ? 512 * (next() % 8) : 0);
      if (op === 'read') await d.readInto(off, buf, 0, ioBytes);
      else await d.write(off, buf);
      ios++;
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const c = process.cpuUsage(cpu0);
  return { ios, wallUs, cpuUs: c.user + c.system };
}

async function main(): Promise<void> {
  const base = arg('dir', '/var/tmp');
  const size = parseSize(arg('size', '256MiB'));
  const seconds = Number(arg('seconds', '5'));
  const depth = 32;
  const dir = mkdtempSync(join(base, 'tabula-direct-bench-'));
  const path = join(dir, 'c.img');
  const rows: Row[] = [];
  try {
    await initContainer(path, { size });
    // Allocate every block once so that reads hit data, not holes.
    {
      const d = await openContainer(path);
      const chunk = Buffer.alloc(1 << 20, 0x33);
      for (let off = 0; off + chunk.length <= d.dataSize; off += chunk.length) await d.write(off, chunk);
      await d.flush();
      await d.close();
    }
    const variants: { mode: string; direct: boolean; alignment?: number; ioBytes: number; shift: number; buffer: string }[] = [
      { mode: 'buffered', direct: false, ioBytes: 4096, shift: 0, buffer: 'any' },
      { mode: 'direct', direct: true, ioBytes: 4096, shift: -1, buffer: 'aligned (no copy)' },
      { mode: 'direct', direct: true, ioBytes: 4096, shift: 1, buffer: 'unaligned (bounce copy)' },
      { mode: 'direct 4K-aligned, 512 B I/O', direct: true, alignment: 4096, ioBytes: 512, shift: 1, buffer: 'read-modify-write' },
    ];
    for (const v of variants) {
      const d = await openContainer(path, { direct: v.direct, directAlignment: v.alignment });
      try {
        if (v.direct && !d.direct) throw new Error(`${path}: O_DIRECT refused here; pick another --dir`);
        for (const op of ['read', 'write'] as const) {
          const r = await run(d, op, v.ioBytes, v.shift, seconds, depth);
          rows.push({ mode: v.mode, op, buffer: v.buffer, iops: Math.round(r.ios / (r.wallUs / 1e6)), usPerIo: r.wallUs / r.ios, cpuUsPerIo: r.cpuUs / r.ios });
        }
        await d.flush();
      } finally {
        await d.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const head = ['mode', 'op', 'buffer', 'IOPS', 'CPU us/IO'];
  const lines = rows.map((r) => [r.mode, r.op, r.buffer, String(r.iops), r.cpuUsPerIo.toFixed(1)]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] as string).length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] as number)).join('  ');
  process.stdout.write(`O_DIRECT vs buffered, 4 KiB random, depth ${depth}, ${seconds} s each, ${base}\n${fmt(head)}\n${lines.map(fmt).join('\n')}\n`);
  process.stdout.write(`${JSON.stringify(rows)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
