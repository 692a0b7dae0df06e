// Just enough ELF64 reading to assemble a guest initramfs without host tools:
// the shared libraries a program needs (DT_NEEDED, PT_INTERP) and a kernel
// module's .modinfo (depends=, softdep=, alias=). Little-endian x86-64 only.

const ELF_MAGIC = 0x464c457f; // "\x7fELF" read as little-endian u32
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;

const enum ProgramType {
  Load = 1,
  Dynamic = 2,
  Interp = 3,
}

const enum DynamicTag {
  Null = 0,
  Needed = 1,
  StrTab = 5,
}

function checkHeader(buf: Buffer, what: string): void {
  if (buf.length < 64 || buf.readUInt32LE(0) !== ELF_MAGIC) throw new Error(`${what}: not an ELF file`);
  if (buf[4] !== ELFCLASS64 || buf[5] !== ELFDATA2LSB) throw new Error(`${what}: not a little-endian ELF64 file`);
}

function cString(buf: Buffer, offset: number): string {
  const end = buf.indexOf(0, offset);
  return buf.toString('latin1', offset, end < 0 ? buf.length : end);
}

interface Segment {
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

function segments(buf: Buffer): Segment[] {
  const phoff = Number(buf.readBigUInt64LE(0x20));
  const phentsize = buf.readUInt16LE(0x36);
  const phnum = buf.readUInt16LE(0x38);
  const out: Segment[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * phentsize;
    out.push({
      type: buf.readUInt32LE(p),
      offset: Number(buf.readBigUInt64LE(p + 8)),
      vaddr: Number(buf.readBigUInt64LE(p + 16)),
      filesz: Number(buf.readBigUInt64LE(p + 32)),
    });
  }
  return out;
}

export interface DynamicInfo {
  /** PT_INTERP: the program loader, e.g. /lib64/ld-linux-x86-64.so.2; null for static binaries and libraries. */
  interpreter: string | null;
  /** DT_NEEDED sonames in file order. */
  needed: string[];
}

/** The loader and DT_NEEDED entries of an executable or shared library. */
export function readDynamicInfo(buf: Buffer, what = 'ELF file'): DynamicInfo {
  checkHeader(buf, what);
  const segs = segments(buf);
  const interpSeg = segs.find((s) => s.type === ProgramType.Interp);
  const interpreter = interpSeg ? cString(buf, interpSeg.offset) : null;
  const dyn = segs.find((s) => s.type === ProgramType.Dynamic);
  if (!dyn) return { interpreter, needed: [] };
  // DT_STRTAB holds a virtual address: map it back through the PT_LOAD segments.
  const toOffset = (vaddr: number): number => {
    const load = segs.find((s) => s.type === ProgramType.Load && vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz);
    if (!load) throw new Error(`${what}: address 0x${vaddr.toString(16)} is in no PT_LOAD segment`);
    return vaddr - load.vaddr + load.offset;
  };
  let strtab = -1;
  const neededOffsets: number[] = [];
  for (let p = dyn.offset; p + 16 <= dyn.offset + dyn.filesz; p += 16) {
    const tag = Number(buf.readBigInt64LE(p));
    const val = Number(buf.readBigUInt64LE(p + 8));
    if (tag === DynamicTag.Null) break;
    if (tag === DynamicTag.Needed) neededOffsets.push(val);
    else if (tag === DynamicTag.StrTab) strtab = toOffset(val);
  }
  if (neededOffsets.length > 0 && strtab < 0) throw new Error(`${what}: DT_NEEDED without DT_STRTAB`);
  return { interpreter, needed: neededOffsets.map((o) => cString(buf, strtab + o)) };
}

/** The contents of a named section (null when absent), found through the section header string table. */
export function readSection(buf: Buffer, name: string, what = 'ELF file'): Buffer | null {
  checkHeader(buf, what);
  const shoff = Number(buf.readBigUInt64LE(0x28));
  const shentsize = buf.readUInt16LE(0x3a);
  const shnum = buf.readUInt16LE(0x3c);
  const shstrndx = buf.readUInt16LE(0x3e);
  const header = (i: number): { name: number; offset: number; size: number } => {
    const p = shoff + i * shentsize;
    return { name: buf.readUInt32LE(p), offset: Number(buf.readBigUInt64LE(p + 24)), size: Number(buf.readBigUInt64LE(p + 32)) };
  };
  const names = header(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const h = header(i);
    if (cString(buf, names.offset + h.name) === name) return buf.subarray(h.offset, h.offset + h.size);
  }
  return null;
}

export interface ModInfo {
  /** Hard dependencies (depends=), module names as written. */
  depends: string[];
  /** Modules to load before this one (softdep= "pre:" part). */
  softPre: string[];
  /** alias= patterns, used for modules.alias so the kernel's request_module works. */
  aliases: string[];
}

/** A kernel module's .modinfo fields that matter for load order. */
export function readModInfo(buf: Buffer, what = 'kernel module'): ModInfo {
  const sec = readSection(buf, '.modinfo', what);
  const info: ModInfo = { depends: [], softPre: [], aliases: [] };
  if (!sec) return info;
  for (const field of sec.toString('latin1').split('\0')) {
    const eq = field.indexOf('=');
    if (eq < 0) continue;
    const key = field.slice(0, eq);
    const value = field.slice(eq + 1);
    if (key === 'depends') info.depends.push(...value.split(',').filter((s) => s !== ''));
    else if (key === 'alias') info.aliases.push(value);
    else if (key === 'softdep') {
      // "pre: a b post: c" (either part may be missing)
      const m = /pre:\s*([^:]*?)(?:\s+post:|$)/.exec(value);
      if (m) info.softPre.push(...m[1].split(/\s+/).filter((s) => s !== ''));
    }
  }
  return info;
}

/** Module names compare with '-' and '_' as the same character. */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, '_');
}
