// Builds the Linux guest used by the end-to-end tests from Debian packages
// only: the distribution kernel (vmlinuz and modules), busybox-static,
// open-iscsi, e2fsprogs (and multipath-tools for the multipath scenarios), with
// the shared libraries they link against. `apt-get download` + `dpkg-deb -x`,
// then an initramfs (newc cpio, gzip) holding busybox, the chosen kernel
// modules in dependency order, the programs and their libraries. The image is
// cached under .cache/e2e-linux/ keyed by the exact package versions, so it is
// built once per machine (about a minute, mostly the kernel package).
//
// The base image has no /init: run-guest.ts appends a small per-run archive
// with /init, the workload and the scenario, so changing a scenario or the
// workload never rebuilds the base.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, writeFileSync, lstatSync } from 'node:fs';
import { join, basename, posix } from 'node:path';
import { gzipSync } from 'node:zlib';
import { runBounded, describeRun } from '../../support/bounded-run.js';
import { repoRoot } from '../../support/process.js';
import { CpioWriter } from './cpio.js';
import { readDynamicInfo, readModInfo, normalizeModuleName } from './elf.js';

/** Bump when the layout of the base image changes, so cached images are rebuilt. */
const BUILDER_VERSION = 3;

export interface GuestContent {
  /** Debian packages whose files are used directly (the kernel package is added automatically). */
  packages: string[];
  /** Programs to install, as paths inside the packages (e.g. /sbin/iscsid); their libraries follow. */
  programs: string[];
  /** Other files or directories to copy as they are (e.g. dlopen()ed plugins, config files). */
  files: string[];
  /** Kernel modules to load at boot, by name; dependencies are added and ordered. */
  modules: string[];
}

/** iSCSI initiator, ext4 tools, and the kernel modules for virtio networking, iSCSI, SCSI disks and ext4. */
export const BASE_CONTENT: GuestContent = {
  packages: ['busybox-static', 'open-iscsi', 'e2fsprogs'],
  programs: ['/sbin/iscsid', '/sbin/iscsiadm', '/sbin/mke2fs', '/sbin/e2fsck'],
  files: ['/etc/mke2fs.conf'],
  modules: [
    'virtio_pci',
    'virtio_net',
    'crc32c_generic',
    'libcrc32c',
    'sd_mod',
    'iscsi_tcp',
    'ext4',
  ],
};

/** BASE_CONTENT plus dm-multipath (multipath, multipathd, dmsetup, their checker/prioritizer plugins, ALUA handler). */
export const MULTIPATH_CONTENT: GuestContent = {
  packages: [...BASE_CONTENT.packages, 'multipath-tools', 'dmsetup', 'kpartx'],
  programs: [...BASE_CONTENT.programs, '/sbin/multipath', '/sbin/multipathd', '/sbin/dmsetup'],
  files: [...BASE_CONTENT.files, '/lib/multipath'],
  modules: [...BASE_CONTENT.modules, 'dm_multipath', 'dm_round_robin', 'dm_service_time', 'scsi_dh_alua'],
};

/**
 * MULTIPATH_CONTENT plus sg3-utils (sg_vpd for VPD 0x83/0xB2, sg_rtpg for
 * REPORT TARGET PORT GROUPS): the guest of the scenarios against the
 * controller-and-agents system (multipath, fstrim, snapshot).
 */
export const CLUSTER_CONTENT: GuestContent = {
  packages: [...MULTIPATH_CONTENT.packages, 'sg3-utils'],
  programs: [...MULTIPATH_CONTENT.programs, '/usr/bin/sg_vpd', '/usr/bin/sg_rtpg', '/usr/bin/sg_inq', '/usr/bin/sg_persist', '/usr/bin/sg_raw'],
  // multipathd's pthread_cancel() dlopen()s libgcc_s (no DT_NEEDED names it).
  files: [...MULTIPATH_CONTENT.files, '/lib/x86_64-linux-gnu/libgcc_s.so.1'],
  modules: MULTIPATH_CONTENT.modules,
};

export interface GuestImage {
  /** The kernel (bzImage). */
  kernel: string;
  /** The base initramfs (gzip cpio) without /init. */
  initrd: string;
  /** uname -r of the guest kernel. */
  kernelRelease: string;
  /** Directory of this image in the cache. */
  dir: string;
  /** Debian packages used, name=version. */
  packages: string[];
  /** Kernel modules the guest loads at boot, in load order. */
  modules: string[];
  /** True when the image came from the cache. */
  cached: boolean;
}

export interface BuildOptions {
  content?: GuestContent;
  /** Cache directory (default <repo>/.cache/e2e-linux, or env TABULA_E2E_CACHE). */
  cacheDir?: string;
  /** Progress messages. */
  progress?: (msg: string) => void;
}

/** Default cache directory: env TABULA_E2E_CACHE or <repo>/.cache/e2e-linux. */
export function defaultCacheDir(): string {
  return process.env.TABULA_E2E_CACHE ?? join(repoRoot(), '.cache', 'e2e-linux');
}

async function run(cmd: string, args: string[], timeoutMs = 600_000): Promise<string> {
  const r = await runBounded(cmd, args, { timeoutMs });
  if (r.exitCode !== 0) throw new Error(`guest image: ${describeRun(r)}`);
  return r.stdout;
}

/** apt-cache needs package lists; a fresh machine may have none yet. */
async function ensureAptLists(progress: (m: string) => void): Promise<void> {
  const r = await runBounded('apt-cache', ['show', '--no-all-versions', 'busybox-static'], { timeoutMs: 60_000 });
  if (r.exitCode === 0 && r.stdout.includes('Version:')) return;
  progress('apt package lists missing: apt-get update');
  await run('apt-get', ['update', '-q'], 300_000);
}

/** The versioned kernel image package that linux-image-amd64 points to (env TABULA_E2E_KERNEL_PACKAGE overrides). */
async function kernelPackage(): Promise<string> {
  const override = process.env.TABULA_E2E_KERNEL_PACKAGE;
  if (override) return override;
  const out = await run('apt-cache', ['depends', '--no-recommends', '--no-suggests', 'linux-image-amd64']);
  const m = /Depends: (linux-image-[0-9][^\s]*-amd64)\s/.exec(out);
  if (!m) throw new Error(`guest image: cannot find the kernel package linux-image-amd64 depends on:\n${out}`);
  return m[1];
}

/**
 * The packages plus every shared-library package (lib*) they depend on,
 * recursively. Other dependencies (udev, debconf, init scripts) are not needed
 * to run the programs in a throwaway guest.
 */
async function libraryClosure(packages: string[]): Promise<string[]> {
  const seen = new Set<string>(packages);
  let frontier = [...packages];
  while (frontier.length > 0) {
    const out = await run('apt-cache', [
      'depends', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks', '--no-replaces', '--no-enhances',
      ...frontier,
    ]);
    const next: string[] = [];
    let alternative = false;
    for (const line of out.split('\n')) {
      const m = /^ ([ |])(?:Pre)?Depends: (\S+)/.exec(line);
      if (!m) continue;
      // After a "|Depends:" line the next one is an alternative to it: keep the first only.
      const isAlternative = alternative;
      alternative = m[1] === '|';
      if (isAlternative) continue;
      const name = m[2].replace(/:.*$/, '');
      if (name.startsWith('<') || !name.startsWith('lib') || seen.has(name)) continue;
      seen.add(name);
      next.push(name);
    }
    frontier = next;
  }
  return [...seen].sort();
}

/** Candidate version of each package, from one apt-cache call. */
async function candidateVersions(packages: string[]): Promise<Map<string, string>> {
  const out = await run('apt-cache', ['show', '--no-all-versions', ...packages]);
  const versions = new Map<string, string>();
  for (const stanza of out.split(/\n\n+/)) {
    const name = /^Package: (\S+)/m.exec(stanza)?.[1];
    const version = /^Version: (\S+)/m.exec(stanza)?.[1];
    if (name && version && !versions.has(name)) versions.set(name, version);
  }
  for (const p of packages) if (!versions.has(p)) throw new Error(`guest image: apt-cache knows no package ${p}`);
  return versions;
}

function debFileName(name: string, version: string): string {
  return `${name}_${version.replace(/:/g, '%3a')}_amd64.deb`;
}

/** Download the .deb files not yet in debDir (one apt-get call). */
async function downloadDebs(debDir: string, versions: Map<string, string>, progress: (m: string) => void): Promise<void> {
  const missing = [...versions].filter(([n, v]) => !existsSync(join(debDir, debFileName(n, v))));
  if (missing.length === 0) return;
  progress(`apt-get download ${missing.length} packages: ${missing.map(([n]) => n).join(' ')}`);
  const tmp = join(debDir, `.download-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    // Run in tmp (apt-get download writes to the current directory): through sh, since runBounded has no cwd.
    const specs = missing.map(([n, v]) => `'${n}=${v}'`).join(' ');
    await run('sh', ['-c', `cd '${tmp}' && exec apt-get download -q -o APT::Sandbox::User=root ${specs}`], 900_000);
    for (const f of readdirSync(tmp)) {
      const name = f.slice(0, f.indexOf('_'));
      const version = versions.get(name);
      if (version === undefined) continue;
      renameSync(join(tmp, f), join(debDir, debFileName(name, version)));
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  for (const [n, v] of missing) {
    if (!existsSync(join(debDir, debFileName(n, v)))) throw new Error(`guest image: apt-get download did not produce ${n} ${v}`);
  }
}

const LIB_DIRS = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64', 'usr/lib64', 'lib', 'usr/lib'];

/** Follow symlinks inside an unpacked tree (absolute targets are relative to root). Returns a path relative to root. */
function resolveInRoot(root: string, rel: string): string {
  let cur = rel.replace(/^\/+/, '');
  for (let hops = 0; hops < 40; hops++) {
    const full = join(root, cur);
    let st;
    try {
      st = lstatSync(full);
    } catch {
      throw new Error(`guest image: ${cur} is not in the unpacked packages`);
    }
    if (!st.isSymbolicLink()) return cur;
    const target = readlinkSync(full);
    cur = target.startsWith('/') ? target.slice(1) : posix.normalize(posix.join(posix.dirname(cur), target));
  }
  throw new Error(`guest image: too many symlinks resolving ${rel}`);
}

function findLibrary(root: string, soname: string): string | null {
  for (const d of LIB_DIRS) {
    const rel = `${d}/${soname}`;
    if (existsSync(join(root, rel))) return resolveInRoot(root, rel);
  }
  return null;
}

interface ModuleEntry {
  name: string;
  /** Path relative to lib/modules/<release>/ */
  relPath: string;
}

function indexModules(modRoot: string): Map<string, ModuleEntry> {
  const index = new Map<string, ModuleEntry>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(join(modRoot, dir), { withFileTypes: true })) {
      const rel = dir === '' ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ko')) {
        const name = normalizeModuleName(e.name.slice(0, -3));
        index.set(name, { name, relPath: rel });
      }
    }
  };
  walk('kernel');
  return index;
}

interface ResolvedModules {
  order: ModuleEntry[];
  deps: Map<string, string[]>;
  aliases: Array<[string, string]>;
}

/** Wanted modules plus dependencies (depends= and softdep pre:), dependencies first. */
function resolveModules(modRoot: string, wanted: string[], builtin: Set<string>): ResolvedModules {
  const index = indexModules(modRoot);
  const infos = new Map<string, ReturnType<typeof readModInfo>>();
  const info = (m: ModuleEntry): ReturnType<typeof readModInfo> => {
    let i = infos.get(m.name);
    if (!i) {
      i = readModInfo(readFileSync(join(modRoot, m.relPath)), m.relPath);
      infos.set(m.name, i);
    }
    return i;
  };
  // Soft dependencies may name an alias (ext4 wants "crc32c"). In practice they
  // name crypto algorithms, so only crypto and crc modules are scanned (reading
  // every module's .modinfo would take seconds); portable *_generic versions win
  // over CPU-specific ones.
  let aliasIndex: Map<string, string> | null = null;
  const byAlias = (alias: string): ModuleEntry | undefined => {
    if (!aliasIndex) {
      aliasIndex = new Map();
      for (const m of index.values()) {
        if (!/crypto|crc/.test(m.relPath)) continue;
        for (const a of info(m).aliases) {
          const prev = aliasIndex.get(a);
          if (prev === undefined || (!prev.endsWith('_generic') && m.name.endsWith('_generic'))) aliasIndex.set(a, m.name);
        }
      }
    }
    const n = aliasIndex.get(alias);
    return n === undefined ? undefined : index.get(n);
  };
  const order: ModuleEntry[] = [];
  const deps = new Map<string, string[]>();
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, soft: boolean, from: string): void => {
    const n = normalizeModuleName(name);
    if (builtin.has(n)) return;
    const m = index.get(n) ?? byAlias(name);
    if (!m) {
      if (soft) return;
      throw new Error(`guest image: kernel module ${name} (wanted by ${from}) is neither in the package nor built in`);
    }
    const st = state.get(m.name);
    if (st === 'done' || st === 'visiting') return;
    state.set(m.name, 'visiting');
    const i = info(m);
    for (const d of i.softPre) visit(d, true, m.name);
    for (const d of i.depends) visit(d, false, m.name);
    deps.set(m.name, i.depends.map(normalizeModuleName).filter((d) => index.has(d)));
    state.set(m.name, 'done');
    order.push(m);
  };
  for (const w of wanted) visit(w, false, 'the guest');
  const aliases: Array<[string, string]> = [];
  for (const m of order) for (const a of info(m).aliases) aliases.push([a, m.name]);
  return { order, deps, aliases };
}

/** Identifies the state of apt's package lists: resolution is redone only when they change. */
function aptListsStamp(): string {
  const dir = '/var/lib/apt/lists';
  const h = createHash('sha256');
  try {
    for (const f of readdirSync(dir).sort()) {
      if (!f.endsWith('_Packages') && !f.includes('_Packages.')) continue;
      const st = statSync(join(dir, f));
      h.update(`${f} ${st.size} ${st.mtimeMs}\n`);
    }
  } catch {
    return '';
  }
  return h.digest('hex');
}

interface Resolution {
  stamp: string;
  kpkg: string;
  versions: Array<[string, string]>;
}

/**
 * Kernel package, library closure and candidate versions. apt-cache takes
 * seconds per call, so the answer is kept in the cache until apt's lists change.
 */
async function resolvePackages(
  content: GuestContent,
  cacheDir: string,
  progress: (m: string) => void,
): Promise<{ kpkg: string; versions: Map<string, string> }> {
  const file = join(cacheDir, `resolution-${createHash('sha256').update(JSON.stringify([BUILDER_VERSION, content, process.env.TABULA_E2E_KERNEL_PACKAGE ?? ''])).digest('hex').slice(0, 16)}.json`);
  const stamp = aptListsStamp();
  if (stamp !== '' && existsSync(file)) {
    const r = JSON.parse(readFileSync(file, 'utf8')) as Resolution;
    if (r.stamp === stamp) return { kpkg: r.kpkg, versions: new Map(r.versions) };
  }
  await ensureAptLists(progress);
  const kpkg = await kernelPackage();
  const packages = await libraryClosure([...content.packages, kpkg]);
  const versions = await candidateVersions(packages);
  const after = aptListsStamp();
  if (after !== '') {
    mkdirSync(cacheDir, { recursive: true });
    const r: Resolution = { stamp: after, kpkg, versions: [...versions] };
    writeFileSync(file, JSON.stringify(r) + '\n');
  }
  return { kpkg, versions };
}

function imageKey(kernelPkg: string, versions: Map<string, string>, content: GuestContent): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ v: BUILDER_VERSION, kernelPkg, versions: [...versions].sort(), content }));
  return h.digest('hex').slice(0, 16);
}

/**
 * Build (or find in the cache) the guest kernel and base initramfs. Needs
 * apt-get, apt-cache and dpkg-deb (Debian hosts) and write access to the
 * cache directory.
 */
export async function buildGuestImage(opts: BuildOptions = {}): Promise<GuestImage> {
  const content = opts.content ?? BASE_CONTENT;
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const progress = opts.progress ?? ((): void => undefined);
  const { kpkg, versions } = await resolvePackages(content, cacheDir, progress);
  const key = imageKey(kpkg, versions, content);
  const dir = join(cacheDir, 'images', key);
  const manifestFile = join(dir, 'manifest.json');
  if (existsSync(manifestFile)) {
    const m = JSON.parse(readFileSync(manifestFile, 'utf8')) as Omit<GuestImage, 'cached' | 'dir' | 'kernel' | 'initrd'>;
    return { ...m, dir, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd-base.img'), cached: true };
  }

  const debDir = join(cacheDir, 'debs');
  mkdirSync(debDir, { recursive: true });
  await downloadDebs(debDir, versions, progress);

  const work = join(cacheDir, `.build-${key}-${process.pid}`);
  const root = join(work, 'root');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  try {
    progress(`unpacking ${versions.size} packages`);
    for (const [n, v] of versions) await run('dpkg-deb', ['-x', join(debDir, debFileName(n, v)), root], 300_000);

    const releases = readdirSync(join(root, 'lib', 'modules'));
    if (releases.length !== 1) throw new Error(`guest image: expected one kernel in ${kpkg}, found ${releases.join(', ')}`);
    const release = releases[0];
    const modRoot = join(root, 'lib', 'modules', release);
    const builtin = new Set(
      readFileSync(join(modRoot, 'modules.builtin'), 'utf8')
        .split('\n')
        .filter((l) => l.endsWith('.ko'))
        .map((l) => normalizeModuleName(basename(l, '.ko'))),
    );
    const mods = resolveModules(modRoot, content.modules, builtin);

    const cpio = new CpioWriter();
    for (const d of ['proc', 'sys', 'dev', 'tmp', 'run', 'mnt', 'root', 'bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc/iscsi', 'var/lock']) cpio.dir(d);
    cpio.file('bin/busybox', readFileSync(join(root, 'bin', 'busybox')), 0o755);
    if (readDynamicInfo(readFileSync(join(root, 'bin', 'busybox')), 'busybox').interpreter !== null) {
      throw new Error('guest image: bin/busybox from busybox-static is not a static binary');
    }

    // Programs with their libraries; libraries go flat into lib/x86_64-linux-gnu (on the loader's default path).
    const libsDone = new Set<string>();
    const addLibs = (needed: string[], who: string): void => {
      for (const soname of needed) {
        if (libsDone.has(soname)) continue;
        libsDone.add(soname);
        const rel = findLibrary(root, soname);
        if (!rel) throw new Error(`guest image: ${who} needs ${soname}, which no unpacked package provides (add its package to the guest content)`);
        const data = readFileSync(join(root, rel));
        cpio.file(`lib/x86_64-linux-gnu/${soname}`, data, 0o755);
        addLibs(readDynamicInfo(data, rel).needed, soname);
      }
    };
    for (const prog of content.programs) {
      const rel = resolveInRoot(root, prog);
      const data = readFileSync(join(root, rel));
      const dyn = readDynamicInfo(data, prog);
      cpio.file(prog, data, 0o755);
      if (dyn.interpreter !== null && !cpio.has(dyn.interpreter)) {
        cpio.file(dyn.interpreter, readFileSync(join(root, resolveInRoot(root, dyn.interpreter))), 0o755);
      }
      addLibs(dyn.needed, prog);
    }
    const addTree = (rel: string): void => {
      const full = join(root, rel);
      const st = statSync(full);
      if (st.isDirectory()) {
        for (const e of readdirSync(full)) addTree(`${rel}/${e}`);
      } else {
        // A library listed here may already be in as some program's DT_NEEDED.
        if (cpio.has(rel)) return;
        if (rel.startsWith('lib/x86_64-linux-gnu/')) libsDone.add(basename(rel));
        const data = readFileSync(join(root, resolveInRoot(root, rel)));
        cpio.file(rel, data, st.mode & 0o777);
        if (data.length > 4 && data.readUInt32LE(0) === 0x464c457f) addLibs(readDynamicInfo(data, rel).needed, rel);
      }
    };
    for (const f of content.files) addTree(f.replace(/^\/+/, ''));

    // Modules, modules.dep/modules.alias (so the kernel's request_module finds them through busybox modprobe), load order.
    const modBase = `lib/modules/${release}`;
    for (const m of mods.order) cpio.file(`${modBase}/${m.relPath}`, readFileSync(join(modRoot, m.relPath)));
    const pathOf = new Map(mods.order.map((m) => [m.name, m.relPath]));
    const depLines = mods.order.map((m) => {
      const all: string[] = [];
      const collect = (n: string): void => {
        for (const d of mods.deps.get(n) ?? []) {
          const p = pathOf.get(d);
          if (p && !all.includes(p)) {
            all.push(p);
            collect(d);
          }
        }
      };
      collect(m.name);
      return `${m.relPath}: ${all.join(' ')}`.trimEnd();
    });
    cpio.file(`${modBase}/modules.dep`, Buffer.from(depLines.join('\n') + '\n'));
    cpio.file(`${modBase}/modules.alias`, Buffer.from(mods.aliases.map(([a, n]) => `alias ${a} ${n}`).join('\n') + '\n'));
    cpio.file('etc/tabula/modules', Buffer.from(mods.order.map((m) => `/${modBase}/${m.relPath}`).join('\n') + '\n'));

    mkdirSync(dir, { recursive: true });
    const initrdTmp = join(dir, `initrd-base.img.${process.pid}`);
    writeFileSync(initrdTmp, gzipSync(cpio.finish(), { level: 6 }));
    renameSync(initrdTmp, join(dir, 'initrd-base.img'));
    writeFileSync(join(dir, 'vmlinuz'), readFileSync(join(root, 'boot', `vmlinuz-${release}`)));
    const manifest = {
      kernelRelease: release,
      packages: [...versions].map(([n, v]) => `${n}=${v}`),
      modules: mods.order.map((m) => m.name),
    };
    // The manifest is written last: its presence marks a complete image.
    writeFileSync(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
    progress(`guest image ${key}: kernel ${release}, ${manifest.modules.length} modules, ${manifest.packages.length} packages`);
    return { ...manifest, dir, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd-base.img'), cached: false };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Install qemu-system-x86 through apt when qemu-system-x86_64 is missing (CI machines start without it). */
export async function ensureQemu(progress: (m: string) => void = () => undefined): Promise<string> {
  const have = await runBounded('sh', ['-c', 'command -v qemu-system-x86_64'], { timeoutMs: 10_000 });
  if (have.exitCode === 0) return have.stdout.trim();
  if (process.getuid?.() !== 0) throw new Error('qemu-system-x86_64 is missing and we are not root: apt-get install qemu-system-x86');
  progress('installing qemu-system-x86 (apt-get)');
  await ensureAptLists(progress);
  const r = await runBounded('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'qemu-system-x86'], {
    timeoutMs: 900_000,
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  if (r.exitCode !== 0) throw new Error(`cannot install qemu-system-x86: ${describeRun(r)}`);
  return (await run('sh', ['-c', 'command -v qemu-system-x86_64'])).trim();
}
