// iSCSI container locators (design-notes §6):
//
//   iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN   one LUN
//   iscsi://[USER%SECRET@]HOST[:PORT]/IQN       every LUN of that target
//   iscsi://[USER%SECRET@]HOST[:PORT]           every LUN of every target behind the portal
//
// The `%` between user and secret is libiscsi's spelling (qemu and the
// libiscsi tools take the same URLs). The user name runs to the first `%`
// and is taken literally; the secret is percent-decoded, so a secret with
// `%`, `@` or `/` in it is written `%25`, `%40`, `%2F`. IPv6 hosts go in
// brackets; the port defaults to 3260. Pure parsing and formatting: no I/O.

export const ISCSI_SCHEME = 'iscsi://';
export const DEFAULT_ISCSI_PORT = 3260;
/** LUNs the flat and peripheral addressing methods can name (what `tabula target` and tgtd use). */
export const MAX_LUN = 16383;

export interface IscsiChap {
  user: string;
  secret: string;
}

export interface IscsiLocator {
  /** Host name or address, IPv6 without brackets. */
  host: string;
  port: number;
  /** Target name; absent for the portal form. */
  target?: string;
  /** Absent for the portal and target forms. */
  lun?: number;
  /** CHAP credentials the initiator answers the target with. */
  chap?: IscsiChap;
}

/** 'lun': one LUN; 'target': every LUN of one target; 'portal': every LUN of every target. */
export type IscsiLocatorForm = 'lun' | 'target' | 'portal';

export class LocatorError extends Error {
  constructor(
    /** The locator as given, redacted. */
    readonly locator: string,
    message: string,
  ) {
    super(`${locator}: ${message}`);
    this.name = 'LocatorError';
  }
}

/** True for anything meant as an iSCSI locator (scheme compared without case), well-formed or not. */
export function isIscsiLocator(s: string): boolean {
  return s.slice(0, ISCSI_SCHEME.length).toLowerCase() === ISCSI_SCHEME;
}

export function locatorForm(l: IscsiLocator): IscsiLocatorForm {
  if (l.target === undefined) return 'portal';
  return l.lun === undefined ? 'target' : 'lun';
}

const IQN = /^(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}(?:[0-9a-f]{16})?)$/i;
const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9_])?$/;

/** Throws LocatorError naming what is wrong, with the secret redacted in the message. */
export function parseIscsiLocator(input: string): IscsiLocator {
  const shown = redactLocator(input);
  const fail = (why: string): never => {
    throw new LocatorError(shown, why);
  };
  if (!isIscsiLocator(input)) fail(`not an iSCSI locator (expected ${ISCSI_SCHEME}HOST[:PORT][/IQN[/LUN]])`);
  const rest = input.slice(ISCSI_SCHEME.length);
  if (/[?#]/.test(rest)) fail('a query (?) or fragment (#) has no meaning here; write ? and # in a secret as %3F and %23');
  if (/\s/.test(rest)) fail('contains white space');
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1);

  // The secret may hold an encoded '@' only, so the last '@' ends the user info.
  const at = authority.lastIndexOf('@');
  let chap: IscsiChap | undefined;
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    const pct = userinfo.indexOf('%');
    if (pct < 0) {
      fail(
        userinfo === ''
          ? "empty user before '@' (USER%SECRET@HOST)"
          : `CHAP user '${userinfo}' without a secret (write USER%SECRET@HOST; a redacted locator cannot log in)`,
      );
    }
    const user = userinfo.slice(0, pct);
    if (user === '') fail("empty CHAP user before '%' (USER%SECRET@HOST)");
    const secret = decode(userinfo.slice(pct + 1), 'the secret', fail);
    if (secret === '') fail(`empty CHAP secret for user '${user}'`);
    chap = { user, secret };
  }
  const { host, port } = parsePortal(authority.slice(at + 1), fail);

  const parts = path === '' ? [] : path.split('/');
  // One trailing slash is tolerated (iscsi://host/ and iscsi://host/iqn/).
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  if (parts.length > 2) fail(`too many path parts: expected /IQN/LUN, got /${parts.join('/')}`);
  const out: IscsiLocator = { host, port };
  if (parts.length >= 1) {
    const target = decode(parts[0]!, 'the target name', fail);
    if (target === '') fail('empty target name between slashes');
    if (!IQN.test(target)) fail(`'${target}' is not an iSCSI target name (iqn.YYYY-MM.domain[:id], eui.<16 hex>, naa.<16 or 32 hex>)`);
    out.target = target;
  }
  if (parts.length === 2) {
    const lun = parts[1]!;
    if (!/^\d+$/.test(lun)) fail(lun === '' ? 'empty LUN after the target name' : `LUN '${lun}' is not a number`);
    const n = Number(lun);
    if (n > MAX_LUN) fail(`LUN ${lun} is out of range 0..${MAX_LUN}`);
    out.lun = n;
  }
  if (chap !== undefined) out.chap = chap;
  return out;
}

function parsePortal(hostport: string, fail: (why: string) => never): { host: string; port: number } {
  if (hostport === '') fail('no host (iscsi://HOST[:PORT]...)');
  let host: string;
  let portText: string | undefined;
  if (hostport.startsWith('[')) {
    const close = hostport.indexOf(']');
    if (close < 0) fail(`unclosed '[' in host '${hostport}'`);
    host = decode(hostport.slice(1, close), 'the IPv6 address', fail);
    if (!/^[0-9A-Fa-f:.]+(%[^\]]+)?$/.test(host) || !host.includes(':')) fail(`'${host}' in brackets is not an IPv6 address`);
    const after = hostport.slice(close + 1);
    if (after !== '') {
      if (!after.startsWith(':')) fail(`unexpected '${after}' after ']' (expected :PORT)`);
      portText = after.slice(1);
    }
  } else {
    const colon = hostport.indexOf(':');
    if (colon >= 0 && hostport.indexOf(':', colon + 1) >= 0) fail(`IPv6 address '${hostport}' must be in brackets: [ADDRESS]:PORT`);
    host = colon < 0 ? hostport : hostport.slice(0, colon);
    portText = colon < 0 ? undefined : hostport.slice(colon + 1);
    if (host === '') fail('no host before the port');
    if (!HOST_NAME.test(host)) fail(`'${host}' is not a host name or IPv4 address`);
  }
  if (portText === undefined) return { host, port: DEFAULT_ISCSI_PORT };
  if (!/^\d{1,5}$/.test(portText)) fail(portText === '' ? "empty port after ':'" : `port '${portText}' is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) fail(`port ${port} is out of range 1..65535`);
  return { host, port };
}

function decode(s: string, what: string, fail: (why: string) => never): string {
  const bad = /%(?![0-9A-Fa-f]{2})/.exec(s);
  if (bad) fail(`stray '%' in ${what} (write a literal % as %25)`);
  try {
    return decodeURIComponent(s);
  } catch {
    return fail(`${what} is not valid percent-encoded UTF-8`);
  }
}

/** Characters a secret or target name must have escaped to survive parsing. */
function encode(s: string): string {
  return s.replace(/[%@/?#\s\[\]]|[^\x21-\x7e]/gu, (c) => encodeURIComponent(c));
}

export interface FormatOptions {
  /** Leave the secret out (the user stays): for logs, `container ls`, the controller's path column. */
  redact?: boolean;
}

/** The canonical text of a locator (port always written); parseIscsiLocator reads it back unless redacted. */
export function formatIscsiLocator(l: IscsiLocator, opts: FormatOptions = {}): string {
  let auth = '';
  if (l.chap !== undefined) {
    if (/[%@/:\s]/.test(l.chap.user) || l.chap.user === '') throw new Error(`CHAP user '${l.chap.user}' cannot be written in an iSCSI locator`);
    auth = opts.redact ? `${l.chap.user}@` : `${l.chap.user}%${encode(l.chap.secret)}@`;
  }
  const host = l.host.includes(':') ? `[${l.host.replace(/%/g, '%25')}]` : l.host;
  let s = `${ISCSI_SCHEME}${auth}${host}:${l.port}`;
  if (l.target !== undefined) {
    s += `/${encode(l.target)}`;
    if (l.lun !== undefined) s += `/${l.lun}`;
  } else if (l.lun !== undefined) {
    throw new Error('a LUN without a target name cannot be written in an iSCSI locator');
  }
  return s;
}

/**
 * The locator with its secret taken out, for anything shown or stored.
 * Not an iSCSI locator: returned as it is (a path). A malformed one still
 * loses everything between the scheme and the last '@' of its host part.
 */
export function redactLocator(s: string): string {
  if (!isIscsiLocator(s)) return s;
  const rest = s.slice(ISCSI_SCHEME.length);
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  const at = authority.lastIndexOf('@');
  if (at < 0) return s;
  const userinfo = authority.slice(0, at);
  const pct = userinfo.indexOf('%');
  const user = pct < 0 ? userinfo : userinfo.slice(0, pct);
  return `${s.slice(0, ISCSI_SCHEME.length)}${user}@${rest.slice(at + 1)}`;
}

/** The LUN-form locator of one LUN behind a portal or target locator (credentials kept). */
export function lunLocator(base: IscsiLocator, target: string, lun: number): IscsiLocator {
  const out: IscsiLocator = { host: base.host, port: base.port, target, lun };
  if (base.chap !== undefined) out.chap = { ...base.chap };
  return out;
}
