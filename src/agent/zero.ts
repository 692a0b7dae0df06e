// ZeroCommand: the controller scrubs freed container segments before it
// hands them out again. Zero the range through the container driver
// (discard: a punched hole or zeroing discard where the medium guarantees
// zeros afterwards, else zeros written in bounded chunks), then flush, so
// CopyDone ok means the zeros are durable. A bad command gets ok=false with
// the reason, never an exception.
import type { ContainerResolver } from '../container/driver.js';
import type { CopyDone, ZeroCommand } from '../wire/proto-types.js';

export async function runZero(cmd: ZeroCommand, containers: ContainerResolver): Promise<CopyDone> {
  const fail = (error: string): CopyDone => ({ commandId: cmd.commandId, ok: false, error });
  const what = `zero ${cmd.commandId}: ${cmd.length} bytes of ${cmd.container}+${cmd.offset}`;
  const c = containers.get(cmd.container);
  if (!c) return fail(`${what}: container not reachable from this agent`);
  for (const [n, v] of [
    ['length', cmd.length],
    ['offset', cmd.offset],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) return fail(`${what}: ${n} ${v} invalid`);
  }
  if (cmd.offset + cmd.length > c.dataSize) return fail(`${what}: beyond the data area (${c.dataSize} bytes)`);
  try {
    if (cmd.length > 0) {
      await c.discard(cmd.offset, cmd.length);
      await c.flush();
    }
  } catch (err) {
    return fail(`${what}: ${(err as Error).message}`);
  }
  return { commandId: cmd.commandId, ok: true, error: '' };
}
