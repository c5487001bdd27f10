/**
 * The planners' inputs read from the store: hosts with their links, VMs with their size, local disks,
 * evacuation policy, and (for running VMs asked about) the dirty rate their agent measures now. The one
 * place the fleet planners touch the store and the agents; the planners themselves stay pure.
 */
import type { Evacuation, VmSpec } from '../../common/spec.ts';
import type { AgentPool } from '../agent-client.ts';
import { hostViews } from '../hosts.ts';
import type { Store } from '../store/db.ts';
import { DEFAULT_LINK_BYTES_PER_SEC, type FleetHost, type FleetVm } from './planner.ts';

export function fleetHosts(store: Store, linkBytesPerSec = DEFAULT_LINK_BYTES_PER_SEC): FleetHost[] {
  return hostViews(store).map((h) => ({ ...h, linkBytesPerSec }));
}

export function fleetVms(store: Store): FleetVm[] {
  const rows = store.sql.prepare('SELECT name, host, state, spec FROM vms ORDER BY name').all() as { name: string; host: string; state: string; spec: string }[];
  return rows.map((r) => {
    const spec = JSON.parse(r.spec) as VmSpec & { evacuation?: Evacuation };
    return {
      name: r.name,
      host: r.host,
      state: r.state,
      spec: { memoryBytes: spec.memoryBytes, vcpus: spec.vcpus, machine: spec.machine, cpuModel: spec.cpuModel, evacuation: spec.evacuation },
      diskBytes: spec.disks.filter((d) => !d.shared).reduce((s, d) => s + d.sizeBytes, 0),
      dirtyBytesPerSec: null,
    };
  });
}

/** Asks each running VM's agent for its dirty rate, all at once; a VM whose agent cannot say stays unknown. */
export async function measureDirtyRates(store: Store, pool: AgentPool, vms: FleetVm[]): Promise<void> {
  const urls = new Map((store.sql.prepare('SELECT name, url FROM hosts').all() as { name: string; url: string }[]).map((h) => [h.name, h.url]));
  await Promise.all(
    vms
      .filter((v) => v.state === 'running')
      .map(async (v) => {
        const url = urls.get(v.host);
        if (url === undefined) return;
        try {
          v.dirtyBytesPerSec = (await pool.client(v.host, url).call('dirtyRate', { params: { name: v.name } })).dirtyRateBytesPerSec;
        } catch {
          v.dirtyBytesPerSec = null;
        }
      }),
  );
}
