/**
 * Where a VM could go: every host with the scheduler's verdict for this VM (its own judgement, `judgeHost`),
 * so that an operator choosing a destination sees which hosts fit and why the others do not. Read-only.
 */
import type { PlacementJson } from '../common/api.ts';
import { FerryError } from '../common/errors.ts';
import type { VmSpec } from '../common/spec.ts';
import { validateName } from '../common/units.ts';
import { hostViews, vmLoads } from './hosts.ts';
import { judgeHost } from './scheduler.ts';
import type { Store } from './store/db.ts';

export function placementsFor(store: Store, vmName: string): PlacementJson[] {
  const name = validateName(vmName, 'VM name');
  const vm = store.sql.prepare('SELECT host, spec FROM vms WHERE name = ?').get(name) as { host: string; spec: string } | undefined;
  if (!vm) throw new FerryError('FERRY_E_VM_NOT_FOUND', `No VM named ${JSON.stringify(name)}: see \`ferry vm list\`.`);
  const spec = JSON.parse(vm.spec) as VmSpec;
  const loads = vmLoads(store);
  return hostViews(store).map((h) => {
    if (h.name === vm.host) return { host: h.name, fits: false, reason: 'the VM runs here' };
    const j = judgeHost({ memoryBytes: spec.memoryBytes, vcpus: spec.vcpus }, h, loads);
    return { host: h.name, fits: j.accepted, reason: j.reason };
  });
}
