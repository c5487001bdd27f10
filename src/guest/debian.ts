/**
 * `ferry image build debian-12`: a real Debian 12 system built from Debian's own packages (mmdebstrap, the
 * machine's own apt mirror), for the operators' kind of guest: systemd, cloud-init (NoCloud only),
 * qemu-guest-agent, openssh-server. One root tree gives three artifacts, cached under the image cache by a
 * hash of the recipe:
 *   - `disk.qcow2`: an MBR-partitioned disk that SeaBIOS boots through GRUB (the partition from 1 MiB, GRUB's
 *     boot sector in the MBR and its core image in the gap before the partition, as grub-install lays them);
 *   - `rootfs.qcow2`: the same tree as a bare ext4 filesystem without a partition table (direct kernel boot);
 *   - `vmlinuz`, `initrd.img`: the distribution's kernel and initramfs, for `--kernel/--initrd`.
 *
 * GRUB is installed without grub-install: that tool insists on probing a block device for the boot
 * directory, and loop devices here have no partition nodes. grub-mkimage makes the core image (its
 * block list already points at sector 2 onwards), and the MBR gets boot.img's code with the partition table
 * kept — the two writes grub-bios-setup would do for a disk with an embedding area.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, open, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { imagesDir } from '../common/paths.ts';

/** Layout version of what this module writes (files, names, how GRUB is laid out). Part of the cache key. */
export const DEBIAN_BUILD_VERSION = 1;

export interface DebianRecipe {
  name: 'debian-12';
  suite: 'bookworm';
  /** Packages on top of mmdebstrap's `apt` variant (essential + apt). */
  packages: readonly string[];
  /** Virtual size of both disks. */
  diskBytes: number;
  /** The kernel command line GRUB boots with (the root partition, the serial console, classic NIC names). */
  append: string;
}

export const DEBIAN_12: DebianRecipe = {
  name: 'debian-12',
  suite: 'bookworm',
  packages: [
    'linux-image-cloud-amd64',
    'systemd-sysv',
    'udev',
    'kmod',
    'e2fsprogs',
    'cloud-init',
    'qemu-guest-agent',
    'openssh-server',
    'ifupdown',
    'iproute2',
    'iputils-ping',
    'netbase',
    'procps',
    'python3',
    'sudo',
  ],
  diskBytes: 2 * 1024 * 1024 * 1024,
  append: 'root=/dev/vda1 ro console=ttyS0 net.ifnames=0',
};

/** The filesystem label both disks carry; /etc/fstab mounts the root by it, so one tree fits both. */
export const ROOT_LABEL = 'ferry-root';
/** Where the partition starts: 1 MiB, leaving the gap GRUB's core image lives in. */
const PARTITION_OFFSET = 1024 * 1024;

export interface DebianArtifact {
  name: string;
  path: string;
  sha256: string;
  bytes: number;
}

export interface DebianManifest {
  name: string;
  version: number;
  /** Hash of the recipe and the layout version: equal → the build is reused. */
  inputsSha256: string;
  dir: string;
  kernelVersion: string;
  /** For direct kernel boot of rootfs.qcow2 (`--append`). */
  directAppend: string;
  disk: DebianArtifact;
  rootfs: DebianArtifact;
  kernel: DebianArtifact;
  initrd: DebianArtifact;
  builtAt: string;
  buildSeconds: number;
}

export type BuildLog = (step: string) => void;

export function recipeHash(recipe: DebianRecipe): string {
  return createHash('sha256')
    .update(JSON.stringify({ v: DEBIAN_BUILD_VERSION, recipe }))
    .digest('hex');
}

/**
 * The mirror to build from: the first deb URI the machine's own apt sources give for the suite (deb822
 * files first, then sources.list). Ferry never names a mirror of its own.
 */
export async function machineMirror(suite: string, etc = '/etc/apt'): Promise<string> {
  const files: string[] = [];
  const dir = join(etc, 'sources.list.d');
  for (const f of (await readdir(dir).catch(() => [] as string[])).sort()) if (f.endsWith('.sources')) files.push(join(dir, f));
  for (const f of files) {
    for (const stanza of (await readFile(f, 'utf8')).split(/\n\s*\n/)) {
      const field = (k: string): string[] =>
        (new RegExp(`^${k}:\\s*(.*)$`, 'mi').exec(stanza)?.[1] ?? '').split(/\s+/).filter(Boolean);
      if (field('Types').includes('deb') && field('Suites').includes(suite) && field('Enabled')[0] !== 'no') {
        const uri = field('URIs')[0];
        if (uri) return uri;
      }
    }
  }
  const list = await readFile(join(etc, 'sources.list'), 'utf8').catch(() => '');
  for (const line of list.split('\n')) {
    const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (m && m[2] === suite) return m[1]!;
  }
  throw new FerryError('FERRY_E_MISSING_TOOL', `No apt source for ${suite} on this machine (${etc}): the Debian image is built from the machine's own mirror.`);
}

async function sha256File(path: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const fh = await open(path, 'r');
  try {
    for await (const chunk of fh.createReadStream()) {
      hash.update(chunk as Buffer);
      bytes += (chunk as Buffer).length;
    }
  } finally {
    await fh.close().catch(() => undefined);
  }
  return { sha256: hash.digest('hex'), bytes };
}

async function artifact(name: string, path: string): Promise<DebianArtifact> {
  return { name, path, ...(await sha256File(path)) };
}

/** Runs a build tool; its output goes to the build log, its failure names the step. */
function tool(step: string, cmd: string, args: readonly string[], logFile: string, input?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    void open(logFile, 'a').then((fh) => {
      const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', fh.fd, fh.fd] });
      if (input !== undefined) child.stdin?.end(input);
      child.on('error', (err) => {
        void fh.close();
        reject(new FerryError('FERRY_E_MISSING_TOOL', `${step}: cannot run ${cmd} (${err.message}): run \`npm run setup\`.`, { cause: err }));
      });
      child.on('exit', (code, signal) => {
        void fh.close();
        if (code === 0) resolve();
        else reject(new FerryError('FERRY_E_IMAGE_BUILD', `${step}: ${cmd} exited ${code ?? signal}; see ${logFile}.`, { details: { step, log: logFile } }));
      });
    }, reject);
  });
}

const newest = (names: string[], prefix: string): string | undefined =>
  names
    .filter((n) => n.startsWith(prefix))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
    .at(-1);

/** What Ferry changes in the tree mmdebstrap made: mounts, identity left to first boot, NoCloud only, GRUB's config. */
async function configureTree(root: string, recipe: DebianRecipe, kernelVersion: string): Promise<void> {
  await writeFile(join(root, 'etc/fstab'), `LABEL=${ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n`);
  await writeFile(join(root, 'etc/hostname'), 'debian\n');
  // An empty machine-id: each VM made from the image gets its own at first boot.
  await writeFile(join(root, 'etc/machine-id'), '');
  await rm(join(root, 'var/lib/dbus/machine-id'), { force: true });
  // Host keys are made per VM at first boot (cloud-init), never shared by every VM of the image.
  for (const f of await readdir(join(root, 'etc/ssh')).catch(() => [] as string[])) {
    if (f.startsWith('ssh_host_')) await rm(join(root, 'etc/ssh', f), { force: true });
  }
  await mkdir(join(root, 'etc/cloud/cloud.cfg.d'), { recursive: true });
  // Only the seed Ferry attaches (and None): probing cloud metadata services would wait for addresses
  // that do not exist here.
  await writeFile(join(root, 'etc/cloud/cloud.cfg.d/90-ferry.cfg'), 'datasource_list: [ NoCloud, None ]\n');
  const ifaces = join(root, 'etc/network/interfaces');
  if (!existsSync(ifaces)) {
    await mkdir(join(root, 'etc/network/interfaces.d'), { recursive: true });
    await writeFile(ifaces, 'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n');
  }
  await mkdir(join(root, 'boot/grub/i386-pc'), { recursive: true });
  for (const f of await readdir('/usr/lib/grub/i386-pc')) {
    if (f.endsWith('.mod') || f.endsWith('.lst')) await copyFile(join('/usr/lib/grub/i386-pc', f), join(root, 'boot/grub/i386-pc', f));
  }
  await writeFile(
    join(root, 'boot/grub/grub.cfg'),
    [
      'serial --unit=0 --speed=115200',
      'terminal_input serial console',
      'terminal_output serial console',
      'set timeout=1',
      'set default=0',
      "menuentry 'Debian GNU/Linux 12' {",
      `  linux /boot/vmlinuz-${kernelVersion} ${recipe.append}`,
      `  initrd /boot/initrd.img-${kernelVersion}`,
      '}',
      '',
    ].join('\n'),
  );
  await rm(join(root, 'var/cache/apt/archives'), { recursive: true, force: true });
  await mkdir(join(root, 'var/cache/apt/archives/partial'), { recursive: true });
  await rm(join(root, 'var/lib/apt/lists'), { recursive: true, force: true });
  await mkdir(join(root, 'var/lib/apt/lists/partial'), { recursive: true });
}

/** GRUB for BIOS on an MBR disk: boot.img's code in the MBR (partition table kept), the core image at sector 1. */
async function installGrub(diskRaw: string, work: string, logFile: string): Promise<void> {
  const core = join(work, 'core.img');
  await tool('grub core image', 'grub-mkimage', ['-O', 'i386-pc', '-d', '/usr/lib/grub/i386-pc', '-o', core, '-p', '(hd0,msdos1)/boot/grub', 'biosdisk', 'part_msdos', 'ext2', 'normal', 'linux', 'configfile', 'echo', 'serial', 'terminal', 'search', 'search_label', 'gzio', 'test'], logFile);
  const coreImg = await readFile(core);
  if (coreImg.length > PARTITION_OFFSET - 512) throw new FerryError('FERRY_E_IMAGE_BUILD', `GRUB's core image (${coreImg.length} bytes) does not fit before the partition.`);
  const bootImg = await readFile('/usr/lib/grub/i386-pc/boot.img');
  const fh = await open(diskRaw, 'r+');
  try {
    const mbr = Buffer.alloc(512);
    await fh.read(mbr, 0, 512, 0);
    // Boot code up to the disk signature (0x1b8); the signature, partition table and 0x55aa stay.
    bootImg.copy(mbr, 0, 0, 0x1b8);
    // As grub-bios-setup does for a hard disk: the boot drive check's jump becomes two NOPs.
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    await fh.write(mbr, 0, 512, 0);
    await fh.write(coreImg, 0, coreImg.length, 512);
  } finally {
    await fh.close();
  }
}

const building = new Map<string, Promise<DebianManifest>>();

/** Builds (or reuses, when its recipe hash matches) the Debian 12 image; `log` hears each step. */
export function buildDebianImage(opts: { recipe?: DebianRecipe; outDir?: string; log?: BuildLog } = {}): Promise<DebianManifest> {
  const recipe = opts.recipe ?? DEBIAN_12;
  const dir = opts.outDir ?? join(imagesDir(), recipe.name);
  const pending = building.get(dir);
  if (pending) return pending;
  const p = build(recipe, dir, opts.log ?? (() => undefined)).finally(() => building.delete(dir));
  building.set(dir, p);
  return p;
}

export async function readDebianManifest(dir = join(imagesDir(), DEBIAN_12.name)): Promise<DebianManifest | null> {
  try {
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as DebianManifest;
    return [m.disk, m.rootfs, m.kernel, m.initrd].every((a) => existsSync(a.path)) ? m : null;
  } catch {
    return null;
  }
}

async function build(recipe: DebianRecipe, dir: string, log: BuildLog): Promise<DebianManifest> {
  const inputsSha256 = recipeHash(recipe);
  const old = await readDebianManifest(dir);
  if (old && old.inputsSha256 === inputsSha256) {
    log(`reusing ${dir} (recipe ${inputsSha256.slice(0, 12)})`);
    return old;
  }
  if (process.getuid?.() !== 0) throw new FerryError('FERRY_E_IMAGE_BUILD', 'Building the Debian image needs root (mmdebstrap, device nodes in the tree).');
  const started = Date.now();
  const work = `${dir}.build-${process.pid}`;
  const root = join(work, 'root');
  const logFile = join(work, 'build.log');
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    const mirror = await machineMirror(recipe.suite);
    log(`mmdebstrap ${recipe.suite}: ${recipe.packages.length} packages from the machine's mirror`);
    await tool('mmdebstrap', 'mmdebstrap', ['--quiet', '--variant=apt', `--include=${recipe.packages.join(',')}`, recipe.suite, root, mirror], logFile);
    const boot = await readdir(join(root, 'boot'));
    const vmlinuz = newest(boot, 'vmlinuz-');
    if (vmlinuz === undefined) throw new FerryError('FERRY_E_IMAGE_BUILD', `No kernel in ${root}/boot after mmdebstrap.`);
    const kernelVersion = vmlinuz.slice('vmlinuz-'.length);
    if (!boot.includes(`initrd.img-${kernelVersion}`)) throw new FerryError('FERRY_E_IMAGE_BUILD', `No initrd.img-${kernelVersion} in ${root}/boot.`);
    log(`configuring the tree (kernel ${kernelVersion})`);
    await configureTree(root, recipe, kernelVersion);
    await copyFile(join(root, 'boot', vmlinuz), join(work, 'vmlinuz'));
    await copyFile(join(root, 'boot', `initrd.img-${kernelVersion}`), join(work, 'initrd.img'));

    const mib = recipe.diskBytes / (1024 * 1024);
    log('rootfs: a bare ext4 filesystem of the tree');
    const rootfsRaw = join(work, 'rootfs.raw');
    await tool('rootfs', 'mke2fs', ['-q', '-F', '-t', 'ext4', '-L', ROOT_LABEL, '-d', root, rootfsRaw, `${mib}M`], logFile);
    await tool('rootfs qcow2', 'qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rootfsRaw, join(work, 'rootfs.qcow2')], logFile);
    await rm(rootfsRaw);

    log('disk: MBR partition from 1 MiB, ext4, GRUB for BIOS');
    const diskRaw = join(work, 'disk.raw');
    const disk = await open(diskRaw, 'w');
    await disk.truncate(recipe.diskBytes).finally(() => disk.close());
    await tool('partition table', 'sfdisk', ['-q', diskRaw], logFile, `label: dos\nstart=${PARTITION_OFFSET / 512}, type=83, bootable\n`);
    await tool('root partition', 'mke2fs', ['-q', '-F', '-t', 'ext4', '-L', ROOT_LABEL, '-E', `offset=${PARTITION_OFFSET}`, '-d', root, diskRaw, `${mib - 1}M`], logFile);
    await installGrub(diskRaw, work, logFile);
    await tool('disk qcow2', 'qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', diskRaw, join(work, 'disk.qcow2')], logFile);
    await rm(diskRaw);
    await rm(root, { recursive: true, force: true });

    // Move the finished build into place, then describe it at its final paths.
    await rm(dir, { recursive: true, force: true });
    await rename(work, dir);
    const manifest: DebianManifest = {
      name: recipe.name,
      version: DEBIAN_BUILD_VERSION,
      inputsSha256,
      dir,
      kernelVersion,
      directAppend: recipe.append.replace('root=/dev/vda1', 'root=/dev/vda').replace(' ro ', ' rw '),
      disk: await artifact('disk.qcow2', join(dir, 'disk.qcow2')),
      rootfs: await artifact('rootfs.qcow2', join(dir, 'rootfs.qcow2')),
      kernel: await artifact('vmlinuz', join(dir, 'vmlinuz')),
      initrd: await artifact('initrd.img', join(dir, 'initrd.img')),
      builtAt: new Date().toISOString(),
      buildSeconds: Math.round((Date.now() - started) / 1000),
    };
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    log(`built in ${manifest.buildSeconds} s: ${dir}`);
    return manifest;
  } catch (err) {
    // Keep the log of a failed build next to where the image would be, drop the rest.
    for (const f of ['root', 'rootfs.raw', 'disk.raw']) await rm(join(work, f), { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}
