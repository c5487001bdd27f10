/**
 * The tiny guest image: Debian's cloud kernel plus an initramfs that Ferry writes itself (newc cpio +
 * gzip) holding /init, busybox, ferry-guest and the virtio modules. Owns building it reproducibly (same
 * inputs → same bytes), reusing a build whose inputs did not change, and resolving an image name to the
 * kernel and initrd paths QEMU boots.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { FerryError } from '../common/errors.ts';
import { PACKAGE_ROOT, guestToolPath, imagesDir, kernelPackageDir } from '../common/paths.ts';
import { writeCpio, type CpioEntry } from './cpio.ts';

const run = promisify(execFile);

/** Version of the image layout (what goes where in the initramfs, the manifest's shape). */
export const IMAGE_FORMAT_VERSION = 1;

/** Insertion order matters: without modules.dep, /init loads them in this order. */
export const VIRTIO_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_blk',
  'virtio_console',
] as const;

/** Busybox applets linked in /bin: what /init needs, and a few for a human on the console. */
const APPLETS = [
  'cat', 'dd', 'dmesg', 'echo', 'free', 'halt', 'hexdump', 'hostname', 'ifconfig', 'insmod', 'ip', 'kill',
  'ln', 'ls', 'lsmod', 'md5sum', 'mkdir', 'mknod', 'mount', 'ping', 'poweroff', 'ps', 'reboot', 'rm',
  'sh', 'sleep', 'sync', 'top', 'umount', 'uname',
] as const;

export interface ImageFile {
  name: string;
  sha256: string;
  size: number;
}

export interface ImageManifest {
  name: 'tiny';
  version: number;
  kernelVersion: string;
  dir: string;
  files: ImageFile[];
  /** Hash over every input (kernel, each initramfs entry, layout version): equal → the build is reused. */
  inputsSha256: string;
}

export interface BuildOptions {
  /** Default: `imagesDir()/tiny`. */
  outDir?: string;
  /** The unpacked kernel package; default kernelPackageDir(). */
  kernelDir?: string;
  /** A static busybox; default /bin/busybox (Debian's busybox-static). */
  busybox?: string;
  /** The static ferry-guest; default guestToolPath() (built with cc when missing). */
  guestTool?: string;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Writes a file under a temporary name, then renames it: readers (and concurrent builders) see whole files. */
async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Numeric-aware comparison, so that 6.1.0-10 sorts after 6.1.0-9. */
const versionCompare = (a: string, b: string): number => a.localeCompare(b, 'en', { numeric: true });

async function findKernel(kernelDir: string): Promise<{ vmlinuz: string; version: string }> {
  const boot = join(kernelDir, 'boot');
  const names = await readdir(boot).catch(() => [] as string[]);
  const kernels = names.filter((n) => n.startsWith('vmlinuz-')).sort(versionCompare);
  const last = kernels.at(-1);
  if (last === undefined) {
    throw new FerryError('FERRY_E_KERNEL_MISSING', `No vmlinuz-* in ${boot}: run \`npm run setup\`.`);
  }
  return { vmlinuz: join(boot, last), version: last.slice('vmlinuz-'.length) };
}

/** Reads a module, decompressing it when the kernel package ships it compressed (insmod in busybox may not). */
async function readModule(path: string): Promise<Buffer> {
  const raw = await readFile(path);
  if (path.endsWith('.ko')) return raw;
  if (path.endsWith('.ko.gz')) return gunzipSync(raw);
  const tool = path.endsWith('.ko.xz') ? 'xz' : path.endsWith('.ko.zst') ? 'zstd' : null;
  if (tool === null) throw new FerryError('FERRY_E_INTERNAL', `Unknown module compression: ${path}`);
  try {
    const { stdout } = await run(tool, ['-dc', path], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    throw new FerryError('FERRY_E_MISSING_TOOL', `Could not decompress ${path} with ${tool}: install ${tool}.`, {
      cause: err,
    });
  }
}

async function findModules(kernelDir: string, version: string): Promise<Map<string, string>> {
  const root = join(kernelDir, 'lib', 'modules', version, 'kernel');
  const all = await readdir(root, { recursive: true }).catch(() => [] as string[]);
  const found = new Map<string, string>();
  const wanted = new Set<string>(VIRTIO_MODULES);
  for (const rel of [...all].sort()) {
    const base = rel.split('/').at(-1) ?? '';
    const m = /^(.+)\.ko(\.xz|\.zst|\.gz)?$/.exec(base);
    if (m && wanted.has(m[1]!) && !found.has(m[1]!)) found.set(m[1]!, join(root, rel));
  }
  return found;
}

/** True when the ELF file has no program interpreter, i.e. runs without a dynamic loader in the guest. */
function isStaticElf(b: Buffer): boolean {
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return false;
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > b.length) return false;
    if (b.readUInt32LE(off) === 3 /* PT_INTERP */) return false;
  }
  return true;
}

async function readStatic(path: string, what: string, fix: string): Promise<Buffer> {
  const b = await readFile(path).catch((err: unknown) => {
    throw new FerryError('FERRY_E_MISSING_TOOL', `${what} not found at ${path}: ${fix}.`, { cause: err });
  });
  if (!isStaticElf(b)) {
    throw new FerryError('FERRY_E_MISSING_TOOL', `${what} at ${path} is not a static x86-64 binary: ${fix}.`);
  }
  return b;
}

const GUEST_SOURCE = join(PACKAGE_ROOT, 'guest', 'ferry-guest.c');

/** Builds ferry-guest exactly as setup does; only when missing, or stale and at the default path. */
export async function ensureGuestTool(path = guestToolPath()): Promise<string> {
  const bin = await stat(path).catch(() => null);
  const src = await stat(GUEST_SOURCE).catch(() => null);
  const isDefault = path === join(PACKAGE_ROOT, 'build', 'ferry-guest');
  if (bin !== null && !(isDefault && src !== null && src.mtimeMs > bin.mtimeMs)) return path;
  if (src === null) throw new FerryError('FERRY_E_MISSING_TOOL', `ferry-guest missing at ${path} and no source to build it.`);
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await run('cc', ['-static', '-O2', '-Wall', '-Wextra', '-pthread', '-o', tmp, GUEST_SOURCE]);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new FerryError('FERRY_E_MISSING_TOOL', `Could not build ferry-guest with cc: run \`npm run setup\`.`, {
      cause: err,
    });
  }
  return path;
}

/** Everything in the initramfs, in archive order. */
async function initramfsEntries(opts: BuildOptions, kernelDir: string, version: string): Promise<CpioEntry[]> {
  const init = await readFile(join(PACKAGE_ROOT, 'guest', 'init'));
  const busybox = await readStatic(opts.busybox ?? '/bin/busybox', 'busybox', 'install busybox-static');
  const toolPath = opts.guestTool ?? (await ensureGuestTool());
  const tool = await readStatic(toolPath, 'ferry-guest', 'run `npm run setup`');
  const modules = await findModules(kernelDir, version);
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'dir', path: 'dev' },
    { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'dir', path: 'lib' },
    { type: 'dir', path: 'lib/modules' },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'run' },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'file', path: 'init', data: init, mode: 0o755 },
    { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    { type: 'file', path: 'bin/ferry-guest', data: tool, mode: 0o755 },
    ...APPLETS.map((a): CpioEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
  ];
  // A module built into the kernel has no file: /init skips it.
  for (const name of VIRTIO_MODULES) {
    const path = modules.get(name);
    if (path !== undefined) entries.push({ type: 'file', path: `lib/modules/${name}.ko`, data: await readModule(path) });
  }
  return entries;
}

function inputsHash(kernel: Buffer, version: string, entries: readonly CpioEntry[]): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ format: IMAGE_FORMAT_VERSION, version, kernel: sha256(kernel) }));
  for (const e of entries) {
    const { data, ...rest } = e.type === 'file' ? e : { ...e, data: undefined };
    h.update(JSON.stringify({ ...rest, data: data === undefined ? null : sha256(data) }));
  }
  return h.digest('hex');
}

async function reusable(dir: string, inputsSha256: string): Promise<ImageManifest | null> {
  try {
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as ImageManifest;
    if (m.version !== IMAGE_FORMAT_VERSION || m.inputsSha256 !== inputsSha256 || m.dir !== dir) return null;
    for (const f of m.files) {
      if ((await stat(join(dir, f.name))).size !== f.size) return null;
    }
    return m;
  } catch {
    return null;
  }
}

const building = new Map<string, Promise<ImageManifest>>();

/**
 * Builds (or reuses) the tiny image in `<outDir>`: vmlinuz, initramfs.gz, manifest.json. Same inputs give
 * the same bytes; a build whose inputs hash matches the manifest is reused without writing anything.
 */
export function buildTinyImage(opts: BuildOptions = {}): Promise<ImageManifest> {
  const dir = opts.outDir ?? join(imagesDir(), 'tiny');
  const pending = building.get(dir);
  if (pending) return pending;
  const p = build(dir, opts).finally(() => building.delete(dir));
  building.set(dir, p);
  return p;
}

async function build(dir: string, opts: BuildOptions): Promise<ImageManifest> {
  const kernelDir = opts.kernelDir ?? kernelPackageDir();
  const { vmlinuz, version } = await findKernel(kernelDir);
  const kernel = await readFile(vmlinuz);
  const entries = await initramfsEntries(opts, kernelDir, version);
  const inputsSha256 = inputsHash(kernel, version, entries);
  const old = await reusable(dir, inputsSha256);
  if (old) return old;

  // gzip's header carries no name and mtime 0 from node:zlib, so the output depends on the bytes only.
  const initramfs = gzipSync(writeCpio(entries), { level: 9 });
  await mkdir(dir, { recursive: true });
  await writeAtomic(join(dir, 'vmlinuz'), kernel);
  await writeAtomic(join(dir, 'initramfs.gz'), initramfs);
  const manifest: ImageManifest = {
    name: 'tiny',
    version: IMAGE_FORMAT_VERSION,
    kernelVersion: version,
    dir,
    files: [
      { name: 'vmlinuz', sha256: sha256(kernel), size: kernel.length },
      { name: 'initramfs.gz', sha256: sha256(initramfs), size: initramfs.length },
    ],
    inputsSha256,
  };
  await writeAtomic(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  return manifest;
}

/**
 * The kernel and initrd to boot for an image: `tiny` (built on first use, and brought up to date when its
 * inputs changed: a reused build costs a read of the inputs, ~0.1 s) or an absolute directory that holds
 * `vmlinuz` and `initramfs.gz`. A tiny image that exists is still used when it can't be rebuilt (say, the
 * kernel package was removed from the cache). `rebuild: false` takes a tiny image that exists as it is,
 * without reading its inputs: a migration's destination boots nothing (the guest's memory, its running
 * kernel included, comes from the source), so it does not pay that read while the guest waits.
 */
export async function resolveImage(image: 'tiny' | string, opts: { rebuild?: boolean } = {}): Promise<{ kernel: string; initrd: string }> {
  if (image !== 'tiny' && !image.startsWith('/')) {
    throw new FerryError('FERRY_E_BAD_INPUT', `Image ${JSON.stringify(image)}: use \`tiny\` or an absolute directory.`);
  }
  const dir = image === 'tiny' ? join(imagesDir(), 'tiny') : image;
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initramfs.gz');
  const present = async (): Promise<boolean> => (await exists(kernel)) && (await exists(initrd));
  if (image === 'tiny' && (opts.rebuild !== false || !(await present()))) {
    try {
      await buildTinyImage({ outDir: dir });
    } catch (err) {
      if (!(await present())) throw err;
    }
  } else if (!(await present())) {
    throw new FerryError('FERRY_E_IMAGE_MISSING', `No vmlinuz and initramfs.gz in ${dir}.`);
  }
  return { kernel, initrd };
}
