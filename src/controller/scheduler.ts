/**
 * Placement: which host takes a new VM. Pure (no I/O), so the same code can later run over simulated
 * hosts. Every host is judged and the judgement is returned (`why`), so that a refusal can say exactly
 * which host lacked what.
 */
import type { HostInventory, HostState } from '../common/protocol.ts';
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
}

export interface Judgement {
  host: string;
  accepted: boolean;
  reason: string;
  freeMemoryBytes?: number;
}

export interface Placement {
  host: string;
  why: Judgement[];
}

/** Memory a host can still give: the stricter of the agent's view and the store's view. */
export function freeMemory(h: HostView, vms: readonly VmLoad[], reserveBytes = DEFAULT_RESERVE_BYTES): number {
  const inv = h.inventory;
  if (!inv) return 0;
  const mine = vms.filter((v) => v.host === h.name);
  const pending = mine.filter((v) => v.pending).reduce((s, v) => s + v.memoryBytes, 0);
  const all = mine.reduce((s, v) => s + v.memoryBytes, 0);
  return Math.max(0, Math.min(inv.freeMemoryBytes - pending, inv.memoryBytes - reserveBytes - all));
}

export function judgeHost(
  req: PlacementRequest,
  h: HostView,
  vms: readonly VmLoad[],
  reserveBytes = DEFAULT_RESERVE_BYTES,
): Judgement {
  const refuse = (reason: string, free?: number): Judgement =>
    free === undefined ? { host: h.name, accepted: false, reason } : { host: h.name, accepted: false, reason, freeMemoryBytes: free };
  if (h.state === 'unreachable') return refuse('host is unreachable');
  if (h.state === 'incompatible') return refuse("host's agent speaks another protocol version");
  if (h.maintenance || h.state === 'maintenance') return refuse('host is in maintenance');
  if (!h.inventory) return refuse('no inventory yet (agent not heard from)');
  const free = freeMemory(h, vms, reserveBytes);
  if (req.memoryBytes > free) {
    return refuse(`needs ${formatBytes(req.memoryBytes)} of memory, ${formatBytes(free)} free`, free);
  }
  const used = vms.filter((v) => v.host === h.name).reduce((s, v) => s + v.vcpus, 0);
  const limit = h.inventory.cpu.cores * VCPU_OVERCOMMIT;
  if (used + req.vcpus > limit) {
    return refuse(`needs ${req.vcpus} vCPUs, ${Math.max(0, limit - used)} of ${limit} left (${VCPU_OVERCOMMIT}× ${h.inventory.cpu.cores} cores)`, free);
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
      throw new FerryError('FERRY_E_NO_CAPACITY', `Host ${h.name} cannot take this VM: ${j.reason}.`, { details: { why: [j] } });
    }
    return { host: h.name, why: [j] };
  }
  const why = [...hosts].sort((a, b) => a.name.localeCompare(b.name)).map((h) => judgeHost(req, h, vms, reserve));
  const fits = why.filter((j) => j.accepted).sort((a, b) => (b.freeMemoryBytes ?? 0) - (a.freeMemoryBytes ?? 0));
  const best = fits[0];
  if (!best) {
    const summary = why.length === 0 ? 'no hosts have joined' : why.map((j) => `${j.host}: ${j.reason}`).join('; ');
    throw new FerryError('FERRY_E_NO_CAPACITY', `No host can take this VM (${summary}).`, { details: { why } });
  }
  return { host: best.host, why };
}
