// A writer at queue depth N that runs on a host of the storage-network
// topology (inside its namespace: `ip netns exec NS node --import tsx THIS`),
// since the test process itself cannot reach the namespaces' addresses.
// Random writes of 4-64 KiB at 4 KiB-aligned offsets through one session to
// an agent's LUN 0, never two in flight over the same bytes; each write's data
// goes to a reference file when it is issued, so the reference equals the LUN
// once every write has completed GOOD. A write that is not GOOD is an error
// (the agent is meant to hold I/O through an outage, not fail it).
//
//   node --import tsx storage-network-writer.ts PORTAL IQN SIZE REF DEPTH MAX_SECONDS
//
// Prints `writes N` every second, and on SIGTERM (or after MAX_SECONDS) waits
// for what is in flight and prints one JSON line {writes, bytes, errors}.
import { randomBytes, randomInt } from 'node:crypto';
import { openSync, writeSync } from 'node:fs';
import { GOOD, LunSession, describeIo } from './scsi-client.js';

const UNIT = 4096;

export interface WriterSummary {
  writes: number;
  bytes: number;
  errors: string[];
}

async function main(argv: readonly string[]): Promise<void> {
  const [portal, iqn, sizeText, ref, depthText, secondsText] = argv;
  if (portal === undefined || iqn === undefined || ref === undefined) throw new Error('usage: PORTAL IQN SIZE REF DEPTH MAX_SECONDS');
  const size = Number(sizeText);
  const depth = Number(depthText ?? 16);
  const units = size / UNIT;
  const refFd = openSync(ref, 'r+');
  const session = await LunSession.open(portal, iqn);
  const busy = new Uint8Array(units);
  const summary: WriterSummary = { writes: 0, bytes: 0, errors: [] };
  let stop = false;
  const end = (): void => {
    stop = true;
  };
  process.on('SIGTERM', end);
  const limit = setTimeout(end, Number(secondsText ?? 600) * 1000);
  const progress = setInterval(() => process.stdout.write(`writes ${summary.writes}\n`), 1000);

  const pick = (): { unit: number; n: number } => {
    for (;;) {
      const n = randomInt(1, 17);
      const unit = randomInt(0, units - n + 1);
      let free = true;
      for (let u = unit; u < unit + n && free; u++) free = busy[u] === 0;
      if (free) return { unit, n };
    }
  };

  const slot = async (): Promise<void> => {
    while (!stop) {
      const { unit, n } = pick();
      busy.fill(1, unit, unit + n);
      const data = randomBytes(n * UNIT);
      writeSync(refFd, data, 0, data.length, unit * UNIT);
      try {
        // Long enough to outlast the agent's hold of I/O during an outage.
        const r = await session.write((unit * UNIT) / 512, data, 120_000);
        if (r.status !== GOOD) summary.errors.push(`WRITE at ${unit * UNIT} (${data.length} bytes): ${describeIo(r)}`);
      } catch (err) {
        summary.errors.push(`WRITE at ${unit * UNIT} (${data.length} bytes): ${(err as Error).message}`);
        stop = true;
        return;
      } finally {
        busy.fill(0, unit, unit + n);
      }
      summary.writes++;
      summary.bytes += data.length;
    }
  };

  await Promise.all(Array.from({ length: depth }, () => slot()));
  clearTimeout(limit);
  clearInterval(progress);
  session.close();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`writer: ${(err as Error).message}\n`);
    process.exit(2);
  },
);
