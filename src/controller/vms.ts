/**
 * VM lifecycle as the controller orchestrates it: create (validate, reserve the name, place, allocate a
 * MAC and an address, build the spec, ask the agent, record the result — or undo everything), start,
 * stop, delete, and pass-throughs to the agent (guest commands, console). Every change is published.
 */
import type { VmJson } from '../common/api.ts';
import { createHash, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import type { VmStatus } from '../common/protocol.ts';
import { APPEND_PATTERN, DEFAULT_CPU_MODEL, DEFAULT_MACHINE, defaultVmSpec, MAX_USER_DATA_BYTES, parseCloudInit, parseVmSpec, type BootSpec, type CloudInitSpec, type DiskSpec, type Evacuation, type NicSpec, type VmSpec } from '../common/spec.ts';
import { parseDuration, parseSize, validateName } from '../common/units.ts';
import { inspectDiskImage } from '../guest/disk-image.ts';
import type { AgentPool } from './agent-client.ts';
import type { EventBus } from './events.ts';
import type { ImageService } from './images.ts';
import type { VmGuard } from './guard.ts';
import { hostViews, vmLoads } from './hosts.ts';
import { allocateIp, getNetwork } from './networks.ts';
import { placeVm, type Judgement } from './scheduler.ts';
import type { HostsTable, Store, VmsTable } from './store/db.ts';
import { VmRows } from './store/vms.ts';
import { NO_LIMIT } from './store/sync.ts';

export interface CreateVmRequest {
  name: string;
  memory?: string | number;
  vcpus?: number;
  host?: string;
  disk?: string | number;
  image?: string;
  network?: string;
  /** Boot from this disk (qcow2 or raw, seen at the same path by the controller and every host) under a VM overlay. */
  diskImage?: string;
  /**
   * The disk image is shared storage: the VM's disk is that file itself (no overlay), written by the guest,
   * never copied by a migration. With a kernel image (`image: tiny`) it is the guest's data disk.
   */
  shared?: boolean;
  /** Direct kernel boot: the kernel, an initrd and the command line (validated, never through a shell). */
  kernel?: string;
  initrd?: string;
  append?: string;
  /** Reserve this address (`A.B.C.D/LEN`) on the VM network instead of the next free one. */
  ip?: string;
  /** A qemu-guest-agent port; default true with diskImage. */
  guestAgent?: boolean;
  /** How far a drain may go to move it; absent: live only. */
  evacuation?: Evacuation;
  /** A cloud-init NoCloud seed; implied by hostname, sshKeys or userData. */
  cloudInit?: boolean;
  hostname?: string;
  /** SSH public keys (the lines of an authorized_keys file). */
  sshKeys?: string[];
  /** user-data, verbatim (at most 1 MiB). */
  userData?: string;
  /** Wait until the guest answers; default: true for the tiny guest only. A guest that does not answer in time still runs. */
  waitReady?: boolean;
  readyTimeout?: string | number;
}

export const DEFAULT_READY_TIMEOUT_MS = 60_000;
const MAX_READY_TIMEOUT_MS = 30 * 60_000;

export interface VmServiceOptions {
  store: Store;
  events: EventBus;
  pool: AgentPool;
  guard: VmGuard;
  /** The image store `image: NAME` resolves in (absent in tests that need none). */
  images?: ImageService;
  /** Network a VM joins when the request names none (when it is configured). */
  defaultNetwork?: string;
}

export function vmJson(r: VmsTable): VmJson {
  return {
    name: r.name,
    host: r.host,
    state: r.state as VmJson['state'],
    spec: JSON.parse(r.spec) as VmSpec,
    bootId: r.boot_id,
    ready: r.ready === 1,
    ip: r.ip,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

/** 52:54:00:xx:xx:xx from a hash of the name and a counter, bumped past MACs already in use. */
export function macFor(name: string, used: ReadonlySet<string>): string {
  for (let counter = 0; counter < 1000; counter++) {
    const h = createHash('sha256').update(`${name}:${counter}`).digest();
    const mac = `52:54:00:${[h[0]!, h[1]!, h[2]!].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
    if (!used.has(mac)) return mac;
  }
  throw new FerryError('FERRY_E_INTERNAL', `No free MAC address for ${name}.`);
}

/**
 * A disk on shared storage: the file itself, in the format qemu-img said, at the size it has. Every host
 * sees it at that path; migrations never copy it, and a destination that does not see it is refused.
 */
function sharedDisk(base: { backing: NonNullable<DiskSpec['backing']>; virtualSizeBytes: number }): DiskSpec {
  // checkSharedRequest allows --shared with --disk-image only: a file by path, never a store image.
  if (!('path' in base.backing)) throw new FerryError('FERRY_E_USAGE', '--shared goes with --disk-image FILE, not with a stored image.');
  return { id: 'vda', sizeBytes: base.virtualSizeBytes, shared: true, path: base.backing.path, format: base.backing.format };
}

/** What `shared` goes with: a disk image of the user's own, at the size it has. */
function checkSharedRequest(req: CreateVmRequest): void {
  if (req.diskImage === undefined)
    throw new FerryError(
      'FERRY_E_USAGE',
      '--shared says that the --disk-image file is on shared storage: give --disk-image.',
    );
  if (req.disk !== undefined)
    throw new FerryError(
      'FERRY_E_USAGE',
      '--disk cannot go with --shared: a shared disk is the file as it is, never grown by Ferry.',
    );
}

/**
 * `tiny`, or an absolute directory that holds `vmlinuz` and `initramfs.gz` as the agent's resolveImage
 * wants it. Checked here, before anything is reserved, so that a wrong path is the caller's 4xx rather than
 * the agent's failure halfway through a create. Image directories are seen by the controller as by the
 * agents (one machine in a lab, shared storage in a cluster).
 */
export function checkImage(image: string): string {
  if (image === 'tiny') return image;
  const bad = (why: string, cause?: unknown): FerryError =>
    new FerryError(
      'FERRY_E_BAD_IMAGE',
      `Bad image ${JSON.stringify(image)}: ${why}; use \`tiny\` or an absolute directory holding vmlinuz and initramfs.gz.`,
      {
        ...(cause === undefined ? {} : { cause }),
      },
    );
  if (!isAbsolute(image) || image.length > 4096 || image.includes('\0')) throw bad('not an absolute path');
  // `..` would let the path mean something else on the agent than what was checked here.
  if (image.split('/').some((seg) => seg === '.' || seg === '..')) throw bad('no . or .. segments');
  let dir;
  try {
    dir = statSync(image);
  } catch (err) {
    throw bad('no such directory', err);
  }
  if (!dir.isDirectory()) throw bad('not a directory');
  for (const file of ['vmlinuz', 'initramfs.gz']) {
    let st;
    try {
      st = statSync(join(image, file));
    } catch (err) {
      throw bad(`no ${file} in it`, err);
    }
    if (!st.isFile()) throw bad(`${file} is not a file`);
  }
  return image;
}

export class VmService {
  private readonly rows: VmRows;
  constructor(private readonly o: VmServiceOptions) {
    this.rows = new VmRows(o.store.sql);
  }

  /** By name; a page when `limit` is given (names after `after`). */
  list(page: { limit?: number; after?: string } = {}): VmJson[] {
    const rows = this.o.store.sql
      .prepare('SELECT * FROM vms WHERE name > ? ORDER BY name LIMIT ?')
      .all(page.after ?? '', page.limit ?? NO_LIMIT) as VmsTable[];
    return rows.map(vmJson);
  }

  get(name: string): VmJson {
    return vmJson(this.row(name));
  }

  private row(name: string): VmsTable {
    const r = this.o.store.sql.prepare('SELECT * FROM vms WHERE name = ?').get(name) as
      VmsTable | undefined;
    if (!r)
      throw new FerryError(
        'FERRY_E_VM_NOT_FOUND',
        `No VM named ${JSON.stringify(name)}: see \`ferry vm list\`.`,
      );
    return r;
  }

  private agentFor(r: VmsTable) {
    const h = this.o.store.sql.prepare('SELECT * FROM hosts WHERE name = ?').get(r.host) as
      HostsTable | undefined;
    if (!h)
      throw new FerryError(
        'FERRY_E_HOST_NOT_FOUND',
        `VM ${r.name} is on host ${r.host}, which is not registered.`,
      );
    return this.o.pool.client(h.name, h.url);
  }

  private networkNames(): string {
    const names = (
      this.o.store.sql.prepare('SELECT name FROM networks ORDER BY name').all() as { name: string }[]
    ).map((r) => r.name);
    return names.length === 0 ? 'none (ferry server --vm-network NAME=CIDR adds one)' : names.join(', ');
  }

  /** Parses and checks a create request; everything that can be refused before touching the store. */
  private async parseRequest(req: CreateVmRequest) {
    const name = validateName(req.name, 'VM name');
    const memoryBytes = req.memory === undefined ? 256 * 1024 * 1024 : parseSize(req.memory, 'memory');
    const vcpus = req.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 64)
      throw new FerryError('FERRY_E_BAD_INPUT', `Bad vcpus ${vcpus}: 1 to 64.`);
    const diskBytes = req.disk === undefined ? undefined : parseSize(req.disk, 'disk');
    const shared = req.shared === true;
    if (shared) checkSharedRequest(req);
    // A shared disk may be a kernel image's data disk; any other disk image is what the VM boots.
    if (req.diskImage !== undefined && req.image !== undefined && !shared) {
      throw new FerryError(
        'FERRY_E_USAGE',
        'Give either an image (kernel + initramfs) or a disk image to boot from, not both.',
      );
    }
    // An image name (not `tiny`, not a directory) is a disk image of the store, booted under an overlay.
    const stored =
      req.image !== undefined && req.image !== 'tiny' && !req.image.startsWith('/') ? req.image : undefined;
    if (shared && stored !== undefined)
      throw new FerryError(
        'FERRY_E_USAGE',
        `--shared goes with a kernel image (tiny or a directory), not the stored disk image ${stored}.`,
      );
    const image = stored === undefined ? checkImage(req.image ?? 'tiny') : 'tiny';
    let base: { backing: NonNullable<DiskSpec['backing']>; virtualSizeBytes: number } | undefined;
    if (stored !== undefined) {
      validateName(stored, 'image name');
      if (!this.o.images)
        throw new FerryError('FERRY_E_IMAGE_NOT_FOUND', `No image store here to find ${stored} in.`);
      base = this.o.images.resolve(stored);
    }
    if (req.diskImage !== undefined) {
      const path = req.diskImage;
      if (path.split('/').some((seg) => seg === '.' || seg === '..'))
        throw new FerryError(
          'FERRY_E_BAD_IMAGE',
          `Bad disk image ${JSON.stringify(path)}: no . or .. segments.`,
        );
      let st;
      try {
        st = statSync(path);
      } catch (err) {
        throw new FerryError('FERRY_E_BAD_IMAGE', `No disk image at ${path}.`, { cause: err });
      }
      // Never let qemu-img read a FIFO or a character device (it would wait for ever on /dev/random).
      if (!st.isFile() && !st.isBlockDevice())
        throw new FerryError('FERRY_E_BAD_IMAGE', `${path} is not a file or a block device.`);
      // Before anything is reserved: a vmdk or a text file named disk.qcow2 is the caller's 4xx.
      const info = await inspectDiskImage(path);
      base = { backing: { path, format: info.format }, virtualSizeBytes: info.virtualSizeBytes };
    }
    if (base !== undefined) {
      if (diskBytes !== undefined && diskBytes < base.virtualSizeBytes) {
        throw new FerryError(
          'FERRY_E_BAD_SIZE',
          `--disk ${diskBytes} bytes is smaller than the image (${base.virtualSizeBytes} bytes): an overlay can grow a disk, never shrink it.`,
        );
      }
    }
    if (req.host !== undefined) validateName(req.host, 'host name');
    let network = req.network;
    if (network !== undefined) {
      validateName(network, 'network name');
      // A NIC on a network the controller does not manage would get no address and a bridge no agent has.
      if (!getNetwork(this.o.store.sql, network)) {
        throw new FerryError(
          'FERRY_E_NETWORK_NOT_FOUND',
          `No VM network named ${JSON.stringify(network)}: the server has ${this.networkNames()}.`,
        );
      }
    } else if (this.o.defaultNetwork && getNetwork(this.o.store.sql, this.o.defaultNetwork))
      network = this.o.defaultNetwork;
    // The tiny guest answers ~2 s after QEMU starts, and clients have always got its boot id from create; any
    // other guest may take a minute or never answer, and is a running VM either way.
    let direct: Extract<BootSpec, { kind: 'direct' }> | undefined;
    if (req.kernel !== undefined) {
      // A stored image may be the root disk of a kernel (a bare filesystem); `tiny` or a directory may not.
      if (req.image !== undefined && stored === undefined)
        throw new FerryError(
          'FERRY_E_USAGE',
          'Give either a kernel image (tiny or a directory) or a kernel to boot, not both (the root disk of a kernel is --disk-image or an imported image).',
        );
      const file = (f: string, what: string): string => {
        if (
          !f.startsWith('/') ||
          !/^\/[A-Za-z0-9._/-]+$/.test(f) ||
          f.split('/').some((s) => s === '.' || s === '..')
        ) {
          throw new FerryError(
            'FERRY_E_BAD_BOOT',
            `Bad ${what} ${JSON.stringify(f)}: an absolute path of letters, digits and . _ / -.`,
          );
        }
        let st;
        try {
          st = statSync(f);
        } catch (err) {
          throw new FerryError('FERRY_E_BAD_BOOT', `No ${what} at ${f}.`, { cause: err });
        }
        if (!st.isFile()) throw new FerryError('FERRY_E_BAD_BOOT', `The ${what} ${f} is not a file.`);
        return f;
      };
      const append = req.append ?? 'console=ttyS0';
      if (!new RegExp(APPEND_PATTERN).test(append)) {
        throw new FerryError(
          'FERRY_E_BAD_CMDLINE',
          `Bad --append ${JSON.stringify(append)}: letters, digits, spaces and . _ = , : / + @ - only (no quotes, ; $ or backslash).`,
        );
      }
      direct = {
        kind: 'direct',
        kernel: file(req.kernel, 'kernel'),
        ...(req.initrd === undefined ? {} : { initrd: file(req.initrd, 'initrd') }),
        append,
      };
    } else if (req.initrd !== undefined || req.append !== undefined) {
      throw new FerryError('FERRY_E_USAGE', '--initrd and --append go with --kernel.');
    }
    if (req.ip !== undefined && network === undefined)
      throw new FerryError('FERRY_E_USAGE', '--ip needs a VM network (--net).');
    // A shared disk under the tiny guest is a data disk: the tiny guest still answers in seconds.
    const sharedData = shared && req.image !== undefined;
    const waitReady =
      req.waitReady ?? (image === 'tiny' && (base === undefined || sharedData) && direct === undefined);
    const readyTimeoutMs =
      req.readyTimeout === undefined
        ? DEFAULT_READY_TIMEOUT_MS
        : parseDuration(req.readyTimeout, 'ready timeout');
    if (readyTimeoutMs < 1 || readyTimeoutMs > MAX_READY_TIMEOUT_MS) {
      throw new FerryError('FERRY_E_BAD_DURATION', `Bad ready timeout ${readyTimeoutMs} ms: 1 ms to 30 min.`);
    }
    const guestAgent = req.guestAgent ?? ((base !== undefined && !sharedData) || direct !== undefined);
    const cloudInit = this.cloudInitOf(req, name, network);
    return {
      cloudInit,
      name,
      memoryBytes,
      vcpus,
      diskBytes,
      image,
      base,
      shared,
      sharedData,
      direct,
      guestAgent,
      ip: req.ip,
      network,
      host: req.host,
      waitReady,
      readyTimeoutMs,
    };
  }

  /** The seed a create asks for (validated), or undefined. The instance id is fixed here, once per VM. */
  private cloudInitOf(req: CreateVmRequest, name: string, network: string | undefined): CloudInitSpec | undefined {
    const asked = req.cloudInit ?? (req.hostname !== undefined || req.sshKeys !== undefined || req.userData !== undefined);
    if (!asked) return undefined;
    if (req.cloudInit === false) throw new FerryError('FERRY_E_USAGE', 'hostname, sshKeys and userData go in a cloud-init seed: drop cloudInit: false.');
    const userData = req.userData;
    if (userData !== undefined && Buffer.byteLength(userData) > MAX_USER_DATA_BYTES) {
      throw new FerryError('FERRY_E_USER_DATA_TOO_LARGE', `The user-data is ${Buffer.byteLength(userData)} bytes; cloud-init seeds take at most ${MAX_USER_DATA_BYTES} (1 MiB).`);
    }
    const keys = (req.sshKeys ?? []).map((k) => k.trim()).filter((k) => k !== '' && !k.startsWith('#'));
    for (const k of keys) {
      if (!/^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\r\n]*)?$/.test(k)) {
        throw new FerryError('FERRY_E_BAD_SSH_KEY', `Not an SSH public key: ${JSON.stringify(k.slice(0, 40))}…`);
      }
    }
    const gateway = network === undefined ? undefined : getNetwork(this.o.store.sql, network)?.gateway;
    return parseCloudInit({
      instanceId: `${name}-${randomBytes(4).toString('hex')}`,
      hostname: validateName(req.hostname ?? name, 'hostname'),
      sshAuthorizedKeys: keys,
      ...(userData === undefined ? {} : { userData }),
      ...(gateway === undefined ? {} : { gateway }),
    });
  }

  async create(req: CreateVmRequest): Promise<VmJson & { placement: Judgement[] }> {
    const p = await this.parseRequest(req);
    const { store, events } = this.o;
    // Reserve the name, place, and allocate in one synchronous transaction: two creates racing for the
    // same name, address or last bit of a host's memory cannot both win.
    const reserved = store.sql.transaction(() => {
      if (store.sql.prepare('SELECT 1 FROM vms WHERE name = ?').get(p.name)) {
        throw new FerryError(
          'FERRY_E_VM_EXISTS',
          `A VM named ${p.name} exists already: choose another name or delete it.`,
        );
      }
      const placement = placeVm(
        { memoryBytes: p.memoryBytes, vcpus: p.vcpus, host: p.host, machine: DEFAULT_MACHINE, cpuModel: DEFAULT_CPU_MODEL },
        hostViews(store),
        vmLoads(store),
      );
      this.rows.reserve(p.name, placement.host, { memoryBytes: p.memoryBytes, vcpus: p.vcpus });
      const nics: NicSpec[] = [];
      let ip: string | null = null;
      if (p.network !== undefined) {
        const used = new Set(
          (store.sql.prepare('SELECT spec FROM vms').all() as { spec: string }[]).flatMap((r) =>
            ((JSON.parse(r.spec) as Partial<VmSpec>).nics ?? []).map((n) => n.mac),
          ),
        );
        const nic: NicSpec = { id: 'net0', mac: macFor(p.name, used), network: p.network };
        if (getNetwork(store.sql, p.network)) {
          nic.ip = allocateIp(store.sql, p.network, p.name, p.ip);
          ip = nic.ip.split('/')[0]!;
        }
        nics.push(nic);
      }
      const spec0 = p.sharedData
        ? defaultVmSpec(p.name, {
            memoryBytes: p.memoryBytes,
            vcpus: p.vcpus,
            boot: { kind: 'kernel', image: p.image },
            disks: [sharedDisk(p.base!)],
            nics,
            ...(p.guestAgent ? { guestAgent: true } : {}),
          })
        : p.direct
          ? defaultVmSpec(p.name, {
              memoryBytes: p.memoryBytes,
              vcpus: p.vcpus,
              boot: p.direct,
              disks: p.base
                ? [
                    p.shared
                      ? sharedDisk(p.base)
                      : {
                          id: 'vda',
                          sizeBytes: p.diskBytes ?? p.base.virtualSizeBytes,
                          shared: false,
                          backing: p.base.backing,
                        },
                  ]
                : p.diskBytes === undefined
                  ? []
                  : [{ id: 'vda', sizeBytes: p.diskBytes, shared: false }],
              nics,
              guestChannel: false,
              guestAgent: p.guestAgent,
            })
          : p.base
            ? defaultVmSpec(p.name, {
                memoryBytes: p.memoryBytes,
                vcpus: p.vcpus,
                // SeaBIOS boots the first disk (bootindex=0); ferry-guest is not in a user's disk.
                boot: { kind: 'disk' },
                disks: [
                  p.shared
                    ? sharedDisk(p.base)
                    : {
                        id: 'vda',
                        sizeBytes: p.diskBytes ?? p.base.virtualSizeBytes,
                        shared: false,
                        backing: p.base.backing,
                      },
                ],
                nics,
                guestChannel: false,
                guestAgent: p.guestAgent,
              })
            : defaultVmSpec(p.name, {
                memoryBytes: p.memoryBytes,
                vcpus: p.vcpus,
                boot: { kind: 'kernel', image: p.image },
                disks:
                  p.diskBytes === undefined ? [] : [{ id: 'vda', sizeBytes: p.diskBytes, shared: false }],
                nics,
                ...(p.guestAgent ? { guestAgent: true } : {}),
              });
      const spec = p.cloudInit === undefined && req.evacuation === undefined ? spec0 : parseVmSpec({ ...spec0, ...(p.cloudInit === undefined ? {} : { cloudInit: p.cloudInit }), ...(req.evacuation === undefined ? {} : { evacuation: req.evacuation }) });
      this.rows.setSpec(p.name, spec, ip);
      return { spec, ip, placement };
    })();
    const host = reserved.placement.host;
    events.publish('vm.creating', p.name, { host, ip: reserved.ip, why: reserved.placement.why });
    return this.o.guard.exclusive(p.name, 'create', async () => {
      const agent = this.agentFor(this.row(p.name));
      let status: VmStatus;
      try {
        // The host fetches the base image on first use, before the agent lays out the overlay on it.
        if (this.o.images) await this.o.images.ensureFor(host, agent, reserved.spec);
        status = await agent.call('createVm', {
          body: {
            spec: reserved.spec,
            ...(p.waitReady
              ? { readiness: 'wait', readyTimeoutMs: p.readyTimeoutMs }
              : { readiness: 'skip' }),
          },
        });
      } catch (err0) {
        // The directory was there when checked but the agent did not find it (gone since, or on another
        // machine): still the request's image, so still the caller's mistake.
        const err =
          err0 instanceof FerryError && err0.code === 'FERRY_E_IMAGE_MISSING' && p.image !== 'tiny'
            ? new FerryError('FERRY_E_BAD_IMAGE', `Image ${p.image} on ${host}: ${err0.message}`, {
                cause: err0,
              })
            : err0;
        // Undo: the agent may have got halfway (disk created, QEMU started then failed), so ask it to
        // remove whatever it has, then drop the reservation (the address goes with it, ON DELETE CASCADE).
        await agent.call('deleteVm', { params: { name: p.name } }).catch(() => undefined);
        this.rows.remove(p.name, 'creating');
        const fe =
          err instanceof FerryError ? err : new FerryError('FERRY_E_INTERNAL', String(err), { cause: err });
        events.publish('vm.create_failed', p.name, { host, error: fe.toJSON() });
        throw fe;
      }
      this.rows.update(p.name, { state: status.state, bootId: status.bootId, ready: status.ready === true });
      events.publish('vm.created', p.name, {
        host,
        state: status.state,
        ready: status.ready === true,
        bootId: status.bootId,
        ip: reserved.ip,
      });
      return { ...this.get(p.name), placement: reserved.placement.why };
    });
  }

  /** Runs an agent call that returns the VM's new status, and records it. */
  private async transition(
    name: string,
    op: 'start' | 'stop' | 'pause' | 'resume',
    call: (r: VmsTable) => Promise<VmStatus>,
  ): Promise<VmJson> {
    return this.o.guard.exclusive(name, op, async () => {
      const r = this.row(name);
      this.assertSettled(r);
      const status = await call(r);
      this.rows.update(name, {
        state: status.state,
        bootId: status.bootId,
        ...(status.ready === undefined ? {} : { ready: status.ready }),
      });
      if (status.state !== r.state || status.bootId !== r.boot_id) {
        this.o.events.publish('vm.state', name, {
          host: r.host,
          from: r.state,
          to: status.state,
          bootId: status.bootId,
          reason: op,
        });
      }
      return this.get(name);
    });
  }

  private assertSettled(r: VmsTable): void {
    if (r.state === 'creating')
      throw new FerryError('FERRY_E_VM_STATE', `VM ${r.name} is still being created.`);
    if (r.state === 'deleting') throw new FerryError('FERRY_E_VM_STATE', `VM ${r.name} is being deleted.`);
    if (r.state === 'migrating')
      throw new FerryError(
        'FERRY_E_MIGRATION_ACTIVE',
        `VM ${r.name} is being migrated: wait for it or cancel it.`,
      );
  }

  start(name: string): Promise<VmJson> {
    return this.transition(name, 'start', (r) => this.agentFor(r).call('startVm', { params: { name } }));
  }

  stop(name: string, opts: { force?: boolean; timeoutMs?: number } = {}): Promise<VmJson> {
    return this.transition(name, 'stop', (r) =>
      this.agentFor(r).call('stopVm', { params: { name }, body: opts }),
    );
  }

  pause(name: string): Promise<VmJson> {
    return this.transition(name, 'pause', (r) => this.agentFor(r).call('pauseVm', { params: { name } }));
  }

  /**
   * Resumes a paused VM. A source left paused after a migration that failed once its QEMU had completed
   * resumes only against the destination's signed discard receipt (the truth rule): ask the destination of
   * its last migration to discard (or show that it discarded) its copy, then resume with the receipt.
   */
  resume(name: string): Promise<VmJson> {
    return this.transition(name, 'resume', async (r) => {
      const agent = this.agentFor(r);
      try {
        return await agent.call('resumeVm', { params: { name } });
      } catch (err) {
        if (!(err instanceof FerryError && err.code === 'FERRY_E_RECEIPT_REQUIRED')) throw err;
        const job = this.o.store.sql
          .prepare(
            'SELECT id, destination, state FROM migrations WHERE vm = ? AND source = ? ORDER BY started_at DESC LIMIT 1',
          )
          .get(name, r.host) as { id: string; destination: string; state: string } | undefined;
        if (!job || (job.state !== 'failed' && job.state !== 'cancelled')) throw err;
        const d = this.o.store.sql.prepare('SELECT * FROM hosts WHERE name = ?').get(job.destination) as
          HostsTable | undefined;
        if (!d) throw err;
        const view = await this.o.pool
          .client(d.name, d.url)
          .call('finish', { params: { id: job.id }, body: { success: false } }, { timeoutMs: 30_000 });
        await agent.call(
          'confirm',
          {
            params: { id: job.id },
            body: { success: false, ...(view.receipt ? { receipt: view.receipt } : {}) },
          },
          { timeoutMs: 30_000 },
        );
        return agent.call('getVm', { params: { name } });
      }
    });
  }

  async delete(name: string): Promise<{ deleted: true; name: string }> {
    return this.o.guard.exclusive(name, 'delete', async () => {
      const r = this.row(name);
      this.assertSettled(r);
      // Claim the row first (compare-and-set), so that a migration asked for meanwhile finds the VM
      // `deleting` and is refused, instead of moving a VM whose row this delete then removes.
      if (!this.rows.update(name, { state: 'deleting' }, r.state)) {
        throw new FerryError(
          'FERRY_E_VM_STATE',
          `VM ${name} changed state meanwhile (a migration?): try again.`,
        );
      }
      try {
        await this.agentFor(r).call('deleteVm', { params: { name } });
      } catch (err) {
        // Already gone from the host is what we wanted; anything else keeps the row (and says why).
        if (!(
          err instanceof FerryError &&
          (err.code === 'FERRY_E_VM_NOT_FOUND' || err.code === 'FERRY_E_NOT_FOUND')
        )) {
          this.rows.update(name, { state: r.state }, 'deleting');
          throw err;
        }
      }
      this.rows.remove(name);
      this.o.events.publish('vm.deleted', name, { host: r.host });
      return { deleted: true, name };
    });
  }

  async guest(name: string, command: string | string[]): Promise<unknown> {
    const r = this.row(name);
    // The guest tool reads one command line; an argv-style array is joined into one.
    const line = Array.isArray(command) ? command.join(' ') : command;
    if (line.trim() === '' || line.includes('\n'))
      throw new FerryError('FERRY_E_BAD_INPUT', 'The guest command must be one non-empty line.');
    return this.agentFor(r).call('guest', { params: { name }, body: { command: line } });
  }

  async console(name: string): Promise<string> {
    const r = this.row(name);
    return this.agentFor(r).call('console', { params: { name } });
  }
}
