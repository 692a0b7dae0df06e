// SANITIZE (SBC-4 5.30): OVERWRITE and BLOCK ERASE over the LU's whole
// capacity, EXIT FAILURE MODE; CRYPTO ERASE is not offered. The operation runs
// in the background: once it starts, the LU is busy (other commands get NOT
// READY, SANITIZE IN PROGRESS, with progress in REQUEST SENSE) until it ends,
// whatever happens to the SANITIZE task itself (aborts and resets do not stop
// it). With IMMED=0 the command completes when the operation does.
import { BlockDeviceError } from '../blockdev/block-device.js';
import type { BlockDevice } from '../blockdev/block-device.js';
import { log } from '../util/log.js';
import type { CommandContext } from './command-spec.js';
import type { BusyState, LogicalUnitApi } from './lu-api.js';
import { good } from './command-spec.js';
import { ScsiError, Sense } from './sense.js';
import type { ScsiResponse } from './port.js';
import { ScsiStatus } from './port.js';

const enum SanitizeAction {
  Overwrite = 0x01,
  BlockErase = 0x02,
  CryptoErase = 0x03,
  ExitFailureMode = 0x1f,
}

/** Bytes written per device call; also the granularity of progress. */
const CHUNK_BYTES = 1 << 20;
/** Blocks deallocated per device call during BLOCK ERASE. */
const ERASE_CHUNK_BYTES = 64 << 20;

/**
 * OVERWRITE bandwidth limit, so that a sanitize of one vdisk does not starve
 * the other vdisks sharing its container (a background operation, like a RAID
 * rebuild rate). null = unlimited.
 */
let overwriteBytesPerSecond: number | null = 128 << 20;

export function setSanitizeRate(bytesPerSecond: number | null): void {
  overwriteBytesPerSecond = bytesPerSecond;
}

interface LuSanitizeState {
  running: boolean;
  /** The busy state of the running operation (its progress). */
  busy?: BusyState;
  /** Set after a failed sanitize: the LU stays in failure mode until a sanitize succeeds or EXIT FAILURE MODE (if AUSE was set). */
  failed?: { ause: boolean };
}

const states = new WeakMap<LogicalUnitApi, LuSanitizeState>();

function stateOf(lu: LogicalUnitApi): LuSanitizeState {
  let s = states.get(lu);
  if (!s) states.set(lu, (s = { running: false }));
  return s;
}

interface OverwriteParams {
  invert: boolean;
  count: number;
  pattern: Buffer;
}

/** SANITIZE (0x48). */
export async function sanitize(ctx: CommandContext): Promise<ScsiResponse> {
  const { cdb } = ctx.req;
  const lu = ctx.lu;
  const immed = (cdb[1]! & 0x80) !== 0;
  const ause = (cdb[1]! & 0x20) !== 0;
  const sa = cdb[1]! & 0x1f;
  if (cdb[1]! & 0x40) throw ScsiError.cdb(1, 6, 'SANITIZE: reserved bit set');
  for (let i = 2; i <= 6; i++) if (cdb[i] !== 0) throw ScsiError.cdb(i, undefined, `SANITIZE: reserved byte ${i} set`);
  const paramLen = cdb.readUInt16BE(7);
  if (sa !== SanitizeAction.Overwrite && sa !== SanitizeAction.BlockErase && sa !== SanitizeAction.ExitFailureMode) {
    // CRYPTO ERASE included: no encryption keys to change.
    throw ScsiError.cdb(1, 4, `SANITIZE service action 0x${sa.toString(16)} is not supported`);
  }
  const blockSize = lu.device.blockSize;
  if (sa === SanitizeAction.Overwrite ? paramLen < 5 || paramLen > blockSize + 4 : paramLen !== 0) {
    throw ScsiError.cdb(7, undefined, `SANITIZE: parameter list length ${paramLen} is not valid for service action 0x${sa.toString(16)}`);
  }
  const state = stateOf(lu);
  // Also reached when the table lets SANITIZE through a busy LU (to leave failure mode).
  if (state.running) {
    const progress = state.busy?.progress();
    throw new ScsiError(Sense.notReadySanitizeInProgress, progress === undefined ? {} : { progress }, 'SANITIZE already in progress');
  }

  if (sa === SanitizeAction.ExitFailureMode) {
    if (state.failed) {
      if (!state.failed.ause) throw ScsiError.cdb(1, 5, 'EXIT FAILURE MODE after a SANITIZE that did not allow it (AUSE=0)');
      state.failed = undefined;
      lu.setBusy(null);
    }
    return good();
  }

  const overwrite = sa === SanitizeAction.Overwrite ? parseOverwrite(ctx.req.dataOut, paramLen, blockSize) : undefined;
  if (lu.readOnly) throw new ScsiError(Sense.writeProtected, {}, `SANITIZE of read-only LU ${lu.lun}`);

  let done = 0;
  const total = overwrite ? overwrite.count * lu.device.blockCount : lu.device.blockCount;
  const busy: BusyState = {
    sense: Sense.notReadySanitizeInProgress,
    progress: () => (total === 0 ? 0 : Math.min(0xffff, Math.floor((done / total) * 0x10000))),
  };
  state.running = true;
  state.busy = busy;
  // Wait for commands already in progress, then turn every new one away.
  try {
    await lu.exclusive(async () => {
      state.failed = undefined;
      lu.setBusy(busy);
    });
  } catch (e) {
    state.running = false;
    throw e;
  }

  const work = (async (): Promise<void> => {
    const onProgress = (blocks: number): void => {
      done += blocks;
    };
    try {
      if (overwrite) await overwriteAll(lu.device, overwrite, onProgress);
      else await eraseAll(lu.device, onProgress);
      lu.setBusy(null);
    } catch (e) {
      log.error(`SANITIZE of LU ${lu.lun} failed: ${(e as Error).message}`);
      state.failed = { ause };
      lu.setBusy({ sense: Sense.sanitizeFailed, progress: () => undefined });
      throw new ScsiError(Sense.sanitizeFailed, {}, `SANITIZE failed: ${(e as Error).message}`);
    } finally {
      state.running = false;
    }
  })();
  // The operation outlives its command: never leave its failure unhandled.
  work.catch(() => undefined);

  if (immed) return good();
  const outcome = await untilDoneOrAborted(work, ctx);
  return outcome === 'aborted' ? { status: ScsiStatus.TaskAborted } : good();
}

function parseOverwrite(data: Buffer | null, paramLen: number, blockSize: number): OverwriteParams {
  if (!data || data.length < paramLen) {
    throw new ScsiError(Sense.parameterListLengthError, {}, `SANITIZE OVERWRITE: ${data?.length ?? 0} bytes received of ${paramLen}`);
  }
  const invert = (data[0]! & 0x80) !== 0;
  const test = (data[0]! >> 5) & 3;
  const count = data[0]! & 0x1f;
  const patternLen = data.readUInt16BE(2);
  if (test !== 0) throw ScsiError.param(0, 6, 'SANITIZE OVERWRITE: TEST field set');
  if (count === 0) throw ScsiError.param(0, 4, 'SANITIZE OVERWRITE: OVERWRITE COUNT is 0');
  if (patternLen === 0 || patternLen > blockSize || patternLen > paramLen - 4) {
    throw ScsiError.param(2, undefined, `SANITIZE OVERWRITE: initialization pattern length ${patternLen} (block ${blockSize}, list ${paramLen})`);
  }
  return { invert, count, pattern: Buffer.from(data.subarray(4, 4 + patternLen)) };
}

/** Every block gets the pattern, repeated from the start of the block. */
function patternChunk(pattern: Buffer, blockSize: number, bytes: number, invert: boolean): Buffer {
  const block = Buffer.alloc(blockSize);
  for (let o = 0; o < blockSize; o += pattern.length) pattern.copy(block, o, 0, Math.min(pattern.length, blockSize - o));
  if (invert) for (let i = 0; i < blockSize; i++) block[i] = ~block[i]! & 0xff;
  const chunk = Buffer.alloc(bytes);
  for (let o = 0; o < bytes; o += blockSize) block.copy(chunk, o);
  return chunk;
}

async function overwriteAll(dev: BlockDevice, p: OverwriteParams, progress: (blocks: number) => void): Promise<void> {
  const bs = dev.blockSize;
  const chunkBlocks = Math.max(1, Math.floor(CHUNK_BYTES / bs));
  const plain = patternChunk(p.pattern, bs, chunkBlocks * bs, false);
  const inverted = p.invert && p.count > 1 ? patternChunk(p.pattern, bs, chunkBlocks * bs, true) : plain;
  const started = Date.now();
  let written = 0;
  for (let pass = 0; pass < p.count; pass++) {
    // INVERT: the pattern is inverted between consecutive passes.
    const chunk = p.invert && pass % 2 === 1 ? inverted : plain;
    for (let lba = 0; lba < dev.blockCount; lba += chunkBlocks) {
      const n = Math.min(chunkBlocks, dev.blockCount - lba);
      await dev.write(lba, n === chunkBlocks ? chunk : chunk.subarray(0, n * bs));
      progress(n);
      written += n * bs;
      await pace(started, written);
    }
  }
  await dev.flush();
}

async function eraseAll(dev: BlockDevice, progress: (blocks: number) => void): Promise<void> {
  const chunkBlocks = Math.max(1, Math.floor(ERASE_CHUNK_BYTES / dev.blockSize));
  for (let lba = 0; lba < dev.blockCount; lba += chunkBlocks) {
    const n = Math.min(chunkBlocks, dev.blockCount - lba);
    if (dev.thin) await dev.unmap(lba, n);
    else await dev.writeZeroes(lba, n, false);
    progress(n);
  }
  await dev.flush();
}

/** Sleep so that `written` bytes since `started` stay within the overwrite rate. */
async function pace(started: number, written: number): Promise<void> {
  if (overwriteBytesPerSecond === null) return;
  const ahead = (written / overwriteBytesPerSecond) * 1000 - (Date.now() - started);
  if (ahead > 1) await new Promise((r) => setTimeout(r, ahead));
}

const ABORT_POLL_MS = 50;

/** Wait for the operation, but give the task back early if the initiator aborts it (the operation goes on). */
async function untilDoneOrAborted(work: Promise<void>, ctx: CommandContext): Promise<'done' | 'aborted'> {
  let timer: NodeJS.Timeout | undefined;
  const aborted = new Promise<'aborted'>((resolve) => {
    const poll = (): void => {
      if (ctx.req.aborted) resolve('aborted');
      else timer = setTimeout(poll, ABORT_POLL_MS);
    };
    timer = setTimeout(poll, ABORT_POLL_MS);
  });
  try {
    return await Promise.race([work.then(() => 'done' as const), aborted]);
  } catch (e) {
    if (e instanceof ScsiError) throw e;
    if (e instanceof BlockDeviceError) throw new ScsiError(Sense.sanitizeFailed, {}, e.message);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** True while a SANITIZE runs on `lu` (for tests and diagnostics). */
export function sanitizeInProgress(lu: LogicalUnitApi): boolean {
  return stateOf(lu).running;
}
