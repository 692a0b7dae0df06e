// The mode pages of one logical unit (SPC-4 7.5, SBC-4 6.5): their layouts,
// default and changeable values, and the current values every I_T nexus
// shares. MODE SENSE / MODE SELECT (mode.ts) read and change them.
//
// Changeable: WCE (caching page), D_SENSE and SWP (control page). With WCE=0
// every write is issued with FUA, so it is durable before GOOD status; with
// SWP=1 the medium is write protected (DATA PROTECT) for every nexus.
// Saved values are not implemented.
//
// The current values are LU state: a vdisk exported by several agents is one
// LU, so the controller owns them like reservations (ModePageValues travel in
// LuState) and MODE SELECT is a step of applyLuRequest (reservations.ts).
import { ScsiError, Sense } from './sense.js';

/** One page's current values where they differ from the defaults (only changeable bits count); the page header included. */
export interface ModePageValues {
  page: number;
  subpage: number;
  values: Buffer;
}

export const enum ModePage {
  ReadWriteErrorRecovery = 0x01,
  Caching = 0x08,
  Control = 0x0a,
  InformationalExceptions = 0x1c,
  AllPages = 0x3f,
}

interface PageDef {
  page: number;
  subpage: number;
  /** Default values, page header included. */
  defaults: number[];
  /** Changeable bit mask, page header bytes zero. */
  changeable: number[];
}

/** Page layouts with their default values (SPC-4 7.5, SBC-4 6.5). */
const PAGES: readonly PageDef[] = [
  {
    page: 0x01,
    subpage: 0,
    // AWRE | ARRE; retry counts and recovery time limit zero
    defaults: [0x01, 0x0a, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    changeable: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  },
  {
    page: 0x08,
    subpage: 0,
    // WCE=1; prefetch fields "no limit"
    defaults: [0x08, 0x12, 0x04, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
    changeable: [0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  },
  {
    page: 0x0a,
    subpage: 0,
    // TST=0, D_SENSE=0; QUEUE ALGORITHM MODIFIER=1 (unrestricted), QErr=0; SWP=0; TAS=0; busy timeout unlimited
    defaults: [0x0a, 0x0a, 0x00, 0x10, 0x00, 0x00, 0, 0, 0xff, 0xff, 0, 0],
    changeable: [0, 0, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0],
  },
  {
    page: 0x0a,
    subpage: 0x01,
    // control extension: nothing enabled
    defaults: [0x4a, 0x01, 0x00, 0x1c, ...new Array<number>(28).fill(0)],
    changeable: new Array<number>(32).fill(0),
  },
  {
    page: 0x1c,
    subpage: 0,
    // DEXCPT=1: no informational exception reporting
    defaults: [0x1c, 0x0a, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0],
    changeable: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  },
];

/** Current mode page values of one LU. */
export class ModeState {
  private readonly current = new Map<PageDef, Buffer>();
  /** The same buffers by page << 8 | subpage: every WRITE reads SWP and WCE, without walking `current`. */
  private readonly byCode = new Map<number, Buffer>();

  constructor() {
    this.resetToDefaults();
  }

  /** D_SENSE in the control page: sense data in descriptor format. */
  get descriptorSense(): boolean {
    return (this.page(0x0a, 0)[2]! & 0x04) !== 0;
  }

  /** SWP in the control page: the medium is write protected. */
  get softwareWriteProtect(): boolean {
    return (this.page(0x0a, 0)[4]! & 0x08) !== 0;
  }

  /** WCE in the caching page: writes may complete before they are durable. */
  get writeCacheEnabled(): boolean {
    return (this.page(0x08, 0)[2]! & 0x04) !== 0;
  }

  /** Set D_SENSE directly (tests, configuration). */
  setDescriptorSense(on: boolean): void {
    const p = this.page(0x0a, 0);
    p[2] = on ? p[2]! | 0x04 : p[2]! & ~0x04;
  }

  setWriteCache(on: boolean): void {
    const p = this.page(0x08, 0);
    p[2] = on ? p[2]! | 0x04 : p[2]! & ~0x04;
  }

  /** Back to default values (not used on LU reset: there are no saved values to restore). */
  resetToDefaults(): void {
    for (const p of PAGES) {
      const b = Buffer.from(p.defaults);
      this.current.set(p, b);
      this.byCode.set((p.page << 8) | p.subpage, b);
    }
  }

  /** The pages whose current values differ from the defaults, in page order: the LU state's share of the mode pages. */
  values(): ModePageValues[] {
    const out: ModePageValues[] = [];
    for (const [def, cur] of this.current) {
      if (cur.some((b, i) => b !== def.defaults[i])) out.push({ page: def.page, subpage: def.subpage, values: Buffer.from(cur) });
    }
    return out;
  }

  /**
   * Replaces the current values: defaults, then the changeable bits of each
   * page given (other bits, and pages this build does not know, are ignored,
   * so a state from another build cannot change what is not changeable).
   */
  setValues(pages: readonly ModePageValues[]): void {
    this.resetToDefaults();
    for (const v of pages) {
      const def = this.find(v.page, v.subpage);
      if (def === undefined) continue;
      const cur = this.current.get(def)!;
      for (let i = 0; i < cur.length && i < v.values.length; i++) {
        cur[i] = (cur[i]! & ~def.changeable[i]!) | (v.values[i]! & def.changeable[i]!);
      }
    }
  }

  private page(page: number, subpage: number): Buffer {
    const b = this.byCode.get((page << 8) | subpage);
    if (b !== undefined) return b;
    throw new Error(`mode page ${page}/${subpage} is not defined`);
  }

  /** Pages selected by a MODE SENSE page code / subpage code, in ascending order; undefined if none matches. */
  select(page: number, subpage: number): PageDef[] | undefined {
    let out: PageDef[];
    if (page === ModePage.AllPages) {
      if (subpage === 0x00) out = PAGES.filter((p) => p.subpage === 0);
      else if (subpage === 0xff) out = [...PAGES];
      else return undefined;
    } else if (subpage === 0xff) {
      out = PAGES.filter((p) => p.page === page);
    } else {
      out = PAGES.filter((p) => p.page === page && p.subpage === subpage);
    }
    return out.length ? out : undefined;
  }

  /** Page bytes for a page control value: 0 current, 1 changeable, 2 default. */
  bytes(def: PageDef, pc: number): Buffer {
    if (pc === 0) return this.current.get(def)!;
    const b = Buffer.from(pc === 1 ? def.changeable : def.defaults);
    if (pc === 1) {
      // the page header (code, SPF, length) is reported as in the current page
      const hdr = def.subpage || def.defaults[0]! & 0x40 ? 4 : 2;
      for (let i = 0; i < hdr; i++) b[i] = def.defaults[i]!;
    }
    return b;
  }

  find(page: number, subpage: number): PageDef | undefined {
    return PAGES.find((p) => p.page === page && p.subpage === subpage);
  }

  /**
   * Validate and apply the pages of a MODE SELECT parameter list (after the
   * header and block descriptors). `base` is the list offset of `pages` for
   * field pointers. Returns true if any value changed. Nothing is applied
   * unless every page is valid.
   */
  applySelect(pages: Buffer, base: number): boolean {
    const updates: Array<{ def: PageDef; data: Buffer }> = [];
    let off = 0;
    while (off < pages.length) {
      const b0 = pages[off]!;
      if (b0 & 0x80) throw ScsiError.param(base + off, 7, 'PS bit set in MODE SELECT page');
      const spf = (b0 & 0x40) !== 0;
      const hdr = spf ? 4 : 2;
      if (off + hdr > pages.length) throw new ScsiError(Sense.parameterListLengthError, {}, 'truncated mode page header');
      const pageCode = b0 & 0x3f;
      const subpage = spf ? pages[off + 1]! : 0;
      const len = spf ? pages.readUInt16BE(off + 2) : pages[off + 1]!;
      const def = this.find(pageCode, subpage);
      if (!def || (spf !== (def.subpage !== 0))) throw ScsiError.param(base + off, undefined, `mode page ${pageCode}/${subpage} is not supported`);
      if (len + hdr !== def.defaults.length) throw ScsiError.param(base + off + 1, undefined, `mode page ${pageCode} length ${len}`);
      if (off + hdr + len > pages.length) throw new ScsiError(Sense.parameterListLengthError, {}, 'truncated mode page');
      const data = pages.subarray(off, off + hdr + len);
      const cur = this.current.get(def)!;
      for (let i = hdr; i < data.length; i++) {
        const fixed = (data[i]! ^ cur[i]!) & ~def.changeable[i]! & 0xff;
        if (fixed) throw ScsiError.param(base + off + i, 31 - Math.clz32(fixed), `mode page ${pageCode} byte ${i} is not changeable`);
      }
      updates.push({ def, data });
      off += hdr + len;
    }
    let changed = false;
    for (const { def, data } of updates) {
      const cur = this.current.get(def)!;
      for (let i = 2; i < data.length; i++) {
        const v = (cur[i]! & ~def.changeable[i]!) | (data[i]! & def.changeable[i]!);
        if (v !== cur[i]) {
          cur[i] = v;
          changed = true;
        }
      }
    }
    return changed;
  }
}

/** Where a MODE SELECT parameter list's pages start, after the header and block descriptors it checks. */
export interface ModeSelectList {
  /** The mode pages. */
  pages: Buffer;
  /** Their offset in the parameter list (for field pointers). */
  base: number;
  /** The block descriptor, if any. */
  descriptor: Buffer | null;
  longLba: boolean;
}

/**
 * The parts of a MODE SELECT(6)/(10) parameter list (`list`: exactly the
 * PARAMETER LIST LENGTH bytes), checked as far as they do not depend on the
 * device. Both the receiving LU and the step that applies the pages
 * (applyLuRequest) read the list through here.
 */
export function modeSelectList(cdb: Buffer, list: Buffer): ModeSelectList {
  const ten = cdb[0] === 0x55;
  const hdrLen = ten ? 8 : 4;
  if (list.length < hdrLen) throw new ScsiError(Sense.parameterListLengthError, {}, 'MODE SELECT header truncated');
  const bdLen = ten ? list.readUInt16BE(6) : list[3]!;
  const longLba = ten && (list[4]! & 0x01) !== 0;
  if (list[ten ? 2 : 1] !== 0) throw ScsiError.param(ten ? 2 : 1, undefined, 'medium type must be 0');
  if (hdrLen + bdLen > list.length) throw new ScsiError(Sense.parameterListLengthError, {}, 'MODE SELECT block descriptors truncated');
  const descSize = longLba ? 16 : 8;
  if (bdLen % descSize !== 0 || bdLen > descSize) throw ScsiError.param(ten ? 6 : 3, undefined, `block descriptor length ${bdLen}`);
  const base = hdrLen + bdLen;
  return { pages: list.subarray(base), base, descriptor: bdLen ? list.subarray(hdrLen, base) : null, longLba };
}
