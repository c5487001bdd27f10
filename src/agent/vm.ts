/**
 * One VM's life on this host: its run dir (`<agentDir>/vms/<name>/`: spec.json, state.json, qmp.sock,
 * guest.sock, qga.sock, qemu.pid, serial.log, qemu.stderr, local qcow2 disks), admission, boot, readiness
 * (the guest answers: ferry-guest's READY line, or qemu-guest-agent's `guest-ping`), pause/resume, stop with fallbacks, start again from the saved spec, destroy, and re-attach after
 * the managing process restarted. QEMU runs in its own session, so a dead agent leaves its VMs running;
 * everything a restarted agent needs to find them again is in the run dir.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import type { DirtyRate, VmState, VmStatus } from '../common/protocol.ts';
import { parseVmSpec, type VmSpec } from '../common/spec.ts';
import { formatBytes, NAME_RE, validateName } from '../common/units.ts';
import { GuestChannel } from '../guest/client.ts';
import { qgaProbe } from '../guest/qga.ts';
import { writeSeedIso } from '../guest/seed.ts';
import { resolveImage } from '../guest/image.ts';
import { buildQemuArgv, type Accel, type TlsCreds, type VmPaths } from '../qemu/argv.ts';
import { attachQemu, isOurQemu, killQemu, launchQemu, processGone, readPidfile, runFiles, waitForExit, type QemuHandle } from '../qemu/process.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { basePathOf } from './images.ts';
import { HOST_RESERVE_BYTES } from './inventory.ts';
import type { Readiness } from '../common/protocol.ts';

const execFileP = promisify(execFile);

export const STATE_VERSION = 1;
/** The cloud-init seed in the run dir (made from the spec on each host, see src/guest/seed.ts). */
export const SEED_FILE = 'seed.iso';
export const DEFAULT_READY_TIMEOUT_MS = 60_000;
export const DEFAULT_STOP_TIMEOUT_MS = 10_000;
/** How long a VM created without waiting keeps being probed in the background (the guest may boot slowly). */
export const BACKGROUND_READY_MS = 30 * 60_000;
const READY_RE = /FERRY-GUEST READY boot_id=([0-9a-f-]{36})/;
/** One qemu-guest-agent attempt: a guest still booting has no agent on the port and never answers it. */
const QGA_ATTEMPT_MS = 2_000;

/**
 * What create and start do about the guest's readiness. `require` (the default, and the tiny guest's
 * contract the migration engine and the tests rely on): wait, and a guest that does not answer in time is
 * a failed boot, undone. `wait`: wait up to the timeout, then return with `ready: false` — the VM runs, the
 * guest is only slow or silent, and it keeps being probed. `skip`: return as soon as QEMU runs.
 */
export type { Readiness };

/** How the guest says it is up: ferry-guest's serial READY line, qemu-guest-agent's ping, or nothing Ferry can ask. */
export type ReadyProbe = 'ferry-guest' | 'qemu-guest-agent' | 'none';

export function readyProbeOf(spec: VmSpec): ReadyProbe {
  if (spec.guestChannel) return 'ferry-guest';
  return spec.guestAgent === true ? 'qemu-guest-agent' : 'none';
}

/** What the run dir remembers besides the spec: enough to start again and to report after re-attach. */
interface VmStateFile {
  version: typeof STATE_VERSION;
  accel: Accel;
  taps: Record<string, string>;
  /** The guest's boot id as it last reported it; null while stopped or before READY. */
  bootId: string | null;
  startedAt: string | null;
  /** The guest answered during this boot. Absent in state files from before it: then `bootId !== null`. */
  ready?: boolean;
}

export interface CreateOptions {
  accel: Accel;
  /** Host tap of each NIC (created beforehand, see network.ts). */
  taps?: Record<string, string>;
  /** Destination of a migration: start QEMU waiting for the incoming stream, do not wait for READY. */
  incoming?: 'defer';
  tlsCredsDir?: TlsCreds;
  readyTimeoutMs?: number;
  readiness?: Readiness;
  /** Memory kept for the host (default HOST_RESERVE_BYTES). */
  reserveBytes?: number;
}

export interface StartOptions {
  readyTimeoutMs?: number;
  readiness?: Readiness;
  incoming?: 'defer';
  tlsCredsDir?: TlsCreds;
}

export function vmsDir(agentDir: string): string {
  return join(agentDir, 'vms');
}

/** Maps QEMU's open set of run states onto Ferry's four VM states. */
export function vmStateOf(qemuStatus: string | null): VmState {
  switch (qemuStatus) {
    case null:
    case 'shutdown':
      return 'stopped';
    case 'running':
      return 'running';
    case 'inmigrate':
    case 'finish-migrate':
      return 'migrating';
    default:
      // paused, postmigrate, prelaunch, suspended, io-error, guest-panicked, and whatever comes next:
      // the guest holds its memory but does not run.
      return 'paused';
  }
}

let tmpSeq = 0;
async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  // Unique per write: a readiness watcher may save while an operation of the same VM does.
  const tmp = `${path}.${process.pid}.${++tmpSeq}.tmp`;
  await writeFile(tmp, JSON.stringify(value, null, 2) + '\n', { mode: 0o600 });
  await rename(tmp, path);
}

/** `text` plus whatever the serial log gained since (the log only grows during one boot: launch truncated it). */
async function readMore(serialLog: string, text: string): Promise<string> {
  try {
    const fh = await open(serialLog, 'r');
    try {
      const buf = Buffer.alloc(64 * 1024);
      const { bytesRead } = await fh.read(buf, 0, buf.length, Buffer.byteLength(text, 'latin1'));
      return text + buf.subarray(0, bytesRead).toString('latin1');
    } finally {
      await fh.close();
    }
  } catch {
    return text; // not created yet
  }
}

export class LocalVm {
  readonly name: string;
  readonly runDir: string;
  readonly agentDir: string;
  #spec: VmSpec;
  #state: VmStateFile;
  #qemu: QemuHandle | undefined;
  /** A boot id asked of the guest in the background (refreshBootIdSoon), that status() waits for. */
  #bootIdAsked: Promise<void> | undefined;
  /** The readiness watcher of the current boot; aborted when QEMU ends or we let go of it. */
  #watch: AbortController | undefined;

  private constructor(agentDir: string, spec: VmSpec, state: VmStateFile, qemu: QemuHandle | undefined) {
    this.agentDir = agentDir;
    this.name = spec.name;
    this.runDir = join(vmsDir(agentDir), spec.name);
    this.#spec = spec;
    this.#state = state;
    this.#qemu = qemu;
  }

  get spec(): VmSpec {
    return this.#spec;
  }

  /** PID of the running QEMU, or null. */
  get pid(): number | null {
    return this.#live()?.pid ?? null;
  }

  get bootId(): string | null {
    return this.#state.bootId;
  }

  /** The QMP connection of the running QEMU (the migration engine drives it directly). */
  get qmp(): QmpClient {
    const q = this.#live();
    if (!q) throw new FerryError('FERRY_E_VM_STATE', `VM ${this.name} is not running.`);
    return q.qmp;
  }

  /**
   * Admits, lays out and boots a new VM; resolves when the guest reported READY (or, with `incoming`, when
   * QEMU waits for the migration stream). On refusal nothing is created; on a failed boot everything that
   * was started or created is removed again.
   */
  static async create(agentDir: string, input: unknown, opts: CreateOptions): Promise<LocalVm> {
    validateName((input as { name?: unknown } | null)?.name, 'VM name');
    const spec = parseVmSpec(input);
    const limit = totalmem() - (opts.reserveBytes ?? HOST_RESERVE_BYTES);
    if (spec.memoryBytes > limit) {
      throw new FerryError(
        'FERRY_E_MEMORY_TOO_LARGE',
        `VM ${spec.name} asks for ${formatBytes(spec.memoryBytes)}; this host offers at most ${formatBytes(Math.max(0, limit))} to a VM.`,
        { details: { memoryBytes: spec.memoryBytes, limitBytes: limit } },
      );
    }
    const taps = opts.taps ?? {};
    for (const nic of spec.nics) {
      if (taps[nic.id] === undefined) throw new FerryError('FERRY_E_BAD_INPUT', `No host tap given for NIC ${nic.id}.`);
    }
    for (const d of spec.disks) {
      if (d.path !== undefined && !existsSync(d.path)) {
        throw new FerryError('FERRY_E_BAD_SPEC', `Disk ${d.id}: ${d.path} does not exist.`);
      }
      // The base of an overlay must be here before anything is laid out (a migration's destination too).
      const base = basePathOf(agentDir, d);
      if (base !== undefined && !existsSync(base)) {
        throw new FerryError('FERRY_E_BAD_SPEC', `Disk ${d.id}: its base image ${base} is not on this host.`, { details: { disk: d.id, base } });
      }
    }
    // Fails before anything exists; an incoming migration takes the tiny image as it is (resolveImage).
    const image = spec.boot.kind === 'kernel' ? await resolveImage(spec.boot.image, { rebuild: opts.incoming === undefined }) : undefined;
    if (spec.boot.kind === 'direct') {
      for (const f of [spec.boot.kernel, spec.boot.initrd]) {
        if (f !== undefined && !existsSync(f)) throw new FerryError('FERRY_E_BAD_BOOT', `VM ${spec.name}: ${f} is not on this host.`, { details: { file: f } });
      }
    }

    const runDir = join(vmsDir(agentDir), spec.name);
    await mkdir(vmsDir(agentDir), { recursive: true, mode: 0o700 });
    await LocalVm.#claimRunDir(runDir, spec.name);

    const state: VmStateFile = { version: STATE_VERSION, accel: opts.accel, taps, bootId: null, startedAt: null };
    const vm = new LocalVm(agentDir, spec, state, undefined);
    try {
      await writeJsonAtomic(join(runDir, 'spec.json'), spec);
      await vm.#saveState();
      for (const d of spec.disks) {
        if (d.path === undefined) {
          // An overlay names its base by absolute path and format (-F), so QEMU never probes the format; a
          // store image's path is this host's cached copy.
          const path = basePathOf(agentDir, d);
          const base = path === undefined || d.backing === undefined ? [] : ['-b', path, '-F', d.backing.format];
          await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', ...base, vm.#diskPath(d.id), String(d.sizeBytes)], { timeout: 30_000 });
        }
      }
      if (spec.cloudInit !== undefined) await writeSeedIso(spec, vm.#seedPath());
      await vm.#boot({ readyTimeoutMs: opts.readyTimeoutMs, readiness: opts.readiness, incoming: opts.incoming, tlsCredsDir: opts.tlsCredsDir }, image);
      return vm;
    } catch (err) {
      await vm.#kill();
      await rm(runDir, { recursive: true, force: true });
      if (err instanceof FerryError) throw err;
      throw new FerryError('FERRY_E_QEMU_START', `Creating VM ${spec.name} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Takes the run dir atomically (mkdir), so that two creates of one name cannot both win. */
  static async #claimRunDir(runDir: string, name: string): Promise<void> {
    try {
      await mkdir(runDir, { mode: 0o700 });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const files = runFiles(runDir);
    const pid = await readPidfile(files.pidfile);
    if (pid !== undefined && isOurQemu(pid, files.qmpSocket)) {
      throw new FerryError('FERRY_E_VM_EXISTS', `VM ${name} exists and runs (QEMU ${pid}).`, { details: { name, pid } });
    }
    if (existsSync(join(runDir, 'spec.json'))) {
      throw new FerryError('FERRY_E_VM_EXISTS', `VM ${name} exists (stopped): start it or delete it first.`, { details: { name } });
    }
    // A run dir without a spec is what a create that died halfway leaves: not a VM, take it over.
    await rm(runDir, { recursive: true, force: true });
    await mkdir(runDir, { mode: 0o700 });
  }

  /** The VM of that name as its run dir describes it, re-attached to its QEMU when one runs. */
  static async attach(agentDir: string, name: string): Promise<LocalVm> {
    validateName(name, 'VM name');
    const runDir = join(vmsDir(agentDir), name);
    let spec: VmSpec;
    let state: VmStateFile;
    try {
      spec = parseVmSpec(JSON.parse(await readFile(join(runDir, 'spec.json'), 'utf8')));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${name} on this host.`, { details: { name } });
      }
      throw err;
    }
    try {
      state = JSON.parse(await readFile(join(runDir, 'state.json'), 'utf8')) as VmStateFile;
      if (state.version !== STATE_VERSION) throw new Error(`state version ${String(state.version)}`);
    } catch (err) {
      throw new FerryError('FERRY_E_INTERNAL', `The state file of VM ${name} is unreadable.`, { cause: err });
    }
    const qemu = await attachQemu(runDir);
    const vm = new LocalVm(agentDir, spec, state, qemu);
    if (!qemu && state.bootId !== null) {
      // QEMU ended while no one watched (guest powered off, killed): the boot id died with it.
      vm.#state.bootId = null;
      await vm.#saveState();
    }
    return vm;
  }

  /** Every VM with a run dir under `agentDir`, re-attached. QMP serves one client: list once per process. */
  static async list(agentDir: string): Promise<LocalVm[]> {
    const names = await readdir(vmsDir(agentDir)).catch(() => [] as string[]);
    const vms: LocalVm[] = [];
    for (const n of names.sort()) {
      if (!NAME_RE.test(n) || !existsSync(join(vmsDir(agentDir), n, 'spec.json'))) continue;
      vms.push(await LocalVm.attach(agentDir, n));
    }
    return vms;
  }

  async status(): Promise<VmStatus> {
    if (this.#bootIdAsked !== undefined) await this.#bootIdAsked;
    let q = this.#live();
    if (q?.qmp.isClosed) {
      // QEMU lives but our QMP connection broke (framing error, timeout): connect again rather than lie.
      const again = await attachQemu(this.runDir).catch(() => undefined);
      if (again) this.#qemu = q = again;
    }
    let qemuStatus: string | null = null;
    if (q) {
      try {
        qemuStatus = (await q.qmp.execute('query-status')).status;
      } catch (err) {
        if (this.#live()) throw err;
      }
    }
    const state = vmStateOf(qemuStatus);
    return {
      name: this.name,
      state,
      qemuStatus,
      pid: state === 'stopped' ? null : (q?.pid ?? null),
      bootId: state === 'stopped' ? null : this.#state.bootId,
      ready: state !== 'stopped' && (this.#state.ready ?? this.#state.bootId !== null),
      spec: this.#spec,
      startedAt: state === 'stopped' ? null : this.#state.startedAt,
    };
  }

  async pause(): Promise<VmStatus> {
    await this.qmp.execute('stop');
    return this.status();
  }

  async resume(): Promise<VmStatus> {
    await this.qmp.execute('cont');
    return this.status();
  }

  /**
   * QEMU's own measurement (page sampling, works under TCG): `calc-dirty-rate` for one second, then
   * `query-dirty-rate` until it says measured. QEMU reports MiB/s.
   */
  async dirtyRate(calcTimeMs = 1000): Promise<DirtyRate> {
    const qmp = this.qmp;
    await qmp.executeRaw('calc-dirty-rate', { 'calc-time': Math.max(1, Math.round(calcTimeMs / 1000)) });
    const until = Date.now() + calcTimeMs + 10_000;
    for (;;) {
      await new Promise((r) => setTimeout(r, 250));
      const q = (await qmp.executeRaw('query-dirty-rate')) as { status: string; 'dirty-rate'?: number };
      if (q.status === 'measured') return { dirtyRateBytesPerSec: Math.max(0, q['dirty-rate'] ?? 0) * 1024 * 1024, calcTimeMs };
      if (Date.now() > until) throw new FerryError('FERRY_E_QMP_TIMEOUT', `VM ${this.name}: QEMU did not finish measuring its dirty rate (status ${q.status}).`);
    }
  }

  /**
   * Stops the VM: ACPI power-down first (the guest may flush and halt), then `quit`, then SIGKILL. The tiny
   * busybox guest ignores ACPI, so the timeout path is the common one for it.
   */
  async stop(opts: { timeoutMs?: number; force?: boolean } = {}): Promise<VmStatus> {
    const q = this.#live();
    if (q) {
      if (opts.force !== true) {
        await q.qmp.execute('system_powerdown').catch(() => undefined);
        await waitForExit(q, opts.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
      }
      await this.#kill();
    }
    this.#qemu = undefined;
    this.#stopWatch();
    this.#state.bootId = null;
    this.#state.ready = false;
    this.#state.startedAt = null;
    await this.#saveState();
    return this.status();
  }

  /** Boots the stopped VM again from its saved spec (a new boot: a new boot id). */
  async start(opts: StartOptions = {}): Promise<VmStatus> {
    if (this.#live()) throw new FerryError('FERRY_E_VM_STATE', `VM ${this.name} runs already.`);
    try {
      await this.#boot(opts);
    } catch (err) {
      await this.#kill();
      throw err;
    }
    return this.status();
  }

  /** Stops the VM and removes its run dir, local disks included (disks given by path stay). */
  async destroy(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.stop({ timeoutMs: opts.timeoutMs ?? 2000 });
    await rm(this.runDir, { recursive: true, force: true });
  }

  /** A connection to `ferry-guest` over the virtio-serial channel (the caller closes it). */
  async guest(opts: { timeoutMs?: number } = {}): Promise<GuestChannel> {
    // Only ferry-guest speaks this protocol; a stock guest's qemu-guest-agent is for readiness and boot id.
    if (!this.#spec.guestChannel) throw new FerryError('FERRY_E_VM_STATE', `VM ${this.name} has no guest channel.`);
    if (!this.#live()) throw new FerryError('FERRY_E_VM_STATE', `VM ${this.name} is not running.`);
    return GuestChannel.connect(runFiles(this.runDir).guestSocket, opts);
  }

  /**
   * Records the boot id the guest reports now (after an incoming migration, which boots nothing).
   * `timeoutMs` bounds the whole exchange (connect and answer), for callers that must not stall on a
   * guest that is slow or has no ferry-guest.
   */
  /**
   * Asks the guest for its boot id in the background (a migration's finish: the guest runs, and the source
   * is let go meanwhile); status() waits for that answer, so whoever asks next sees it. Never throws.
   */
  refreshBootIdSoon(opts: { timeoutMs: number }): void {
    const p = this.refreshBootId(opts).then(
      () => undefined,
      () => undefined,
    );
    this.#bootIdAsked = p;
    void p.finally(() => {
      if (this.#bootIdAsked === p) this.#bootIdAsked = undefined;
    });
  }

  async refreshBootId(opts: { timeoutMs?: number } = {}): Promise<string> {
    const deadline = opts.timeoutMs === undefined ? undefined : Date.now() + opts.timeoutMs;
    const left = (): { timeoutMs?: number } => (deadline === undefined ? {} : { timeoutMs: Math.max(1, deadline - Date.now()) });
    let bootId: string;
    if (readyProbeOf(this.#spec) === 'qemu-guest-agent') {
      if (!this.#live()) throw new FerryError('FERRY_E_VM_STATE', `VM ${this.name} is not running.`);
      const r = await qgaProbe(runFiles(this.runDir).qgaSocket, left());
      if (r.bootId === null) throw new FerryError('FERRY_E_GUEST_COMMAND', `The guest agent of VM ${this.name} answers but does not tell its boot id.`);
      bootId = r.bootId;
    } else {
      const ch = await this.guest(opts);
      try {
        ({ bootId } = await ch.info(left()));
      } finally {
        await ch.close();
      }
    }
    this.#state.bootId = bootId;
    this.#state.ready = true;
    this.#state.startedAt ??= new Date().toISOString();
    await this.#saveState();
    return bootId;
  }

  /**
   * Probes the guest in the background until it answers (the agent calls it for VMs it re-attached and
   * found not ready yet). Its timers do not keep a process alive.
   */
  watchReadiness(): void {
    const q = this.#live();
    if (!q || this.#state.ready === true || readyProbeOf(this.#spec) === 'none') return;
    this.#background(q.pid);
  }

  /** Lets go of QEMU without stopping it (agent shutdown; another process may attach). */
  async detach(): Promise<void> {
    this.#stopWatch();
    const q = this.#qemu;
    this.#qemu = undefined;
    if (q) await q.qmp.close();
  }

  #seedPath(): string {
    return join(this.runDir, SEED_FILE);
  }

  #diskPath(id: string): string {
    return this.#spec.disks.find((d) => d.id === id)?.path ?? join(this.runDir, `${id}.qcow2`);
  }

  /** The QEMU handle while it is ours and alive; forgets it once it ended. */
  #live(): QemuHandle | undefined {
    const q = this.#qemu;
    if (q && (q.qmp.isClosed || processGone(q.pid))) {
      if (processGone(q.pid)) this.#qemu = undefined;
      else return q; // QMP dropped but QEMU lives: still ours, kill() can end it
    }
    return this.#qemu;
  }

  async #saveState(): Promise<void> {
    await writeJsonAtomic(join(this.runDir, 'state.json'), this.#state);
  }

  /** `image`: the kernel image resolved already (create), not resolved a second time. */
  async #boot(opts: StartOptions, image?: { kernel: string; initrd: string }): Promise<void> {
    const files = runFiles(this.runDir);
    const spec = this.#spec;
    const paths: VmPaths = {
      qmpSocket: files.qmpSocket,
      observeSocket: files.observeSocket,
      guestSocket: files.guestSocket,
      qgaSocket: files.qgaSocket,
      serialLog: files.serialLog,
      pidfile: files.pidfile,
      disks: Object.fromEntries(spec.disks.map((d) => [d.id, this.#diskPath(d.id)])),
      taps: this.#state.taps,
      ...(spec.cloudInit === undefined ? {} : { seed: this.#seedPath() }),
    };
    if (spec.boot.kind === 'kernel') Object.assign(paths, image ?? (await resolveImage(spec.boot.image)));
    const argv = buildQemuArgv(spec, paths, {
      accel: this.#state.accel,
      ...(opts.incoming ? { incoming: opts.incoming } : {}),
      ...(opts.tlsCredsDir ? { tlsCredsDir: opts.tlsCredsDir } : {}),
    });
    // A READY line from an earlier boot must not be mistaken for this one's.
    await unlink(files.serialLog).catch(() => undefined);
    await unlink(files.guestSocket).catch(() => undefined);
    await unlink(files.qgaSocket).catch(() => undefined);
    this.#stopWatch();
    this.#state.bootId = null;
    this.#state.ready = false;
    this.#state.startedAt = new Date().toISOString();
    this.#qemu = await launchQemu(argv, { runDir: this.runDir });
    await this.#saveState();
    // An incoming migration boots nothing: its guest answers once finish lets it run (refreshBootId).
    if (opts.incoming !== undefined || readyProbeOf(spec) === 'none') return;
    const mode = opts.readiness ?? 'require';
    const pid = this.#qemu.pid;
    if (mode === 'skip') return this.#background(pid);
    const timeoutMs = opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    const ac = new AbortController();
    this.#watch = ac;
    const r = await this.#watchReady(pid, ac.signal, Date.now() + timeoutMs, true);
    if (r.ready) return;
    if (mode === 'require') {
      throw new FerryError('FERRY_E_GUEST_TIMEOUT', `The guest did not answer (${readyProbeOf(spec)}) within ${timeoutMs} ms; serial log ends: ${r.serial.slice(-300).trim()}`);
    }
    this.#background(pid); // `wait`: the VM runs; a slow guest still becomes ready
  }

  #background(pid: number): void {
    this.#stopWatch();
    const ac = new AbortController();
    this.#watch = ac;
    this.#watchReady(pid, ac.signal, Date.now() + BACKGROUND_READY_MS, false).catch(() => undefined);
  }

  #stopWatch(): void {
    this.#watch?.abort();
    this.#watch = undefined;
  }

  /**
   * Probes until the guest answers (then records its boot id and `ready`), the deadline passes, the watch is
   * aborted, or QEMU ends (FERRY_E_QEMU_START: a QEMU that exits before its guest answered did not boot).
   * `ref`: whether the probe's timers keep the process alive (a background watch must not).
   */
  async #watchReady(pid: number, signal: AbortSignal, deadline: number, ref: boolean): Promise<{ ready: boolean; serial: string }> {
    const files = runFiles(this.runDir);
    const probe = readyProbeOf(this.#spec);
    let serial = '';
    while (!signal.aborted) {
      let bootId: string | null | undefined;
      if (probe === 'ferry-guest') {
        serial = await readMore(files.serialLog, serial);
        bootId = READY_RE.exec(serial)?.[1];
      } else {
        bootId = (await qgaProbe(files.qgaSocket, { timeoutMs: QGA_ATTEMPT_MS }).catch(() => undefined))?.bootId;
      }
      if (signal.aborted) break;
      if (bootId !== undefined) {
        this.#state.bootId = bootId;
        this.#state.ready = true;
        await this.#saveState();
        return { ready: true, serial };
      }
      if (processGone(pid)) {
        serial = await readMore(files.serialLog, serial);
        throw new FerryError('FERRY_E_QEMU_START', `QEMU exited before the guest was ready; serial log: ${serial.slice(-500)}`);
      }
      if (Date.now() > deadline) break;
      await sleep(probe === 'ferry-guest' ? 50 : 500, undefined, { ref }).catch(() => undefined);
    }
    return { ready: false, serial };
  }

  /** Ends our QEMU now: `quit`, then SIGKILL; waits until it is really gone. */
  async #kill(): Promise<void> {
    this.#stopWatch();
    const q = this.#qemu;
    if (!q) return;
    const sock = runFiles(this.runDir).qmpSocket;
    if (!q.qmp.isClosed) {
      await q.qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    }
    if (!(await waitForExit(q, 3000))) {
      killQemu(q.pid, sock);
      await q.qmp.close();
      if (!(await waitForExit(q, 5000))) {
        throw new FerryError('FERRY_E_INTERNAL', `QEMU ${q.pid} of VM ${this.name} survived SIGKILL.`);
      }
    }
    this.#qemu = undefined;
    await unlink(sock).catch(() => undefined);
    await unlink(runFiles(this.runDir).observeSocket).catch(() => undefined);
    await unlink(runFiles(this.runDir).pidfile).catch(() => undefined);
  }
}
