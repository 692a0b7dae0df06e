// CopyCommand: copy bytes between two containers' data areas in bounded
// chunks (one reused buffer per command, so a 1 GiB segment never sits in
// memory). Each chunk is written FUA (O_DSYNC), so CopyDone means durable
// without a flush of the whole destination, which would also wait for every
// other writer's dirty pages in that container.
import type { ContainerResolver } from '../container/driver.js';
import type { CopyCommand, CopyDone } from '../wire/proto-types.js';

export const DEFAULT_COPY_CHUNK = 1 << 20;

export async function runCopy(cmd: CopyCommand, containers: ContainerResolver, chunkBytes = DEFAULT_COPY_CHUNK): Promise<CopyDone> {
  const fail = (error: string): CopyDone => ({ commandId: cmd.commandId, ok: false, error });
  const what = `copy ${cmd.commandId}: ${cmd.length} bytes from ${cmd.srcContainer}+${cmd.srcOffset} to ${cmd.dstContainer}+${cmd.dstOffset}`;
  const src = containers.get(cmd.srcContainer);
  const dst = containers.get(cmd.dstContainer);
  if (!src) return fail(`${what}: source container not reachable from this agent`);
  if (!dst) return fail(`${what}: destination container not reachable from this agent`);
  for (const [n, v] of [
    ['length', cmd.length],
    ['source offset', cmd.srcOffset],
    ['destination offset', cmd.dstOffset],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) return fail(`${what}: ${n} ${v} invalid`);
  }
  if (cmd.srcOffset + cmd.length > src.dataSize) return fail(`${what}: beyond the source data area (${src.dataSize} bytes)`);
  if (cmd.dstOffset + cmd.length > dst.dataSize) return fail(`${what}: beyond the destination data area (${dst.dataSize} bytes)`);
  if (src === dst && cmd.srcOffset < cmd.dstOffset + cmd.length && cmd.dstOffset < cmd.srcOffset + cmd.length) {
    return fail(`${what}: source and destination overlap`);
  }
  const buf = Buffer.allocUnsafe(Math.min(chunkBytes, Math.max(cmd.length, 1)));
  try {
    for (let done = 0; done < cmd.length; ) {
      const n = Math.min(buf.length, cmd.length - done);
      await src.readInto(cmd.srcOffset + done, buf, 0, n);
      await dst.write(cmd.dstOffset + done, n === buf.length ? buf : buf.subarray(0, n), { fua: true });
      done += n;
    }
  } catch (err) {
    return fail(`${what}: ${(err as Error).message}`);
  }
  return { commandId: cmd.commandId, ok: true, error: '' };
}
