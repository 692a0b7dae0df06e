// Sizes with units, as admins type them: 512, 4k, 512MiB, 10GiB, 1.5T, 1TB.
// Binary units (KiB, MiB, ...) and the bare letters K/M/G/T/P are powers of 1024;
// decimal units (kB, MB, GB, TB, PB) are powers of 1000.

const BINARY: Record<string, number> = { k: 1, m: 2, g: 3, t: 4, p: 5 };

export class SizeError extends Error {
  constructor(input: string, why: string) {
    super(`bad size '${input}': ${why} (examples: 4096, 512MiB, 10GiB, 1TB)`);
    this.name = 'SizeError';
  }
}

export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw new SizeError(String(input), 'not a whole number of bytes');
    return input;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$/i.exec(input);
  if (!m) throw new SizeError(input, 'expected a number with an optional unit');
  const value = Number(m[1]);
  const unit = (m[2] ?? '').toLowerCase();
  const binary = m[3] !== '' || m[4] === '' || unit === '';
  let bytes = value;
  if (unit) bytes = value * (binary ? 1024 : 1000) ** BINARY[unit]!;
  if (m[3] && !unit) throw new SizeError(input, 'unit missing before "i"');
  if (!Number.isFinite(bytes) || bytes > Number.MAX_SAFE_INTEGER) throw new SizeError(input, 'too large');
  if (!Number.isInteger(bytes)) throw new SizeError(input, 'not a whole number of bytes');
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  if (v >= 1024 && i < units.length - 1) {
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${v.toFixed(1)}${units[i]}`;
  }
  return `${v}${units[i]}`;
}

/** HOST:PORT (IPv6 in brackets); the port defaults to `defaultPort`. */
export function parseHostPort(input: string, defaultPort: number): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(input.trim());
  if (!m) throw new Error(`bad address '${input}': expected HOST:PORT`);
  const host = (m[1] ?? m[2])!;
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad address '${input}': port must be 0-65535`);
  return { host, port };
}
