// Summarise a V8 .cpuprofile (from `node --cpu-prof`): self time per function
// and per script, so a profile can be read in a terminal without DevTools.
// Usage: node dist/bench/cpuprofile-top.js FILE.cpuprofile [N]
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileSummary {
  totalMs: number;
  functions: { name: string; selfMs: number; totalMs: number }[];
}

function label(f: CallFrame): string {
  const file = f.url.replace(/^.*\/(node_modules\/[^/]+|src|dist)\//, '$1/');
  return `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`;
}

export function summarise(profile: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let all = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = (profile.timeDeltas[i] ?? 0) / 1000;
    all += dt;
    let id: number | undefined = profile.samples[i]!;
    const node = byId.get(id)!;
    const own = label(node.callFrame);
    self.set(own, (self.get(own) ?? 0) + dt);
    // inclusive time: count each distinct frame on the stack once
    const seen = new Set<string>();
    while (id !== undefined) {
      const l = label(byId.get(id)!.callFrame);
      if (!seen.has(l)) {
        seen.add(l);
        total.set(l, (total.get(l) ?? 0) + dt);
      }
      id = parent.get(id);
    }
  }
  const functions = [...self.keys(), ...[...total.keys()].filter((k) => !self.has(k))].map((name) => ({
    name,
    selfMs: self.get(name) ?? 0,
    totalMs: total.get(name) ?? 0,
  }));
  return { totalMs: all, functions };
}

function main(): void {
  const [file, nArg] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: cpuprofile-top FILE.cpuprofile [N]\n');
    process.exit(2);
  }
  const n = Number(nArg ?? 40);
  const s = summarise(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile);
  const pct = (ms: number): string => ((100 * ms) / s.totalMs).toFixed(1).padStart(5) + '%';
  const out: string[] = [`total ${s.totalMs.toFixed(0)} ms sampled`, '', 'self time:'];
  for (const f of [...s.functions].sort((a, b) => b.selfMs - a.selfMs).slice(0, n)) out.push(`${pct(f.selfMs)} ${f.name}`);
  out.push('', 'inclusive time:');
  for (const f of [...s.functions].sort((a, b) => b.totalMs - a.totalMs).slice(0, n)) out.push(`${pct(f.totalMs)} ${f.name}`);
  process.stdout.write(out.join('\n') + '\n');
}

if (import.meta.url === `file://${process.argv[1]}`) main();
