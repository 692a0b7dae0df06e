// USER:SECRET pairs for CHAP options. CHAP secrets of 12-16+ characters are what
// initiators such as Windows require; we only insist on non-empty parts.
import type { TargetAuth } from '../iscsi/login/environment.js';

export function parseCredentials(value: string, option: string): TargetAuth {
  const i = value.indexOf(':');
  if (i <= 0 || i === value.length - 1) throw new Error(`${option} expects USER:SECRET`);
  return { user: value.slice(0, i), secret: value.slice(i + 1) };
}
