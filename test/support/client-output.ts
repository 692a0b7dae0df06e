// Parsers for the text printed by libiscsi's utilities (libiscsi-bin 1.19):
// iscsi-ls, iscsi-inq and iscsi-readcapacity16. Pure functions of text.

export interface LsTarget {
  name: string;
  /** HOST:PORT */
  portal: string;
  tpgt: number;
}

export interface LsLun {
  lun: number;
  type: string;
  /** As printed, e.g. "1023M"; undefined when not shown. */
  size: string | undefined;
}

/** `iscsi-ls -s iscsi://HOST:PORT`: "Target:IQN Portal:HOST:PORT,TPGT" then "Lun:N Type:T (Size:S)" lines. */
export function parseIscsiLs(text: string): { targets: LsTarget[]; luns: LsLun[] } {
  const targets: LsTarget[] = [];
  const luns: LsLun[] = [];
  for (const line of text.split('\n')) {
    const t = /^Target:(\S+)\s+Portal:(\S+),(\d+)\s*$/.exec(line.trim());
    if (t) {
      targets.push({ name: t[1] as string, portal: t[2] as string, tpgt: Number(t[3]) });
      continue;
    }
    const l = /^Lun:(\d+)\s+Type:(\S+)(?:\s+\(Size:([^)]*)\))?/.exec(line.trim());
    if (l) luns.push({ lun: Number(l[1]), type: l[2] as string, size: l[3] });
  }
  return { targets, luns };
}

/**
 * "Key:Value" lines (iscsi-inq standard data, VPD 0xb0/0xb2) as a map; keys
 * are trimmed and lower-cased, a repeated key keeps every value in order.
 */
export function parseKeyValues(text: string): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const k = line.slice(0, i).trim().toLowerCase();
    const v = line.slice(i + 1).trim();
    m.set(k, [...(m.get(k) ?? []), v]);
  }
  return m;
}

/** The first value of a key, or an error naming the key and the text. */
export function field(m: Map<string, string[]>, key: string): string {
  const v = m.get(key.toLowerCase())?.[0];
  if (v === undefined) throw new Error(`no "${key}" in output (have: ${[...m.keys()].join(', ')})`);
  return v;
}

/** A numeric field; the value may be followed by text ("5 ANSI INCITS ..."). */
export function numField(m: Map<string, string[]>, key: string): number {
  const v = field(m, key);
  const n = /^(0x[0-9a-f]+|\d+)/i.exec(v);
  if (!n) throw new Error(`"${key}" is not a number: ${v}`);
  return Number(n[1]);
}

/** VPD page 0x00: "Page:0x83 DEVICE_IDENTIFICATION" lines -> page codes in printed order. */
export function parseSupportedVpd(text: string): number[] {
  const pages: number[] = [];
  for (const line of text.split('\n')) {
    const m = /^Page:(0x[0-9a-f]+)\b/i.exec(line.trim());
    if (m) pages.push(Number(m[1]));
  }
  return pages;
}

/** VPD page 0x80: "Unit Serial Number:[...]" -> the serial, surrounding spaces trimmed. */
export function parseSerial(text: string): string {
  const m = /Unit Serial Number:\[([^\]]*)\]/.exec(text);
  if (!m) throw new Error(`no unit serial number in: ${text.trim()}`);
  return (m[1] as string).trim();
}

export interface Designator {
  codeSet: number;
  association: number;
  associationName: string;
  type: number;
  typeName: string;
  piv: number;
}

/** VPD page 0x83: one record per "DEVICE DESIGNATOR #n" block. */
export function parseDesignators(text: string): Designator[] {
  const out: Designator[] = [];
  let cur: Partial<Designator> | undefined;
  const push = (): void => {
    if (cur?.type !== undefined && cur.association !== undefined) out.push(cur as Designator);
  };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (/^DEVICE DESIGNATOR #\d+/.test(line)) {
      push();
      cur = {};
      continue;
    }
    if (cur === undefined) continue;
    let m: RegExpExecArray | null;
    if ((m = /^Code Set:\((\d+)\)/.exec(line))) cur.codeSet = Number(m[1]);
    else if ((m = /^PIV:(\d+)/.exec(line))) cur.piv = Number(m[1]);
    else if ((m = /^Association:\((\d+)\)\s*(\S*)/.exec(line))) {
      cur.association = Number(m[1]);
      cur.associationName = m[2] as string;
    } else if ((m = /^Designator Type:\((\d+)\)\s*(\S*)/.exec(line))) {
      cur.type = Number(m[1]);
      cur.typeName = m[2] as string;
    }
  }
  push();
  return out;
}

export interface Capacity16 {
  lastLba: number;
  blockLength: number;
  lbpme: number;
  lbprz: number;
  /** logical blocks per physical block exponent */
  lbppbe: number;
  totalBytes: number;
}

/** `iscsi-readcapacity16 URL`. */
export function parseReadCapacity16(text: string): Capacity16 {
  const num = (re: RegExp, what: string): number => {
    const m = re.exec(text);
    if (!m) throw new Error(`no ${what} in iscsi-readcapacity16 output: ${text.trim()}`);
    return Number(m[1]);
  };
  return {
    lastLba: num(/RETURNED LOGICAL BLOCK ADDRESS:\s*(\d+)/, 'last LBA'),
    blockLength: num(/LOGICAL BLOCK LENGTH IN BYTES:\s*(\d+)/, 'block length'),
    lbpme: num(/\bLBPME:\s*(\d+)/, 'LBPME'),
    lbprz: num(/\bLBPRZ:\s*(\d+)/, 'LBPRZ'),
    lbppbe: num(/LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT:\s*(\d+)/, 'LBPPBE'),
    totalBytes: num(/Total size:\s*(\d+)/, 'total size'),
  };
}
