// An independent reader of the Prometheus text exposition format (0.0.4),
// strict enough to fail on any line a scraper would reject: the tests parse
// what the endpoints serve with this, not with prom-client.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** Metric family name -> type. */
  types: Map<string, string>;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL_NAME = '[a-zA-Z_][a-zA-Z0-9_]*';
const HELP_RE = new RegExp(`^# HELP (${NAME}) (.*)$`);
const TYPE_RE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`);
const LABEL_RE = new RegExp(`^(${LABEL_NAME})="((?:[^"\\\\\\n]|\\\\[\\\\"n])*)"`);

/** Values are what Go's strconv.ParseFloat accepts, as Prometheus reads them: NaN and Inf in any case. */
function parseValue(text: string, line: string): number {
  if (/^nan$/i.test(text)) return NaN;
  const inf = /^([-+]?)inf(inity)?$/i.exec(text);
  if (inf) return inf[1] === '-' ? -Infinity : Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad sample value in: ${line}`);
  return Number(text);
}

function parseLabels(text: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  let rest = text;
  while (rest.length > 0) {
    const m = LABEL_RE.exec(rest);
    if (!m) throw new Error(`bad labels in: ${line}`);
    const name = m[1] as string;
    if (name in out) throw new Error(`label ${name} twice in: ${line}`);
    out[name] = (m[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    rest = rest.slice(m[0].length);
    if (rest.startsWith(',')) rest = rest.slice(1);
    else if (rest.length > 0) throw new Error(`bad label separator in: ${line}`);
  }
  return out;
}

/** The family a sample belongs to: histogram samples carry _bucket, _sum, _count. */
function familyOf(name: string, types: Map<string, string>): string | undefined {
  if (types.has(name)) return name;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m && (types.get(m[1] as string) === 'histogram' || types.get(m[1] as string) === 'summary')) return m[1];
  return undefined;
}

export function parseExposition(text: string): Exposition {
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const lines = text.slice(0, -1).split('\n');
  for (const line of lines) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const t = TYPE_RE.exec(line);
      if (t) {
        if (types.has(t[1] as string)) throw new Error(`second TYPE for ${t[1]}`);
        types.set(t[1] as string, t[2] as string);
        continue;
      }
      if (HELP_RE.test(line)) continue;
      throw new Error(`bad comment line: ${line}`);
    }
    const m = SAMPLE_RE.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const name = m[1] as string;
    if (familyOf(name, types) === undefined) throw new Error(`sample ${name} before (or without) its TYPE`);
    samples.push({ name, labels: m[2] === undefined ? {} : parseLabels(m[2], line), value: parseValue(m[3] as string, line) });
  }
  return { samples, types };
}

/** The value of the one sample of `name` whose labels include `labels`; undefined when none, throws when several. */
export function valueOf(e: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hits.length > 1) throw new Error(`${hits.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return hits[0]?.value;
}
