/**
 * The libvirt baseline of `ferry bench --with libvirt`: the same tiny guest image, on the same lab hosts and
 * over the same links as Ferry's VM, started and moved by libvirt 9.0 with `virsh migrate --live`. It owns
 * installing libvirt's Debian packages (never replacing the QEMU Ferry uses), one `libvirtd --listen` per
 * lab host namespace in a private mount namespace with its own config and state under the lab's directory,
 * the domain XML of the guest, `virsh domjobinfo` parsing, and tearing all of it down again.
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import { MIB, type VmSpec } from '../common/spec.ts';
import { qemuBinary } from '../qemu/accel.ts';
import { GUEST_PORT_NAME, kernelCmdline, type Accel } from '../qemu/argv.ts';
import { GuestChannel, type GuestReply } from '../guest/client.ts';
import { resolveImage } from '../guest/image.ts';
import { UdpProbe } from '../guest/udp-probe.ts';
import { untilGuestAnswers, type RawFigures, type RawHost } from './raw-qmp.ts';

const run = promisify(execFile);

/** The Debian packages the baseline needs: the daemon with its QEMU driver, virsh, and tini (a subreaper). */
export const LIBVIRT_PACKAGES = ['libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients', 'tini'] as const;
const LIBVIRT_BINARIES = ['/usr/sbin/libvirtd', '/usr/bin/virsh', '/usr/bin/tini'];
/** The domain's name on every host; Ferry's own VM is `bench1`, the raw-QMP guest `rawqmp1`. */
export const LIBVIRT_DOMAIN = 'libvirt1';
const TAP = 'lvtap0';
const MAC = '52:54:00:fb:00:02';

/**
 * Refuses an apt plan (`apt-get -s install …` output) that would remove, replace or change any QEMU package:
 * libvirt must drive the QEMU 10.0 from bookworm-backports that Ferry runs, never pull in Debian 12's 7.2.
 */
export function checkAptPlan(simulation: string): void {
  const touched = simulation
    .split('\n')
    .filter((l) => /^(Inst|Remv|Purg) qemu-(system|utils|block)/.test(l));
  if (touched.length > 0) {
    throw new FerryError(
      'FERRY_E_LIBVIRT_SETUP',
      `Installing libvirt would change Ferry's QEMU: ${touched.map((l) => l.trim()).join('; ')}. Nothing was installed.`,
    );
  }
}

/**
 * Makes sure libvirt can run here, installing what is missing (idempotent: nothing is installed when it
 * is there; the groups and user are created only if absent). Says on `log` what it does. Returns
 * libvirtd's version.
 */
export async function ensureLibvirt(log: (line: string) => void): Promise<string> {
  if (!LIBVIRT_BINARIES.every((b) => existsSync(b))) {
    log(`libvirt: installing ${LIBVIRT_PACKAGES.join(' ')} (apt-get update, then apt-get install --no-install-recommends)`);
    await run('apt-get', ['update', '-qq'], { maxBuffer: 16 * MIB }).catch((err: unknown) => {
      throw setupError('apt-get update failed', err);
    });
    const args = ['install', '-y', '--no-install-recommends', ...LIBVIRT_PACKAGES];
    const sim = await run('apt-get', ['-s', ...args], { maxBuffer: 16 * MIB }).catch((err: unknown) => {
      throw setupError('apt-get -s install failed', err);
    });
    checkAptPlan(sim.stdout);
    await run('apt-get', args, { maxBuffer: 64 * MIB, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).catch(
      (err: unknown) => {
        throw setupError('apt-get install failed', err);
      },
    );
  }
  // libvirtd 9.0 resolves its compiled-in default user and group before it reads qemu.conf.
  await run('groupadd', ['-f', 'kvm']);
  await run('groupadd', ['-f', 'libvirt-qemu']);
  if ((await run('getent', ['passwd', 'libvirt-qemu']).catch(() => null)) === null) {
    log('libvirt: adding the system user libvirt-qemu (group kvm), which libvirtd needs to exist');
    await run('useradd', ['-r', '-g', 'kvm', 'libvirt-qemu']);
  }
  const { stdout } = await run('libvirtd', ['--version']);
  const version = stdout.trim().split(/\s+/).pop() ?? 'unknown';
  log(`libvirt: libvirtd ${version}, driving ${onPath(qemuBinary())}`);
  return version;
}

function setupError(what: string, err: unknown): FerryError {
  const e = err as { stderr?: string; message?: string };
  return new FerryError('FERRY_E_LIBVIRT_SETUP', `libvirt: ${what}: ${(e.stderr || e.message || String(err)).trim()}`, {
    cause: err,
  });
}

/** libvirtd.conf of one lab host: plain TCP without auth (the lab's own namespaces only), its own host UUID. */
export function libvirtdConf(hostUuid: string): string {
  return [
    'listen_tls = 0',
    'listen_tcp = 1',
    'auth_tcp = "none"',
    // libvirt refuses to migrate between two hosts with the same UUID, and both read the same SMBIOS.
    `host_uuid = "${hostUuid}"`,
    'log_outputs = "3:stderr"',
    '',
  ].join('\n');
}

/** qemu.conf for running as root without cgroups, namespaces, virtlogd or a security driver. */
export function qemuConf(): string {
  return [
    'user = "root"',
    'group = "root"',
    'dynamic_ownership = 0',
    'remember_owner = 0',
    'security_driver = "none"',
    'cgroup_controllers = [ ]',
    'namespaces = [ ]',
    'stdio_handler = "file"',
    '',
  ].join('\n');
}

const xmlEscape = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

export interface DomainXmlInput {
  /** Ferry's bench VM spec: machine, CPU model, memory, vCPUs and image are taken from it. */
  spec: VmSpec;
  accel: Accel;
  kernel: string;
  initrd: string;
  /** The domain's UUID: the same on every host (libvirt checks it against the source's). */
  uuid: string;
  /** Absolute path of the QEMU binary Ferry runs (libvirt wants a path, not a name). */
  emulator: string;
  /** This host's paths: the guest channel's socket and the serial log. */
  guestSocket: string;
  serialLog: string;
  ipCidr: string;
}

/**
 * The domain XML of the baseline guest: what Ferry's argv gives its VM (same machine, CPU model, memory,
 * kernel, initrd and command line, a virtio-net NIC on a tap of the lab's VM bridge, the guest tool's
 * virtio-serial port), and no more: no balloon, no USB, no graphics. Per host, as only the paths differ.
 */
export function domainXml(d: DomainXmlInput): string {
  const spec = { ...d.spec, name: LIBVIRT_DOMAIN, nics: [{ id: 'net0', mac: MAC, network: 'vm', ip: d.ipCidr }] };
  return `<domain type='${d.accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${LIBVIRT_DOMAIN}</name>
  <uuid>${xmlEscape(d.uuid)}</uuid>
  <memory unit='MiB'>${d.spec.memoryBytes / MIB}</memory>
  <vcpu>${d.spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='${xmlEscape(d.spec.machine)}'>hvm</type>
    <kernel>${xmlEscape(d.kernel)}</kernel>
    <initrd>${xmlEscape(d.initrd)}</initrd>
    <cmdline>${xmlEscape(kernelCmdline(spec))}</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>${xmlEscape(d.spec.cpuModel)}</model>
  </cpu>
  <!-- Without <acpi/> libvirt 9.0 passes -no-acpi, an option QEMU 10 no longer has (and Ferry's VMs have ACPI). -->
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>${xmlEscape(d.emulator)}</emulator>
    <controller type='usb' model='none'/>
    <interface type='ethernet'>
      <mac address='${MAC}'/>
      <target dev='${TAP}' managed='no'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='${xmlEscape(d.serialLog)}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='${xmlEscape(d.guestSocket)}'/>
      <target type='virtio' name='${GUEST_PORT_NAME}'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

export interface JobInfo {
  /** `Time elapsed`: QEMU's total time of the migration. */
  elapsedMs: number | null;
  downtimeMs: number | null;
  /** `Memory processed`, in bytes. */
  memoryBytes: number | null;
  /** `Data processed` (memory and anything else sent), in bytes. */
  dataBytes: number | null;
  iterations: number | null;
}

const UNIT: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

/** Reads `virsh domjobinfo --completed` (the human form of libvirt 9.0: `Key:   value unit`). */
export function parseDomjobinfo(text: string): JobInfo {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z][A-Za-z /-]*?):\s+(.+)$/.exec(line.trim());
    if (m) fields.set(m[1]!.toLowerCase(), m[2]!.trim());
  }
  const ms = (key: string): number | null => {
    const m = /^(\d+)\s*ms$/.exec(fields.get(key) ?? '');
    return m ? Number(m[1]) : null;
  };
  const bytes = (key: string): number | null => {
    const m = /^([\d.]+)\s*(B|KiB|MiB|GiB|TiB)$/.exec(fields.get(key) ?? '');
    return m ? Math.round(Number(m[1]) * UNIT[m[2]!]!) : null;
  };
  const iter = /^(\d+)$/.exec(fields.get('iteration') ?? '');
  return {
    elapsedMs: ms('time elapsed'),
    downtimeMs: ms('total downtime'),
    memoryBytes: bytes('memory processed'),
    dataBytes: bytes('data processed'),
    iterations: iter ? Number(iter[1]) : null,
  };
}

export interface LibvirtLabHost extends RawHost {
  vmBridge: string;
}

interface Daemon {
  host: LibvirtLabHost;
  /** tini's PID (it execs in place of `ip netns exec`, unshare and sh); libvirtd is its child. */
  pid: number;
  dir: string;
  uri: string;
}

/** Runs on every lab host: the script that gives libvirtd its private dirs before it starts, through tini. */
const MOUNT_SCRIPT =
  'set -e; mkdir -p /run/libvirt /var/lib/libvirt /etc/libvirt; ' +
  'mount --bind "$1" /run/libvirt; mount --bind "$2" /var/lib/libvirt; mount --bind "$3" /etc/libvirt; ' +
  'shift 3; exec "$@"';

export class LibvirtBaseline {
  readonly #dir: string;
  readonly #spec: VmSpec;
  readonly #accel: Accel;
  readonly #ip: string;
  readonly #ipCidr: string;
  #daemons: Daemon[] = [];
  #current: Daemon | null = null;
  #port = 49_500 + Math.floor(Math.random() * 400);
  #image: { kernel: string; initrd: string } | null = null;
  #emulator = '';
  readonly #uuid = randomUUID();

  constructor(opts: { dir: string; ferrySpec: VmSpec; accel: Accel; ipCidr: string }) {
    this.#dir = opts.dir;
    this.#spec = opts.ferrySpec;
    this.#accel = opts.accel;
    this.#ipCidr = opts.ipCidr;
    this.#ip = opts.ipCidr.split('/')[0]!;
  }

  get host(): string | null {
    return this.#current?.host.name ?? null;
  }

  /** Starts one libvirtd per host (in its namespace, private mounts) and the tap on each VM bridge. */
  async start(hosts: readonly LibvirtLabHost[]): Promise<void> {
    this.#image = this.#spec.boot.kind === 'kernel' ? await resolveImage(this.#spec.boot.image) : null;
    if (this.#image === null) throw new FerryError('FERRY_E_INTERNAL', 'The libvirt baseline boots the tiny guest only.');
    this.#emulator = onPath(qemuBinary());
    for (const h of hosts) {
      await run('ip', ['-n', h.namespace, 'tuntap', 'add', TAP, 'mode', 'tap']).catch(() => undefined);
      await run('ip', ['-n', h.namespace, 'link', 'set', TAP, 'master', h.vmBridge]);
      await run('ip', ['-n', h.namespace, 'link', 'set', TAP, 'up']);
      const dir = join(this.#dir, h.name);
      const [runDir, libDir, etcDir] = ['run', 'lib', 'etc'].map((d) => join(dir, d));
      for (const d of [runDir!, libDir!, etcDir!]) mkdirSync(d, { recursive: true, mode: 0o700 });
      writeFileSync(join(etcDir!, 'libvirtd.conf'), libvirtdConf(randomUUID()));
      writeFileSync(join(etcDir!, 'qemu.conf'), qemuConf());
      const logFd = openSync(join(dir, 'libvirtd.log'), 'a', 0o600);
      // tini -s: QEMU processes libvirt daemonizes are reparented to it and reaped at once; libvirt waits
      // for a quit QEMU to vanish from /proc, and an unreaped zombie would add seconds to every migration.
      const child = spawn(
        'ip',
        ['netns', 'exec', h.namespace, 'unshare', '-m', '--propagation', 'private', 'sh', '-c', MOUNT_SCRIPT, 'sh',
          runDir!, libDir!, etcDir!, 'tini', '-s', '--', 'libvirtd', '--listen', '-p', join(dir, 'libvirtd.pid')],
        { detached: true, stdio: ['ignore', logFd, logFd] },
      );
      closeSync(logFd);
      child.unref();
      if (child.pid === undefined) throw new FerryError('FERRY_E_LIBVIRT_SETUP', `libvirtd did not start on ${h.name}.`);
      const daemon = { host: h, pid: child.pid, dir, uri: `qemu+tcp://${h.address}/system` };
      this.#daemons.push(daemon);
      await this.#waitReady(daemon);
    }
  }

  async #waitReady(d: Daemon): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        await run('virsh', ['-c', d.uri, 'version'], { timeout: 10_000 });
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          const tail = readFileSync(join(d.dir, 'libvirtd.log'), 'utf8').split('\n').slice(-5).join(' / ');
          throw setupError(`libvirtd on ${d.host.name} did not answer at ${d.uri} in 30 s (${tail})`, err);
        }
        await sleep(300);
      }
    }
  }

  #xmlFor(d: Daemon): string {
    const file = join(d.dir, 'domain.xml');
    writeFileSync(
      file,
      domainXml({
        spec: this.#spec,
        accel: this.#accel,
        kernel: this.#image!.kernel,
        initrd: this.#image!.initrd,
        guestSocket: join(d.dir, 'guest.sock'),
        serialLog: join(d.dir, 'serial.log'),
        ipCidr: this.#ipCidr,
        emulator: this.#emulator,
        uuid: this.#uuid,
      }),
    );
    return file;
  }

  #daemon(host: string): Daemon {
    const d = this.#daemons.find((x) => x.host.name === host);
    if (d === undefined) throw new FerryError('FERRY_E_INTERNAL', `No libvirtd on ${host}.`);
    return d;
  }

  /** `virsh create` (a transient domain) on `host`, then waits until the guest tool answers. */
  async boot(host: string): Promise<void> {
    const d = this.#daemon(host);
    await virsh(d.uri, ['create', this.#xmlFor(d)]);
    this.#current = d;
    await untilGuestAnswers((line) => this.command(line));
  }

  async command(line: string, timeoutMs = 30_000): Promise<GuestReply> {
    if (this.#current === null) throw new FerryError('FERRY_E_INTERNAL', 'libvirt guest not booted.');
    const ch = await GuestChannel.connect(join(this.#current.dir, 'guest.sock'), { timeoutMs: 5000 });
    try {
      return await ch.command(line, { timeoutMs, raw: true });
    } finally {
      await ch.close();
    }
  }

  /**
   * One `virsh migrate --live` to `to`, with libvirt's defaults, over the lab's migration address; timed
   * end to end around the virsh command, QEMU's figures from `domjobinfo --completed` on the destination.
   */
  async migrate(to: string): Promise<RawFigures> {
    const src = this.#current;
    if (src === null) throw new FerryError('FERRY_E_INTERNAL', 'libvirt guest not booted.');
    const dst = this.#daemon(to);
    const xml = this.#xmlFor(dst);
    const probe = new UdpProbe({ ip: this.#ip });
    await probe.start();
    try {
      const t0 = performance.now();
      await virsh(src.uri, ['migrate', '--live', '--xml', xml, LIBVIRT_DOMAIN, dst.uri,
        '--migrateuri', `tcp://${dst.host.address}:${this.#port++}`], 180_000, 'FERRY_E_MIGRATION_FAILED');
      const totalMs = Math.round(performance.now() - t0);
      this.#current = dst;
      const job = parseDomjobinfo(await virsh(dst.uri, ['domjobinfo', LIBVIRT_DOMAIN, '--completed']));
      // As for the raw-QMP guest: let the probe see the guest answer from its new host before stopping it.
      await sleep(300);
      const report = await probe.stop();
      return {
        totalMs,
        qemuTotalMs: job.elapsedMs,
        downtimeMs: job.downtimeMs,
        guestDowntimeMs: report.longestGapMs,
        transferredBytes: job.dataBytes ?? job.memoryBytes,
        iterations: job.iterations,
      };
    } catch (err) {
      await probe.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Destroys the domain, stops the libvirtd processes it started (by PID), removes taps and files. */
  async close(): Promise<void> {
    for (const d of this.#daemons) {
      await virsh(d.uri, ['destroy', LIBVIRT_DOMAIN], 15_000).catch(() => undefined);
      // A QEMU libvirt could not destroy (its daemon wedged): its pidfile says which process is ours.
      // Only when that process still is this domain's QEMU (its -uuid): a stale pidfile's PID may be reused.
      const qemuPid = Number(readFileSafe(join(d.dir, 'run', 'qemu', `${LIBVIRT_DOMAIN}.pid`)));
      if (Number.isInteger(qemuPid) && qemuPid > 1 && readFileSafe(`/proc/${qemuPid}/cmdline`).split('\0').includes(this.#uuid)) {
        kill(qemuPid, 'SIGKILL');
      }
      kill(d.pid, 'SIGTERM');
    }
    for (const d of this.#daemons) {
      const deadline = Date.now() + 10_000;
      while (alive(d.pid) && Date.now() < deadline) await sleep(100);
      if (alive(d.pid)) kill(d.pid, 'SIGKILL');
      await run('ip', ['-n', d.host.namespace, 'link', 'del', TAP]).catch(() => undefined);
    }
    this.#daemons = [];
    this.#current = null;
    await rm(this.#dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function virsh(
  uri: string,
  args: string[],
  timeoutMs = 60_000,
  code: 'FERRY_E_LIBVIRT_SETUP' | 'FERRY_E_MIGRATION_FAILED' = 'FERRY_E_LIBVIRT_SETUP',
): Promise<string> {
  try {
    const { stdout } = await run('virsh', ['-q', '-c', uri, ...args], { timeout: timeoutMs, maxBuffer: 4 * MIB });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    throw new FerryError(code, `virsh ${args[0]}: ${(e.stderr || e.message || '').trim()}`, {
      cause: err,
    });
  }
}

/** The absolute path of `bin` as a shell would find it on PATH. */
function onPath(bin: string): string {
  if (bin.startsWith('/')) return bin;
  for (const dir of (process.env['PATH'] ?? '/usr/bin').split(':')) {
    if (dir !== '' && existsSync(join(dir, bin))) return join(dir, bin);
  }
  throw new FerryError('FERRY_E_LIBVIRT_SETUP', `libvirt: ${bin} is not on PATH.`);
}

function readFileSafe(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return '';
  }
}

function kill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone already */
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
