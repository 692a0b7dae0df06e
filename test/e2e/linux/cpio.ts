// A writer for the "newc" cpio format, the one the Linux kernel unpacks as an
// initramfs. Parent directories are added automatically, once each. All
// entries are owned by root with mtime 0 so the same input gives the same bytes.

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

export class CpioWriter {
  private readonly chunks: Buffer[] = [];
  private readonly dirs = new Set<string>();
  private readonly names = new Set<string>();
  private ino = 1;

  /** A directory (parents are created as needed). */
  dir(path: string, mode = 0o755): this {
    const p = clean(path);
    if (p === '' || this.dirs.has(p)) return this;
    this.parents(p);
    this.dirs.add(p);
    this.entry(p, S_IFDIR | mode, 2, Buffer.alloc(0));
    return this;
  }

  /** A regular file. */
  file(path: string, data: Buffer, mode = 0o644): this {
    const p = clean(path);
    this.parents(p);
    this.entry(p, S_IFREG | mode, 1, data);
    return this;
  }

  /** A symbolic link at path pointing to target. */
  symlink(path: string, target: string): this {
    const p = clean(path);
    this.parents(p);
    this.entry(p, S_IFLNK | 0o777, 1, Buffer.from(target, 'utf8'));
    return this;
  }

  has(path: string): boolean {
    const p = clean(path);
    return this.names.has(p) || this.dirs.has(p);
  }

  /** The archive with its trailer; the writer must not be used afterwards. */
  finish(): Buffer {
    this.entry('TRAILER!!!', 0, 1, Buffer.alloc(0), true);
    return Buffer.concat(this.chunks);
  }

  private parents(p: string): void {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) this.dir(parts.slice(0, i).join('/'));
  }

  private entry(name: string, mode: number, nlink: number, data: Buffer, trailer = false): void {
    if (!trailer) {
      if (this.names.has(name)) throw new Error(`cpio: ${name} added twice`);
      this.names.add(name);
    }
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const header =
      '070701' +
      hex8(trailer ? 0 : this.ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(0) + // mtime
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(0) + // rdevmajor
      hex8(0) + // rdevminor
      hex8(nameBytes.length) +
      hex8(0); // check
    this.chunks.push(Buffer.from(header, 'latin1'), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)));
    if (data.length > 0) this.chunks.push(data, Buffer.alloc(pad4(data.length)));
  }
}

function clean(path: string): string {
  return path.replace(/^\/+/, '').replace(/\/+$/, '');
}
