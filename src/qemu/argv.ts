/**
 * QEMU's command line for one VM, built as a pure function of its VmSpec, the host's local paths and the
 * host's accelerator. Source and destination of a migration call this with the same spec, so their device
 * models match; the destination only adds `-S -incoming defer` (it waits, paused). Block nodes carry stable names
 * (`disk-<id>` for the file, `fmt-<id>` for the qcow2 layer) because mirror jobs and NBD exports refer to
 * them. Nothing here touches the file system, the environment or a shell.
 */
import { FerryError } from '../common/errors.ts';
import { APPEND_PATTERN, MIB, type VmSpec } from '../common/spec.ts';

export type Accel = 'kvm' | 'tcg';

/** Host-local paths of one VM: what differs between the source and the destination of a migration. */
export interface VmPaths {
  qmpSocket: string;
  /**
   * A second, read-only-by-convention QMP monitor for test tooling (the fault matrix's invariants ask every
   * QEMU `query-status` there): QEMU's QMP socket serves one client at a time and the agent holds it.
   */
  observeSocket: string;
  guestSocket: string;
  /** qemu-guest-agent's socket; required when spec.guestAgent. */
  qgaSocket?: string;
  serialLog: string;
  pidfile: string;
  /** Required when spec.boot.kind is `kernel`. */
  kernel?: string;
  initrd?: string;
  /** The cloud-init seed ISO; required when spec.cloudInit. */
  seed?: string;
  /** Absolute path of each disk's image, by disk id. */
  disks: Record<string, string>;
  /** Host tap interface of each NIC, by NIC id. */
  taps: Record<string, string>;
}

/** TLS credentials for the migration stream: a directory in QEMU's x509 layout, object id `tls0`. */
export interface TlsCreds {
  dir: string;
  endpoint: 'server' | 'client';
}

export interface HostArgs {
  accel: Accel;
  /** Start waiting for an incoming migration, address given later with `migrate-incoming`. */
  incoming?: 'defer';
  tlsCredsDir?: TlsCreds;
}

/** The QOM id of the migration TLS credentials object, for `migrate-set-parameters {tls-creds}`. */
export const TLS_CREDS_ID = 'tls0';
/** The virtio-serial port name `ferry-guest` opens inside the guest. */
export const GUEST_PORT_NAME = 'org.ferry.guest.0';
/** The virtio-serial port name qemu-guest-agent opens inside the guest (its default; Debian's unit uses it). */
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';

/** Block node names, stable across hosts (mirror, NBD export and `query-named-block-nodes` use them). */
export const fileNode = (diskId: string): string => `disk-${diskId}`;
export const formatNode = (diskId: string): string => `fmt-${diskId}`;
/** Block node of the cloud-init seed (read-only, outside the spec's disks). */
export const SEED_NODE = 'seed';

// Linux interface names: at most 15 bytes, no '/', no whitespace; we are stricter.
const TAP_RE = /^[A-Za-z0-9_.-]{1,15}$/;

/**
 * A value interpolated into a QEMU `key=value,...` option string. QEMU would read a comma as the start of
 * the next option (an attacker's `,file=/etc/shadow`), so commas are refused rather than escaped.
 */
function optValue(value: string | undefined, what: string): string {
  if (value === undefined || value === '') {
    throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: ${what} is missing.`);
  }
  // eslint-disable-next-line no-control-regex
  if (value.includes(',') || /[\u0000-\u001f\u007f]/.test(value)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: ${what} ${JSON.stringify(value)} has a comma or control character.`);
  }
  return value;
}

function absPath(value: string | undefined, what: string): string {
  const v = optValue(value, what);
  if (!v.startsWith('/')) throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: ${what} ${JSON.stringify(v)} is not absolute.`);
  return v;
}

/** The kernel command line the tiny guest understands: its name, its address, then the spec's extras. */
export function kernelCmdline(spec: VmSpec): string {
  const parts = ['console=ttyS0', 'quiet', 'panic=-1', `ferry.name=${spec.name}`];
  const ip = spec.nics.find((n) => n.ip !== undefined)?.ip;
  if (ip !== undefined) parts.push(`ferry.ip=${ip}`);
  if (spec.boot.kind === 'kernel' && spec.boot.cmdline !== undefined && spec.boot.cmdline.trim() !== '') {
    parts.push(spec.boot.cmdline.trim());
  }
  return parts.join(' ');
}

/** Builds the argv (without the program name) that starts QEMU for `spec` on this host. */
export function buildQemuArgv(spec: VmSpec, paths: VmPaths, host: HostArgs): string[] {
  if (host.accel !== 'kvm' && host.accel !== 'tcg') {
    throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: unknown accelerator ${JSON.stringify(host.accel)}.`);
  }
  if (spec.memoryBytes % MIB !== 0) {
    throw new FerryError('FERRY_E_BAD_SPEC', `Memory must be a whole number of MiB (got ${spec.memoryBytes} bytes).`);
  }
  const name = optValue(spec.name, 'VM name');
  const argv: string[] = [
    '-name', `${name},debug-threads=on`,
    '-machine', `${optValue(spec.machine, 'machine type')},accel=${host.accel}`,
    '-cpu', optValue(spec.cpuModel, 'CPU model'),
    '-m', `${spec.memoryBytes / MIB}M`,
    '-smp', String(spec.vcpus),
    '-nodefaults', '-nographic', '-no-user-config',
    '-qmp', `unix:${absPath(paths.qmpSocket, 'QMP socket')},server=on,wait=off`,
    '-chardev', `socket,id=qmpobs,path=${absPath(paths.observeSocket, 'observer QMP socket')},server=on,wait=off`,
    '-mon', 'chardev=qmpobs,mode=control',
    '-serial', `file:${absPath(paths.serialLog, 'serial log')}`,
    '-pidfile', absPath(paths.pidfile, 'pidfile'),
  ];

  if (spec.boot.kind === 'kernel') {
    argv.push(
      '-kernel', absPath(paths.kernel, 'kernel'),
      '-initrd', absPath(paths.initrd, 'initrd'),
      '-append', kernelCmdline(spec),
    );
  } else if (spec.boot.kind === 'direct') {
    if (!new RegExp(APPEND_PATTERN).test(spec.boot.append)) {
      throw new FerryError('FERRY_E_BAD_CMDLINE', `QEMU argv: kernel command line ${JSON.stringify(spec.boot.append)} has a character Ferry does not pass on.`);
    }
    argv.push('-kernel', absPath(spec.boot.kernel, 'kernel'));
    if (spec.boot.initrd !== undefined) argv.push('-initrd', absPath(spec.boot.initrd, 'initrd'));
    argv.push('-append', spec.boot.append);
  } else if (spec.disks.length === 0) {
    throw new FerryError('FERRY_E_BAD_SPEC', 'A VM that boots from disk needs a disk.');
  }

  spec.disks.forEach((disk, i) => {
    const id = optValue(disk.id, 'disk id');
    const file = absPath(paths.disks[disk.id], `path of disk ${id}`);
    const boot = spec.boot.kind === 'disk' && i === 0 ? ',bootindex=0' : '';
    argv.push(
      '-blockdev', `driver=file,node-name=${fileNode(id)},filename=${file}`,
      // No share-rw and no locking=off: QEMU's image locks keep a second process from writing the disk. A
      // migration's destination opens it inactive (-incoming) and takes the write lock only at switchover,
      // after the source let go (docs/qemu.md).
      '-blockdev', `driver=${disk.format ?? 'qcow2'},node-name=${formatNode(id)},file=${fileNode(id)}`,
      '-device', `virtio-blk-pci,id=${id},drive=${formatNode(id)}${boot}`,
    );
  });

  // The seed as a read-only CD on a virtio-scsi controller: the guest sees a CD-ROM, never a disk it could
  // write, and it is no disk of the spec (never mirrored). virtio, not q35's AHCI: cloud kernels (Debian's
  // linux-image-cloud-amd64 among them) have no AHCI driver, and every kernel that runs on QEMU has virtio.
  if (spec.cloudInit !== undefined) {
    argv.push(
      '-blockdev', `driver=file,node-name=${SEED_NODE}-file,filename=${absPath(paths.seed, 'seed ISO')},read-only=on`,
      '-blockdev', `driver=raw,node-name=${SEED_NODE},file=${SEED_NODE}-file,read-only=on`,
      '-device', 'virtio-scsi-pci,id=scsi0',
      '-device', `scsi-cd,id=seed0,drive=${SEED_NODE},bus=scsi0.0`,
    );
  }

  for (const nic of spec.nics) {
    const id = optValue(nic.id, 'NIC id');
    const tap = optValue(paths.taps[nic.id], `tap of NIC ${id}`);
    if (!TAP_RE.test(tap)) throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: bad tap name ${JSON.stringify(tap)}.`);
    argv.push(
      '-netdev', `tap,id=${id},ifname=${tap},script=no,downscript=no`,
      '-device', `virtio-net-pci,id=${id},netdev=${id},mac=${optValue(nic.mac, 'MAC')}`,
    );
  }

  // One virtio-serial controller carries both ports; a spec without either has none (the device list, and
  // so migration compatibility, depends on the spec alone).
  const ports: string[] = [];
  if (spec.guestChannel) {
    argv.push('-chardev', `socket,id=guest0,path=${absPath(paths.guestSocket, 'guest socket')},server=on,wait=off`);
    ports.push(`virtserialport,bus=vser0.0,chardev=guest0,name=${GUEST_PORT_NAME}`);
  }
  if (spec.guestAgent === true) {
    argv.push('-chardev', `socket,id=qga0,path=${absPath(paths.qgaSocket, 'guest agent socket')},server=on,wait=off`);
    ports.push(`virtserialport,bus=vser0.0,chardev=qga0,name=${QGA_PORT_NAME}`);
  }
  if (ports.length > 0) argv.push('-device', 'virtio-serial-pci,id=vser0', ...ports.flatMap((p) => ['-device', p]));

  if (host.tlsCredsDir !== undefined) {
    const { dir, endpoint } = host.tlsCredsDir;
    if (endpoint !== 'server' && endpoint !== 'client') {
      throw new FerryError('FERRY_E_BAD_INPUT', `QEMU argv: bad TLS endpoint ${JSON.stringify(endpoint)}.`);
    }
    // verify-peer on both ends: the server demands a client certificate signed by the cluster CA.
    argv.push('-object', `tls-creds-x509,id=${TLS_CREDS_ID},endpoint=${endpoint},dir=${absPath(dir, 'TLS dir')},verify-peer=on`);
  }

  // -S: the guest never runs by itself when the stream completes; only finish (`cont`) lets it run, after
  // the controller decided that this copy is the one. Without it a destination whose agent died would run
  // the guest while the source, believed to be the truth, resumed too.
  if (host.incoming === 'defer') argv.push('-S', '-incoming', 'defer');
  return argv;
}
