/**
 * Which accelerator this host really has, and which QEMU. `/dev/kvm` existing proves little: on nested
 * hosts KVM guests can hang at boot, so KVM is chosen only when a probe guest boots under it within a few
 * seconds; otherwise TCG. The verdict is cached per (host kernel release, QEMU version) because a probe
 * costs seconds and neither changes without a reboot or an upgrade.
 */
import { execFile, spawn } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import { cacheDir, kernelPackageDir } from '../common/paths.ts';
import type { Accel } from './argv.ts';

const execFileP = promisify(execFile);

/** The QEMU binary; `FERRY_QEMU` overrides it (e.g. a build of another version). */
export function qemuBinary(): string {
  return process.env.FERRY_QEMU ?? 'qemu-system-x86_64';
}

export interface AccelVerdict {
  accel: Accel;
  reason: string;
  /** ISO time of the probe that decided (for a cached verdict: the original probe). */
  probedAt: string;
  cached: boolean;
}

export interface QemuInfo {
  version: string;
  machineTypes: string[];
}

let infoMemo: Promise<QemuInfo> | undefined;

/** QEMU's version and machine types, from the binary itself (memoised per process). */
export function qemuInfo(): Promise<QemuInfo> {
  infoMemo ??= (async () => {
    try {
      const [v, m] = await Promise.all([
        execFileP(qemuBinary(), ['--version'], { timeout: 10_000 }),
        execFileP(qemuBinary(), ['-machine', 'help'], { timeout: 10_000 }),
      ]);
      const version = /version\s+(\d+\.\d+\.\d+)/.exec(v.stdout)?.[1];
      if (version === undefined) throw new Error(`unexpected --version output: ${v.stdout.slice(0, 200)}`);
      const machineTypes = m.stdout
        .split('\n')
        .slice(1)
        .map((l) => /^(\S+)\s/.exec(l)?.[1])
        .filter((t): t is string => t !== undefined);
      return { version, machineTypes };
    } catch (err) {
      infoMemo = undefined;
      throw new FerryError('FERRY_E_MISSING_TOOL', `Cannot run ${qemuBinary()}: install qemu-system-x86 (npm run setup).`, { cause: err });
    }
  })();
  return infoMemo;
}

/** The guest kernel used for probing (and for the tiny image): the unpacked Debian cloud kernel. */
export async function findProbeKernel(): Promise<string | undefined> {
  const boot = join(kernelPackageDir(), 'boot');
  const names = await readdir(boot).catch(() => [] as string[]);
  const k = names.filter((n) => n.startsWith('vmlinuz-')).sort().at(-1);
  return k === undefined ? undefined : join(boot, k);
}

/**
 * Boots `kernel` under `accel` with no initrd and reports whether the kernel printed its banner on the
 * serial port within the timeout. It needs no disk: the kernel speaks before it looks for a root.
 */
export async function probeBoot(accel: Accel, kernel: string, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  const args = [
    '-accel', accel,
    '-machine', 'q35',
    '-cpu', accel === 'kvm' ? 'host' : 'qemu64',
    '-m', '128M',
    '-nodefaults', '-display', 'none', '-no-user-config', '-no-reboot',
    '-kernel', kernel,
    '-append', 'console=ttyS0 panic=-1',
    '-serial', 'stdio',
  ];
  const child = spawn(qemuBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  return await new Promise((resolve) => {
    let done = false;
    const finish = (r: { ok: boolean; detail: string }): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* gone already */
        }
      }
      resolve(r);
    };
    const timer = setTimeout(() => finish({ ok: false, detail: `no kernel output within ${timeoutMs} ms` }), timeoutMs);
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
      if (out.includes('Linux version')) finish({ ok: true, detail: 'probe kernel booted' });
    });
    child.stderr.on('data', (b: Buffer) => {
      err += b.toString('utf8');
    });
    child.on('error', (e) => finish({ ok: false, detail: `cannot start QEMU: ${e.message}` }));
    child.on('exit', (code, sig) => finish({ ok: false, detail: `QEMU exited (${code ?? sig}) before the kernel spoke: ${err.trim().split('\n').at(-1) ?? ''}` }));
  });
}

interface CacheFile {
  version: 1;
  verdicts: Record<string, { accel: Accel; reason: string; probedAt: string }>;
}

export function accelCacheFile(): string {
  return join(cacheDir(), 'accel.json');
}

async function readCache(file: string): Promise<CacheFile> {
  try {
    const c = JSON.parse(await readFile(file, 'utf8')) as CacheFile;
    if (c.version === 1 && typeof c.verdicts === 'object' && c.verdicts !== null) return c;
  } catch {
    /* missing or unreadable: probe again */
  }
  return { version: 1, verdicts: {} };
}

export interface ProbeOptions {
  timeoutMs?: number;
  /** Ignore a cached verdict (it is still rewritten). */
  fresh?: boolean;
  cacheFile?: string;
}

/**
 * Decides the accelerator. `FERRY_ACCEL=tcg|kvm` forces it (tests, and users who know better). Otherwise
 * KVM needs both an openable /dev/kvm and a probe guest that really runs under it within `timeoutMs`.
 */
export async function probeAccel(opts: ProbeOptions = {}): Promise<AccelVerdict> {
  const forced = process.env.FERRY_ACCEL;
  if (forced !== undefined && forced !== '') {
    if (forced !== 'kvm' && forced !== 'tcg') {
      throw new FerryError('FERRY_E_ACCEL', `FERRY_ACCEL must be kvm or tcg, not ${JSON.stringify(forced)}.`);
    }
    return { accel: forced, reason: 'forced by FERRY_ACCEL', probedAt: new Date().toISOString(), cached: false };
  }
  const timeoutMs = opts.timeoutMs ?? 4000;
  const file = opts.cacheFile ?? accelCacheFile();
  const { version } = await qemuInfo();
  const key = `${release()} qemu-${version}`;
  const cache = await readCache(file);
  const hit = cache.verdicts[key];
  if (hit !== undefined && opts.fresh !== true) return { ...hit, cached: true };

  const verdict = await decide(timeoutMs);
  cache.verdicts[key] = verdict;
  try {
    await mkdir(dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(cache, null, 2) + '\n');
    await rename(tmp, file);
  } catch {
    /* a read-only cache only costs a probe next time */
  }
  return { ...verdict, cached: false };
}

async function decide(timeoutMs: number): Promise<{ accel: Accel; reason: string; probedAt: string }> {
  const probedAt = new Date().toISOString();
  try {
    const fh = await open('/dev/kvm', fsc.O_RDWR);
    await fh.close();
  } catch (err) {
    return { accel: 'tcg', reason: `/dev/kvm not usable (${(err as NodeJS.ErrnoException).code ?? 'error'})`, probedAt };
  }
  const kernel = await findProbeKernel();
  if (kernel === undefined) return { accel: 'tcg', reason: 'no guest kernel to probe KVM with (run npm run setup)', probedAt };
  const r = await probeBoot('kvm', kernel, timeoutMs);
  return r.ok
    ? { accel: 'kvm', reason: `a probe guest booted under KVM within ${timeoutMs} ms`, probedAt }
    : { accel: 'tcg', reason: `/dev/kvm opens but a KVM guest did not boot: ${r.detail}`, probedAt };
}
