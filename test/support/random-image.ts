// Deterministic sparse test images: a seed fixes every byte. The image is a
// sequence of 1 MiB chunks, each a hole (never written: sparse, reads as
// zeros), random data, or random data over a sub-range (512-byte aligned, so
// partial-block and sub-4k boundaries are exercised). Random bytes come from
// AES-128-CTR over zeros, which is fast (GB/s) and reproducible.
import { createCipheriv, createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { prng } from './prng.js';

export const CHUNK = 1 << 20;

export interface ImageLayout {
  /** Bytes that are random data (the rest reads as zeros). */
  dataBytes: number;
  holes: number;
  full: number;
  partial: number;
}

/**
 * Write a sparse image of sizeBytes (a multiple of 1 MiB) to path. About 45 %
 * of chunks are holes, 40 % full random data, 15 % partly data; the first and
 * last chunks always hold data so both ends of the LUN are checked.
 */
export async function writeRandomImage(path: string, sizeBytes: number, seed: number): Promise<ImageLayout> {
  if (sizeBytes <= 0 || sizeBytes % CHUNK !== 0) throw new Error(`image size ${sizeBytes} is not a positive multiple of 1 MiB`);
  const chunks = sizeBytes / CHUNK;
  const rnd = prng(seed);
  const key = createHash('sha256').update(`tabula-interop-image-${seed}`).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  const cipher = createCipheriv('aes-128-ctr', key, iv);
  const zeros = Buffer.alloc(CHUNK);
  const layout: ImageLayout = { dataBytes: 0, holes: 0, full: 0, partial: 0 };
  const fh = await open(path, 'w');
  try {
    await fh.truncate(sizeBytes);
    for (let i = 0; i < chunks; i++) {
      const r = rnd();
      const edge = i === 0 || i === chunks - 1;
      if (!edge && r < 0.45) {
        layout.holes++;
        continue;
      }
      // The keystream advances for every data chunk, so contents depend only on the seed.
      const data = cipher.update(zeros);
      if (edge || r < 0.85) {
        layout.full++;
        layout.dataBytes += CHUNK;
        await fh.write(data, 0, CHUNK, i * CHUNK);
      } else {
        layout.partial++;
        const sectors = CHUNK / 512;
        const start = Math.floor(rnd() * sectors);
        const len = 1 + Math.floor(rnd() * (sectors - start));
        layout.dataBytes += len * 512;
        await fh.write(data, start * 512, len * 512, i * CHUNK + start * 512);
      }
    }
  } finally {
    await fh.close();
  }
  return layout;
}
