/**
 * This host's VMs as the agent serves them: the table of LocalVm handles (re-attached at start from the
 * run dirs in the data dir), one operation per VM at a time, NIC taps around create and delete, admission
 * by promised memory, and the inventory.
 *
 * The VMs outlive the agent. LocalVm spawns QEMU detached (its own session), so an agent that exits, is
 * killed, or is upgraded leaves its VMs running, and the next agent re-attaches through the pidfile and
 * QMP socket. The price: once the agent is gone, an exiting QEMU is reaped by PID 1, not by us. Linux has
 * `prctl(PR_SET_CHILD_SUBREAPER)` to make the agent the reaper of orphaned descendants, but Node exposes no
 * prctl, and the orphans of a *previous* agent were re-parented before we started anyway. So the end of a
 * QEMU is judged as "QMP socket closed and process gone or a zombie" (src/qemu/process.ts), never by
 * waiting for a PID to disappear, which PID 1 here delays by ~1.3 s.
 */
import type { PortRange } from '../common/config-file.ts';
import { MigrationPorts } from './migration/ports.ts';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { FerryError } from '../common/errors.ts';
import type { CachedImage, DirtyRate, HostInventory, ImageReceived, SharedDiskFingerprint, VmStatus } from '../common/protocol.ts';
import { probeAccel, qemuInfo } from '../qemu/accel.ts';
import { probeQemuCapabilities } from '../qemu/capabilities.ts';
import { DEFAULT_CPU_MODEL, type VmSpec } from '../common/spec.ts';
import type { Accel } from '../qemu/argv.ts';
import type { Log } from '../common/log.ts';
import { ImageCache } from './images.ts';
import { buildInventory, hiddenMachineTypes, readCpuFacts, withHiddenMachineTypes, type CpuFacts, type QemuFacts } from './inventory.ts';
import { KeyedMutex } from './mutex.ts';
import { fingerprintSharedDisks } from './shared-disks.ts';
import { ensureTaps, removeTaps } from './network.ts';
import { runFiles } from '../qemu/process.ts';
import { LocalVm, vmsDir, type Readiness } from './vm.ts';

/** How a create treats the guest's readiness (see Readiness); the default is `require`. */
export interface CreateVmOptions {
  readiness?: Readiness;
  readyTimeoutMs?: number;
}
import { loadRecord, RUN_DIR_RECORD } from './migration/record.ts';

/** What the HTTP layer needs from a host; AgentHost is the one implementation. */
export interface VmHost {
  inventory(): Promise<HostInventory>;
  list(): Promise<VmStatus[]>;
  get(name: string): Promise<VmStatus>;
  create(spec: VmSpec, opts?: CreateVmOptions): Promise<VmStatus>;
  stop(name: string, opts?: { timeoutMs?: number; force?: boolean }): Promise<VmStatus>;
  start(name: string): Promise<VmStatus>;
  pause(name: string): Promise<VmStatus>;
  resume(name: string): Promise<VmStatus>;
  destroy(name: string): Promise<void>;
  guest(name: string, command: string): Promise<unknown>;
  /** The last `maxBytes` of the VM's serial log. */
  console(name: string, maxBytes: number): Promise<string>;
  /** The VM's shared disks as this host sees them (shared-disks.ts). */
  sharedDisks(name: string): Promise<SharedDiskFingerprint[]>;
  /** How fast the guest dirties memory, measured now (QEMU's calc-dirty-rate). */
  dirtyRate(name: string): Promise<DirtyRate>;
  /** The base images this host has (images.ts). */
  listImages(): Promise<CachedImage[]>;
  /** Writes one base image, checked against its sha256, unless it is here already. */
  receiveImage(sha256: string, body: Readable): Promise<ImageReceived>;
  /** Lets go of the VMs (QMP connections) without stopping them. */
  close(): Promise<void>;
}

export interface AgentHostOptions {
  name: string;
  dataDir: string;
  /** Address QEMU migration streams and NBD exports listen on (inventory.migrationAddress). */
  migrationAddress: string;
  /** Ports for migration streams and NBD exports (`--migration-ports`); absent: any free port. */
  migrationPorts?: PortRange;
  /** Bridge for VM NIC taps; without it, specs with NICs are refused. */
  vmBridge?: string;
  /** Skip the accelerator probe (tests; FERRY_ACCEL does the same for probeAccel). */
  accel?: Accel;
  log?: Log;
}

const DEFAULT_STOP_TIMEOUT_MS = 30_000;

export class AgentHost implements VmHost {
  private readonly vms = new Map<string, LocalVm>();
  private readonly locks = new KeyedMutex();
  private ports: MigrationPorts | undefined;
  private readonly images: ImageCache;

  private constructor(
    private readonly opts: AgentHostOptions,
    private readonly cpu: CpuFacts,
    private readonly qemu: QemuFacts,
  ) {
    this.images = new ImageCache(opts.dataDir);
  }

  listImages(): Promise<CachedImage[]> {
    return this.images.list();
  }

  receiveImage(sha256: string, body: Readable): Promise<ImageReceived> {
    return this.images.receive(sha256, body);
  }

  /** Gathers the host's facts and re-attaches every VM found in the data dir. */
  static async open(opts: AgentHostOptions): Promise<AgentHost> {
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
    const [cpu, info, accel] = await Promise.all([
      readCpuFacts(),
      // The probe QEMU says more than `-machine help`; an agent whose probe fails still runs VMs, and the
      // scheduler then checks machine types only.
      probeQemuCapabilities({ cpuModels: [DEFAULT_CPU_MODEL] }).catch((err: unknown) => {
        opts.log?.warn({ err }, `QEMU capability probe failed, reporting machine types only: ${String(err)}`);
        return qemuInfo();
      }),
      opts.accel === undefined ? probeAccel().then((v) => v.accel) : Promise.resolve(opts.accel),
    ]);
    const hidden = hiddenMachineTypes(opts.name);
    if (hidden.length > 0) opts.log?.warn({ hidden }, `FERRY_TEST_HIDE_MACHINE_TYPES: hiding machine types ${hidden.join(', ')} (test only)`);
    const host = new AgentHost(opts, cpu, withHiddenMachineTypes({ accel, ...info }, hidden));
    await host.reattach();
    return host;
  }

  private log(line: string): void {
    this.opts.log?.info(line);
  }

  private async reattach(): Promise<void> {
    // Not LocalVm.list: one unreadable run dir would make it throw for all, and every VM must come back.
    const names = await readdir(vmsDir(this.opts.dataDir)).catch(() => [] as string[]);
    for (const name of names.sort()) {
      if (!existsSync(join(vmsDir(this.opts.dataDir), name, 'spec.json'))) continue;
      try {
        const vm = await LocalVm.attach(this.opts.dataDir, name);
        this.vms.set(name, vm);
        vm.watchReadiness(); // a guest still booting when the last agent went away
        const st = await vm.status();
        this.log(`re-attached VM ${name}: ${st.state}${st.pid === null ? '' : ` (QEMU pid ${st.pid})`}`);
      } catch (err) {
        // One broken run dir must not keep the agent (and the other VMs) from serving.
        this.log(`cannot re-attach VM ${name}: ${(err as Error).message}`);
      }
    }
  }

  private vm(name: string): LocalVm {
    const vm = this.vms.get(name);
    if (vm === undefined)
      throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM ${name} on host ${this.opts.name}.`);
    return vm;
  }

  private async committedBytes(except?: string): Promise<number> {
    let sum = 0;
    for (const [name, vm] of this.vms) {
      if (name === except) continue;
      const st = await vm.status().catch(() => undefined);
      if (st !== undefined && st.state !== 'stopped') sum += st.spec.memoryBytes;
    }
    return sum;
  }

  async inventory(): Promise<HostInventory> {
    return buildInventory({
      name: this.opts.name,
      cpu: this.cpu,
      qemu: this.qemu,
      migrationAddress: this.opts.migrationAddress,
      committedBytes: await this.committedBytes(),
    });
  }

  async list(): Promise<VmStatus[]> {
    const names = [...this.vms.keys()].sort();
    return Promise.all(names.map((n) => this.vm(n).status()));
  }

  get(name: string): Promise<VmStatus> {
    return this.vm(name).status();
  }

  /** Refuses a VM this host cannot promise memory to, or whose machine type its QEMU lacks. */
  async admit(spec: VmSpec): Promise<void> {
    const inv = await this.inventory();
    if (spec.memoryBytes > inv.freeMemoryBytes) {
      throw new FerryError(
        'FERRY_E_NO_CAPACITY',
        `Host ${this.opts.name} has ${inv.freeMemoryBytes} bytes of memory not promised to VMs; VM ${spec.name} needs ${spec.memoryBytes}.`,
        { details: { freeMemoryBytes: inv.freeMemoryBytes, memoryBytes: spec.memoryBytes } },
      );
    }
    if (!this.qemu.machineTypes.includes(spec.machine)) {
      throw new FerryError(
        'FERRY_E_CPU_INCOMPATIBLE',
        `QEMU ${this.qemu.version} on ${this.opts.name} has no machine type ${spec.machine}.`,
      );
    }
  }

  create(spec: VmSpec, opts: CreateVmOptions = {}): Promise<VmStatus> {
    return this.locks.run(spec.name, async () => {
      // A run dir this agent did not attach (unreadable state) is caught by LocalVm.create's own claim.
      if (this.vms.has(spec.name)) {
        throw new FerryError(
          'FERRY_E_VM_EXISTS',
          `VM ${spec.name} exists already on host ${this.opts.name}.`,
        );
      }
      await this.admit(spec);
      const taps = await ensureTaps(spec, { bridge: this.opts.vmBridge });
      try {
        const vm = await LocalVm.create(this.opts.dataDir, spec, { accel: this.qemu.accel, taps, ...opts });
        this.vms.set(spec.name, vm);
        this.log(`created VM ${spec.name}`);
        return await vm.status();
      } catch (err) {
        await removeTaps(spec).catch(() => undefined);
        throw err;
      }
    });
  }

  stop(name: string, opts: { timeoutMs?: number; force?: boolean } = {}): Promise<VmStatus> {
    return this.locks.run(name, async () => {
      const vm = this.vm(name);
      return vm.stop({ timeoutMs: opts.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS, force: opts.force === true });
    });
  }

  start(name: string): Promise<VmStatus> {
    return this.locks.run(name, async () => {
      const vm = this.vm(name);
      const st = await vm.status();
      if (st.state !== 'stopped')
        throw new FerryError('FERRY_E_VM_STATE', `VM ${name} is ${st.state}, not stopped.`);
      await this.admit(st.spec);
      // Taps are persistent, but a host reboot or a hand-deleted tap must not keep the VM down.
      await ensureTaps(st.spec, { bridge: this.opts.vmBridge });
      return vm.start();
    });
  }

  pause(name: string): Promise<VmStatus> {
    return this.locks.run(name, async () => {
      return this.vm(name).pause();
    });
  }

  resume(name: string): Promise<VmStatus> {
    return this.locks.run(name, async () => {
      const vm = this.vm(name);
      await assertNotHandedOver(vm);
      return vm.resume();
    });
  }

  destroy(name: string): Promise<void> {
    return this.locks.run(name, async () => {
      const vm = this.vm(name);
      const { spec } = await vm.status();
      await vm.destroy();
      this.vms.delete(name);
      await removeTaps(spec);
      this.log(`deleted VM ${name}`);
    });
  }

  async guest(name: string, command: string): Promise<unknown> {
    // Not under the VM's lock: a guest command must not wait behind a long stop, and the guest tool
    // serialises its own commands.
    const ch = await this.vm(name).guest();
    try {
      return await ch.command(command);
    } finally {
      await ch.close();
    }
  }

  async console(name: string, maxBytes: number): Promise<string> {
    return tailFile(runFiles(this.vm(name).runDir).serialLog, maxBytes);
  }

  async sharedDisks(name: string): Promise<SharedDiskFingerprint[]> {
    return fingerprintSharedDisks(this.vm(name).spec);
  }

  /** Not under the VM's lock: a measurement only reads, and must not hold up a stop meanwhile. */
  dirtyRate(name: string): Promise<DirtyRate> {
    return this.vm(name).dirtyRate();
  }

  // --- For the agent's other route sets (migration prepare/perform/finish/confirm): the same VM table,
  // --- the same per-VM lock and the same taps, since QMP serves one client and the agent holds it.

  get dataDir(): string {
    return this.opts.dataDir;
  }

  /** This host's name in the cluster (what its discard receipts say). */
  get name(): string {
    return this.opts.name;
  }

  get accel(): Accel {
    return this.qemu.accel;
  }

  get migrationAddress(): string {
    return this.opts.migrationAddress;
  }

  get migrationPorts(): MigrationPorts {
    return (this.ports ??= new MigrationPorts(this.opts.migrationPorts ?? null));
  }

  /** The handle of a VM of this host (FERRY_E_VM_NOT_FOUND otherwise). Use under `exclusive` to act on it. */
  handle(name: string): LocalVm {
    return this.vm(name);
  }

  /** Runs `fn` holding the VM's lock, with its handle, or undefined when this host has no VM of that name. */
  exclusive<T>(name: string, fn: (vm: LocalVm | undefined) => Promise<T>): Promise<T> {
    return this.locks.run(name, () => fn(this.vms.get(name)));
  }

  /** Takes a VM created elsewhere in the agent (an incoming migration) into the table; call under `exclusive`. */
  adopt(vm: LocalVm): void {
    if (this.vms.has(vm.name) && this.vms.get(vm.name) !== vm) {
      throw new FerryError('FERRY_E_VM_EXISTS', `VM ${vm.name} exists already on host ${this.opts.name}.`);
    }
    this.vms.set(vm.name, vm);
  }

  /** Drops a VM whose run dir is gone (source after confirm, failed destination); call under `exclusive`. */
  forget(name: string): void {
    this.vms.delete(name);
  }

  /** The spec's NIC taps, created and on the VM bridge (what LocalVm.create takes as `taps`). */
  ensureTaps(spec: VmSpec): Promise<Record<string, string>> {
    return ensureTaps(spec, { bridge: this.opts.vmBridge });
  }

  releaseTaps(spec: VmSpec): Promise<void> {
    return removeTaps(spec);
  }

  async close(): Promise<void> {
    for (const vm of this.vms.values()) await vm.detach().catch(() => undefined);
    this.vms.clear();
  }
}

/** The last `maxBytes` of a file, as text; an absent file is an empty console. */
export async function tailFile(path: string, maxBytes: number): Promise<string> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
  try {
    const { size } = await fh.stat();
    const start = Math.max(0, size - maxBytes);
    const buf = Buffer.alloc(size - start);
    const { bytesRead } = await fh.read(buf, 0, buf.length, start);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * A plain resume must not revive a source that handed its guest over: once its QEMU completed a migration
 * (or began post-copy) the destination may run the only true copy. Only confirm(false), against the
 * destination's signed discard receipt, may resume it (src/agent/migration/confirm.ts) — and a VM that was
 * resumed so is free again.
 */
async function assertNotHandedOver(vm: LocalVm): Promise<void> {
  if (vm.pid === null) return;
  const status = (await vm.qmp.execute('query-migrate')).status ?? 'none';
  if (status !== 'completed' && !status.startsWith('postcopy')) return;
  const inRun = await readFile(join(vm.runDir, RUN_DIR_RECORD), 'utf8').then((t) => JSON.parse(t) as { view?: { id?: string } }, () => null);
  const rec = inRun?.view?.id === undefined ? undefined : await loadRecord(vm.agentDir, inRun.view.id);
  if (rec === undefined) return; // a VM that arrived here by migration: its own QEMU's status is the incoming one
  if (rec.view.role === 'source' && rec.view.stage !== 'resumed') {
    throw new FerryError('FERRY_E_RECEIPT_REQUIRED', `VM ${vm.name} handed its guest over in migration ${rec.view.id} (${status}): it resumes here only against the destination's discard receipt (\`ferry vm resume\` asks for it).`);
  }
}
