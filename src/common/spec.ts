/**
 * VmSpec: what a VM is, independent of the host it runs on. It crosses every boundary (CLI → controller →
 * agent → argv) and is persisted, so it is a versioned TypeBox schema, validated at each entry.
 * Source and destination of a migration start QEMU from the same spec: that is why the machine type is
 * pinned to a versioned type (pc-q35-10.0) and the CPU model is named, never `host`.
 */
import Type, { type Static } from 'typebox';
import { Value } from 'typebox/value';
import { FerryError } from './errors.ts';
import { NAME_RE } from './units.ts';

export const SPEC_VERSION = 1;
/** How far a drain may go to move a VM: live only, post-copy too, or cold (stopping the guest) too. */
export const EVACUATIONS = ['live', 'postcopy-ok', 'cold-ok'] as const;
export type Evacuation = (typeof EVACUATIONS)[number];
export const DEFAULT_MACHINE = 'pc-q35-10.0';
export const DEFAULT_CPU_MODEL = 'qemu64';
export const MIB = 1024 * 1024;

const Name = Type.String({ pattern: NAME_RE.source });

/**
 * A kernel command line Ferry passes on: letters, digits and `. _ = , : / + @ -` and spaces. No quotes,
 * `;`, `$`, backslashes or control characters: the kernel has its own quoting rules, and a line that
 * needed them is one we would mean differently from the kernel.
 */
export const APPEND_PATTERN = '^[A-Za-z0-9._=,:/+@ -]*$';

const BaseFormat = Type.Union([Type.Literal('qcow2'), Type.Literal('raw')]);
export const SHA256_PATTERN = '^[0-9a-f]{64}$';
const BackingFile = Type.Object({
  path: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$' }),
  format: BaseFormat,
});
/** An image of the controller's store: its name (for people), its sha256 (what hosts cache it by), its format. */
export const BackingImage = Type.Object({
  image: Name,
  sha256: Type.String({ pattern: SHA256_PATTERN }),
  format: BaseFormat,
});
export type BackingImage = Static<typeof BackingImage>;

export const DiskSpec = Type.Object({
  /** Device id inside QEMU and the guest's view (virtio: vda, vdb ...). */
  id: Type.String({ pattern: '^vd[a-z]$' }),
  sizeBytes: Type.Integer({ minimum: MIB }),
  /**
   * Shared storage: the disk is the file at `path` itself, which every host sees at that path (NFS, a
   * cluster file system). It is never copied: a live migration opens it on the destination (the source
   * releases it at switchover), a cold one moves no file for it, and prepare refuses a destination that
   * does not see the same file (src/agent/shared-disks.ts).
   */
  shared: Type.Boolean(),
  /** Absolute path of the disk's image; when absent the agent creates a qcow2 one in the VM's directory. */
  path: Type.Optional(Type.String({ pattern: '^/[A-Za-z0-9._/-]+$' })),
  /** The format of the file at `path`, as qemu-img said at create; absent: qcow2. */
  format: Type.Optional(Type.Union([Type.Literal('qcow2'), Type.Literal('raw')])),
  /**
   * The read-only base under the VM's own qcow2 overlay (created in the VM's directory, `-b` this): creating
   * the VM copies nothing, and a storage migration copies only the overlay (`sync: top`). `format` is what
   * qemu-img said at create, never guessed again. Either a user's file at a `path` every host sees (the
   * destination opens the same path), or an image of the controller's store by identity: each host opens its
   * own cached copy of that sha256 (src/agent/images.ts), fetched from the controller before first use.
   */
  backing: Type.Optional(Type.Union([BackingFile, BackingImage])),
});
export type DiskSpec = Static<typeof DiskSpec>;

/** The store images a VM's disks are overlays on (what a host must have before it runs the VM). */
export function baseImagesOf(spec: VmSpec): BackingImage[] {
  const seen = new Map<string, BackingImage>();
  for (const d of spec.disks) if (d.backing !== undefined && 'sha256' in d.backing) seen.set(d.backing.sha256, d.backing);
  return [...seen.values()];
}

export const NicSpec = Type.Object({
  id: Type.String({ pattern: '^net[0-9]$' }),
  mac: Type.String({ pattern: '^52:54:00(:[0-9a-f]{2}){3}$' }),
  /** The VM network (in the lab: `vm0`, the LAN shared by all hosts). */
  network: Name,
  /** Static address given to the guest on its kernel command line, `a.b.c.d/len`. */
  ip: Type.Optional(Type.String({ pattern: '^\\d{1,3}(\\.\\d{1,3}){3}/\\d{1,2}$' })),
});
export type NicSpec = Static<typeof NicSpec>;

export const BootSpec = Type.Union([
  Type.Object({
    kind: Type.Literal('kernel'),
    /** `tiny` (Ferry's built image) or an absolute directory holding vmlinuz + initramfs.gz. */
    image: Type.String({ pattern: '^(tiny|/[A-Za-z0-9._/-]+)$' }),
    /** Extra kernel arguments, validated: no quotes, no shell metacharacters. */
    cmdline: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._=,:/ -]*$', maxLength: 1024 })),
  }),
  Type.Object({ kind: Type.Literal('disk') }),
  /**
   * Direct kernel boot of a distribution's own kernel (issue #9): the files by absolute path (every host
   * sees them at the same path, like a base image), and the command line exactly as given — validated, never
   * through a shell, nothing of Ferry's added (the root disk is usually `root=/dev/vda`).
   */
  Type.Object({
    kind: Type.Literal('direct'),
    kernel: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$' }),
    initrd: Type.Optional(Type.String({ pattern: '^/[A-Za-z0-9._/-]+$' })),
    append: Type.String({ pattern: APPEND_PATTERN, maxLength: 2048 }),
  }),
]);
export type BootSpec = Static<typeof BootSpec>;

/**
 * A NoCloud seed for cloud-init (src/guest/seed.ts makes it): the hostname, the instance id (fixed at
 * create: the same VM after a migration, so cloud-init does not run its first-boot modules again), SSH keys
 * and the user's user-data verbatim. Its network-config comes from the NICs' addresses.
 */
/** Largest user-data a seed takes (bytes). */
export const MAX_USER_DATA_BYTES = 1024 * 1024;

export const CloudInitSpec = Type.Object({
  instanceId: Type.String({ pattern: '^[A-Za-z0-9._-]{1,128}$' }),
  hostname: Name,
  sshAuthorizedKeys: Type.Array(Type.String({ pattern: '^[^\\r\\n]{1,16384}$' }), { maxItems: 32 }),
  userData: Type.Optional(Type.String({ maxLength: MAX_USER_DATA_BYTES })),
  /** Default route of the first NIC, when the VM network has a gateway. */
  gateway: Type.Optional(Type.String({ pattern: '^\\d{1,3}(\\.\\d{1,3}){3}$' })),
});
export type CloudInitSpec = Static<typeof CloudInitSpec>;

export const VmSpec = Type.Object({
  version: Type.Literal(SPEC_VERSION),
  name: Name,
  vcpus: Type.Integer({ minimum: 1, maximum: 64 }),
  memoryBytes: Type.Integer({ minimum: 16 * MIB }),
  cpuModel: Type.String({ pattern: '^[A-Za-z0-9._-]+$' }),
  machine: Type.String({ pattern: '^[a-z0-9._-]+$' }),
  boot: BootSpec,
  disks: Type.Array(DiskSpec, { maxItems: 8 }),
  nics: Type.Array(NicSpec, { maxItems: 4 }),
  /** A virtio-serial port to the tiny guest's `ferry-guest` (commands without guest networking). */
  guestChannel: Type.Boolean(),
  /**
   * A virtio-serial port `org.qemu.guest_agent.0` for the guest's qemu-guest-agent (stock distributions):
   * readiness (`guest-ping`) and the boot id for guests without ferry-guest. Optional: specs from before it
   * mean false.
   */
  guestAgent: Type.Optional(Type.Boolean()),
  /** A cloud-init NoCloud seed attached as a read-only CD; absent: none. */
  cloudInit: Type.Optional(CloudInitSpec),
  /** How far a drain may go to move it (src/controller/fleet/planner.ts); absent: `live`. */
  evacuation: Type.Optional(Type.Enum(EVACUATIONS)),
});
export type VmSpec = Static<typeof VmSpec>;

/** Validates anything claimed to be a VmSpec; throws FERRY_E_BAD_SPEC listing every problem. */
export function parseVmSpec(input: unknown): VmSpec {
  if (Value.Check(VmSpec, input)) {
    const spec = input as VmSpec;
    const ids = new Set<string>();
    for (const d of [...spec.disks, ...spec.nics]) {
      if (ids.has(d.id)) throw new FerryError('FERRY_E_BAD_SPEC', `Duplicate device id ${d.id}.`);
      ids.add(d.id);
    }
    return spec;
  }
  const problems = [...Value.Errors(VmSpec, input)].slice(0, 8).map((e) => `${e.instancePath || '/'} ${e.message}`);
  throw new FerryError('FERRY_E_BAD_SPEC', `Bad VM spec: ${problems.join('; ')}`, { details: { problems } });
}

/** Validates a cloud-init seed on its own (the controller builds one before the whole spec). */
export function parseCloudInit(input: unknown): CloudInitSpec {
  if (Value.Check(CloudInitSpec, input)) return input as CloudInitSpec;
  const problems = [...Value.Errors(CloudInitSpec, input)].slice(0, 8).map((e) => `${e.instancePath || '/'} ${e.message}`);
  throw new FerryError('FERRY_E_BAD_SPEC', `Bad cloud-init seed: ${problems.join('; ')}`, { details: { problems } });
}

/** A spec with Ferry's defaults for the fields a user did not give. */
export function defaultVmSpec(name: string, over: Partial<Omit<VmSpec, 'version' | 'name'>> = {}): VmSpec {
  return parseVmSpec({
    version: SPEC_VERSION,
    name,
    vcpus: 1,
    memoryBytes: 256 * MIB,
    cpuModel: DEFAULT_CPU_MODEL,
    machine: DEFAULT_MACHINE,
    boot: { kind: 'kernel', image: 'tiny' },
    disks: [],
    nics: [],
    guestChannel: true,
    ...over,
  });
}
