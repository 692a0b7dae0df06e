// The pieces of the guest image builder that must be byte-exact: the newc cpio
// writer and the ELF readers. Expected bytes are written out by hand here.
import { expect } from 'chai';
import { CpioWriter } from './cpio.js';
import { readDynamicInfo, readModInfo } from './elf.js';

/** One newc header as the format defines it: magic and 13 eight-digit hex fields. */
function newcHeader(f: { ino: number; mode: number; nlink: number; size: number; namesize: number }): string {
  const h = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');
  return ['070701', h(f.ino), h(f.mode), h(0), h(0), h(f.nlink), h(0), h(f.size), h(0), h(0), h(0), h(0), h(f.namesize), h(0)].join('');
}

describe('guest image: cpio newc writer', () => {
  it('writes the parent directory, the file with padding, and the trailer', () => {
    const out = new CpioWriter().file('d/x', Buffer.from('hello'), 0o644).finish();
    const expected = Buffer.concat([
      // "d": 110-byte header + "d\0" = 112, already a multiple of 4
      Buffer.from(newcHeader({ ino: 1, mode: 0o40755, nlink: 2, size: 0, namesize: 2 }).toLowerCase() + 'd\0', 'latin1'),
      // "d/x": header + "d/x\0" = 114, padded to 116; data "hello" padded to 8
      Buffer.from(newcHeader({ ino: 2, mode: 0o100644, nlink: 1, size: 5, namesize: 4 }).toLowerCase() + 'd/x\0\0\0', 'latin1'),
      Buffer.from('hello\0\0\0', 'latin1'),
      // trailer: header + "TRAILER!!!\0" = 121, padded to 124
      Buffer.from(newcHeader({ ino: 0, mode: 0, nlink: 1, size: 0, namesize: 11 }).toLowerCase() + 'TRAILER!!!\0\0\0\0', 'latin1'),
    ]);
    expect(out.toString('hex')).to.equal(expected.toString('hex'));
  });

  it('stores a symlink target as its data and refuses a duplicate name', () => {
    const w = new CpioWriter().symlink('/l', 'target');
    expect(() => w.file('l', Buffer.alloc(0))).to.throw(/added twice/);
    const out = w.finish().toString('latin1');
    expect(out.slice(0, 110)).to.equal(newcHeader({ ino: 1, mode: 0o120777, nlink: 1, size: 6, namesize: 2 }).toLowerCase());
    // 110 + "l\0" is already a multiple of 4; the 6 data bytes are padded to 8
    expect(out.slice(110, 120)).to.equal('l\0target\0\0');
  });
});

/**
 * A minimal ELF64 shared object: one PT_LOAD mapping the file at vaddr
 * 0x400000, a PT_INTERP, a PT_DYNAMIC with two DT_NEEDED and a DT_STRTAB.
 */
function tinyElf(): Buffer {
  const b = Buffer.alloc(0x200);
  b.write('\x7fELF', 0, 'latin1');
  b[4] = 2; // ELFCLASS64
  b[5] = 1; // little-endian
  b.writeBigUInt64LE(0x40n, 0x20); // e_phoff
  b.writeUInt16LE(56, 0x36); // e_phentsize
  b.writeUInt16LE(3, 0x38); // e_phnum
  const ph = (i: number, type: number, off: number, vaddr: number, size: number): void => {
    const p = 0x40 + i * 56;
    b.writeUInt32LE(type, p);
    b.writeBigUInt64LE(BigInt(off), p + 8);
    b.writeBigUInt64LE(BigInt(vaddr), p + 16);
    b.writeBigUInt64LE(BigInt(size), p + 32);
  };
  ph(0, 1, 0, 0x400000, 0x200); // PT_LOAD
  ph(1, 3, 0x100, 0x400100, 8); // PT_INTERP
  ph(2, 2, 0x140, 0x400140, 64); // PT_DYNAMIC
  b.write('/ld.so\0', 0x100, 'latin1');
  // string table at file 0x180 (vaddr 0x400180): "\0libA.so.1\0libB.so.2\0"
  b.write('\0libA.so.1\0libB.so.2\0', 0x180, 'latin1');
  const dyn = (i: number, tag: number, val: number): void => {
    b.writeBigInt64LE(BigInt(tag), 0x140 + i * 16);
    b.writeBigUInt64LE(BigInt(val), 0x140 + i * 16 + 8);
  };
  dyn(0, 1, 1); // DT_NEEDED "libA.so.1"
  dyn(1, 5, 0x400180); // DT_STRTAB
  dyn(2, 1, 11); // DT_NEEDED "libB.so.2"
  dyn(3, 0, 0); // DT_NULL
  return b;
}

/** A minimal ELF64 relocatable file with a .modinfo section (as kernel modules have). */
function tinyModule(modinfo: string): Buffer {
  const b = Buffer.alloc(0x300);
  b.write('\x7fELF', 0, 'latin1');
  b[4] = 2;
  b[5] = 1;
  b.writeBigUInt64LE(0x100n, 0x28); // e_shoff
  b.writeUInt16LE(64, 0x3a); // e_shentsize
  b.writeUInt16LE(3, 0x3c); // e_shnum
  b.writeUInt16LE(2, 0x3e); // e_shstrndx
  const sh = (i: number, name: number, off: number, size: number): void => {
    const p = 0x100 + i * 64;
    b.writeUInt32LE(name, p);
    b.writeBigUInt64LE(BigInt(off), p + 24);
    b.writeBigUInt64LE(BigInt(size), p + 32);
  };
  const names = '\0.modinfo\0.shstrtab\0';
  b.write(names, 0x40, 'latin1');
  b.write(modinfo, 0x200, 'latin1');
  sh(0, 0, 0, 0);
  sh(1, 1, 0x200, modinfo.length);
  sh(2, 10, 0x40, names.length);
  return b;
}

describe('guest image: ELF readers', () => {
  it('reads PT_INTERP and DT_NEEDED in file order', () => {
    expect(readDynamicInfo(tinyElf())).to.deep.equal({ interpreter: '/ld.so', needed: ['libA.so.1', 'libB.so.2'] });
  });

  it('rejects a file that is not ELF', () => {
    expect(() => readDynamicInfo(Buffer.alloc(64), 'x')).to.throw(/x: not an ELF file/);
  });

  it('reads depends, softdep pre and aliases from .modinfo', () => {
    const info = readModInfo(tinyModule('license=GPL\0depends=jbd2,mbcache,crc16\0softdep=pre: crc32c post: foo\0alias=fs-ext4\0alias=ext3\0'));
    expect(info).to.deep.equal({ depends: ['jbd2', 'mbcache', 'crc16'], softPre: ['crc32c'], aliases: ['fs-ext4', 'ext3'] });
  });

  it('treats an empty depends= as no dependency', () => {
    expect(readModInfo(tinyModule('depends=\0')).depends).to.deep.equal([]);
  });
});
