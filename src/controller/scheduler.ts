/**
 * Placement: which host takes a VM (a new one, or one that moves). Pure (no I/O), so the same code runs
 * over simulated hosts (`ferry sim`, src/controller/fleet/). Every host is judged and the judgement is
 * returned (`why`), so that a refusal can say exactly which host lacked what: memory and vCPUs, and
 * compatibility — the VM's machine type in the host's QEMU, its CPU model among the host's usable CPU
 * definitions (and, when both sides expanded it, no feature fewer than the source's), and the migration
 * capabilities the move would use. A host whose agent predates the probe is judged on its machine types.
 */
import type { MigrationPolicy } from '../common/policy.ts';
import type { HostInventory, HostState } from '../common/protocol.ts';
import type { VmSpec } from '../common/spec.ts';
import { FerryError } from '../common/errors.ts';
import { formatBytes } from '../common/units.ts';

/** Memory kept free on every host for QEMU's own overhead and the host itself. */
export const DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024;
/** vCPUs may be promised up to this many times the host's cores. */
export const VCPU_OVERCOMMIT = 4;

export interface HostView {
  name: string;
  state: HostState;
  maintenance: boolean;
  inventory: HostInventory | null;
}

export interface VmLoad {
  host: string;
  memoryBytes: number;
  vcpus: number;
  /**
   * True when the agent does not know the VM yet (a create in flight), so its memory is not already
   * deducted from the agent's `freeMemoryBytes`.
   */
  pending: boolean;
}

export interface PlacementRequest {
  memoryBytes: number;
  vcpus: number;
  host?: string | undefined;
  /** The VM's machine type (spec.machine): the host's QEMU must have it. */
  machine?: string | undefined;
  /** The VM's named CPU model (spec.cpuModel): the host's QEMU must list it as usable. */
  cpuModel?: string | undefined;
  /** The features the CPU model has where the VM runs now (its source's expansion), when known. */
  cpuFeatures?: readonly string[] | undefined;
  /** QEMU migration capabilities the move would use (`postcopy-ram`, `multifd`, …). */
  capabilities?: readonly string[] | undefined;
}

/** Why a host was refused, as a stable code (absent for the plain capacity and state refusals). */
export const COMPAT_CODES = ['FERRY_E_MACHINE_TYPE', 'FERRY_E_CPU_MODEL', 'FERRY_E_QEMU_CAPABILITY'] as const;
export type CompatCode = (typeof COMPAT_CODES)[number];

export interface Judgement {
  host: string;
  accepted: boolean;
  reason: string;
  freeMemoryBytes?: number;
  code?: CompatCode;
}

/** What the VMs already on one host use, summed once (placement judges many hosts for one VM). */
export interface HostLoad {
  memoryBytes: number;
  /** Memory of VMs the agent does not know yet (a create in flight). */
  pendingBytes: number;
  vcpus: number;
}

export const NO_LOAD: HostLoad = { memoryBytes: 0, pendingBytes: 0, vcpus: 0 };

/** The QEMU migration capabilities a policy would switch on, by QEMU's names. */
export function capabilitiesOf(policy: Pick<MigrationPolicy, 'mode' | 'postcopy' | 'multifd' | 'xbzrle' | 'autoConverge'>): string[] {
  if (policy.mode === 'cold') return [];
  return [
    ...(policy.postcopy === 'never' ? [] : ['postcopy-ram']),
    ...(policy.multifd > 0 ? ['multifd'] : []),
    ...(policy.xbzrle ? ['xbzrle'] : []),
    ...(policy.autoConverge ? ['auto-converge'] : []),
  ];
}

/** What placing an existing VM elsewhere asks of a host: its size, machine type, CPU model and the move's capabilities. */
export function moveRequest(
  spec: Pick<VmSpec, 'memoryBytes' | 'vcpus' | 'machine' | 'cpuModel'>,
  source: HostInventory | null | undefined,
  policy?: Parameters<typeof capabilitiesOf>[0],
  to?: string,
): PlacementRequest {
  return {
    memoryBytes: spec.memoryBytes,
    vcpus: spec.vcpus,
    host: to,
    machine: spec.machine,
    cpuModel: spec.cpuModel,
    cpuFeatures: source?.qemu.cpuExpansions?.[spec.cpuModel],
    capabilities: policy === undefined ? undefined : capabilitiesOf(policy),
  };
}

/** Sums the loads per host in one pass. */
export function loadsByHost(vms: readonly VmLoad[]): Map<string, HostLoad> {
  const m = new Map<string, HostLoad>();
  for (const v of vms) {
    const l = m.get(v.host) ?? { memoryBytes: 0, pendingBytes: 0, vcpus: 0 };
    l.memoryBytes += v.memoryBytes;
    l.vcpus += v.vcpus;
    if (v.pending) l.pendingBytes += v.memoryBytes;
    m.set(v.host, l);
  }
  return m;
}

/** Whether a host's QEMU can run the VM and carry the migration; null when it can. */
export function compatibility(req: PlacementRequest, inv: HostInventory): { code: CompatCode; reason: string } | null {
  const q = inv.qemu;
  if (req.machine !== undefined && !q.machineTypes.includes(req.machine)) {
    return { code: 'FERRY_E_MACHINE_TYPE', reason: `QEMU ${q.version} has no machine type ${req.machine}` };
  }
  if (req.cpuModel !== undefined && q.cpuDefinitions !== undefined) {
    const def = q.cpuDefinitions.find((d) => d.name === req.cpuModel);
    if (!def) return { code: 'FERRY_E_CPU_MODEL', reason: `QEMU ${q.version} has no CPU model ${req.cpuModel}` };
    if (!def.usable) {
      return { code: 'FERRY_E_CPU_MODEL', reason: `CPU model ${req.cpuModel} is not usable here (lacks ${def.unavailableFeatures.slice(0, 6).join(', ')})` };
    }
    const here = q.cpuExpansions?.[req.cpuModel];
    if (here !== undefined && req.cpuFeatures !== undefined) {
      const missing = req.cpuFeatures.filter((f) => !here.includes(f));
      if (missing.length > 0) {
        return { code: 'FERRY_E_CPU_MODEL', reason: `CPU model ${req.cpuModel} here lacks ${missing.slice(0, 6).join(', ')} of the VM's` };
      }
    }
  }
  if (req.capabilities !== undefined && q.migrationCapabilities !== undefined) {
    const missing = req.capabilities.filter((c) => !q.migrationCapabilities!.includes(c));
    if (missing.length > 0) {
      return { code: 'FERRY_E_QEMU_CAPABILITY', reason: `QEMU ${q.version} lacks migration capability ${missing.join(', ')}` };
    }
  }
  return null;
}

export interface Placement {
  host: string;
  why: Judgement[];
}

/** Memory a host can still give: the stricter of the agent's view and the store's view. */
export function freeMemoryOf(h: HostView, load: HostLoad, reserveBytes = DEFAULT_RESERVE_BYTES): number {
  const inv = h.inventory;
  if (!inv) return 0;
  return Math.max(0, Math.min(inv.freeMemoryBytes - load.pendingBytes, inv.memoryBytes - reserveBytes - load.memoryBytes));
}

export function judgeHost(
  req: PlacementRequest,
  h: HostView,
  vms: readonly VmLoad[],
  reserveBytes = DEFAULT_RESERVE_BYTES,
): Judgement {
  return judgeHostLoad(req, h, loadsByHost(vms.filter((v) => v.host === h.name)).get(h.name) ?? NO_LOAD, reserveBytes);
}

/** judgeHost with the host's load already summed: what the planners call, host after host. */
export function judgeHostLoad(req: PlacementRequest, h: HostView, load: HostLoad, reserveBytes = DEFAULT_RESERVE_BYTES): Judgement {
  const refuse = (reason: string, free?: number): Judgement =>
    free === undefined ? { host: h.name, accepted: false, reason } : { host: h.name, accepted: false, reason, freeMemoryBytes: free };
  if (h.state === 'unreachable') return refuse('host is unreachable');
  if (h.state === 'incompatible') return refuse("host's agent speaks another protocol version");
  if (h.maintenance || h.state === 'maintenance') return refuse('host is in maintenance');
  if (!h.inventory) return refuse('no inventory yet (agent not heard from)');
  const compat = compatibility(req, h.inventory);
  if (compat) return { host: h.name, accepted: false, reason: compat.reason, code: compat.code };
  const free = freeMemoryOf(h, load, reserveBytes);
  if (req.memoryBytes > free) {
    return refuse(`needs ${formatBytes(req.memoryBytes)} of memory, ${formatBytes(free)} free`, free);
  }
  const limit = h.inventory.cpu.cores * VCPU_OVERCOMMIT;
  if (load.vcpus + req.vcpus > limit) {
    return refuse(`needs ${req.vcpus} vCPUs, ${Math.max(0, limit - load.vcpus)} of ${limit} left (${VCPU_OVERCOMMIT}× ${h.inventory.cpu.cores} cores)`, free);
  }
  return { host: h.name, accepted: true, reason: `fits: ${formatBytes(free)} free`, freeMemoryBytes: free };
}

/**
 * Chooses a host for a VM: never one in maintenance or unreachable; memory and vCPUs must fit; among
 * those that fit, the one with the most free memory (ties: by name, for determinism).
 */
export function placeVm(
  req: PlacementRequest,
  hosts: readonly HostView[],
  vms: readonly VmLoad[],
  opts: { reserveBytes?: number } = {},
): Placement {
  const reserve = opts.reserveBytes ?? DEFAULT_RESERVE_BYTES;
  const biggest = Math.max(0, ...hosts.map((h) => h.inventory?.memoryBytes ?? 0));
  if (hosts.some((h) => h.inventory) && req.memoryBytes > biggest - reserve) {
    throw new FerryError(
      'FERRY_E_MEMORY_TOO_LARGE',
      `${formatBytes(req.memoryBytes)} is more than any host can give (biggest host: ${formatBytes(biggest)}, ${formatBytes(reserve)} reserved).`,
      { details: { memoryBytes: req.memoryBytes, biggestHostBytes: biggest } },
    );
  }
  if (req.host !== undefined) {
    const h = hosts.find((x) => x.name === req.host);
    if (!h) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `No host named ${JSON.stringify(req.host)}: see \`ferry host list\`.`);
    const j = judgeHost(req, h, vms, reserve);
    if (!j.accepted) {
      throw new FerryError(j.code ?? 'FERRY_E_NO_CAPACITY', `Host ${h.name} cannot take this VM: ${j.reason}.`, { details: { why: [j] } });
    }
    return { host: h.name, why: [j] };
  }
  const loads = loadsByHost(vms);
  const why = [...hosts].sort((a, b) => a.name.localeCompare(b.name)).map((h) => judgeHostLoad(req, h, loads.get(h.name) ?? NO_LOAD, reserve));
  const fits = why.filter((j) => j.accepted).sort((a, b) => (b.freeMemoryBytes ?? 0) - (a.freeMemoryBytes ?? 0));
  const best = fits[0];
  if (!best) {
    const summary = why.length === 0 ? 'no hosts have joined' : why.map((j) => `${j.host}: ${j.reason}`).join('; ');
    throw new FerryError('FERRY_E_NO_CAPACITY', `No host can take this VM (${summary}).`, { details: { why } });
  }
  return { host: best.host, why };
}
