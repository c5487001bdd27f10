/**
 * The rebalancer: evens out memory use across hosts. Pure: hosts and VMs in, moves out. While the most
 * and least used hosts (used memory over what the host can give VMs) differ by more than the threshold,
 * it takes from the most used host the move that costs least — the bytes pre-copy would send, which grow
 * with the guest's dirty rate (memory ÷ (1 − dirty ÷ link)) — among those that narrow the gap, to the
 * least used host that takes the VM (the scheduler judges it, compatibility included), and says why.
 */
import type { RebalanceMoveJson } from '../../common/api.ts';
import { formatBytes } from '../../common/units.ts';
import { DEFAULT_RESERVE_BYTES, judgeHostLoad, loadsByHost, moveRequest, NO_LOAD, type HostLoad } from '../scheduler.ts';
import { DEFAULT_LINK_BYTES_PER_SEC, type FleetHost, type FleetVm } from './planner.ts';

export interface RebalanceRequest {
  hosts: readonly FleetHost[];
  vms: readonly FleetVm[];
  /** Stop when max − min use is at most this fraction (0.1 = 10 points). */
  threshold: number;
  maxMoves: number;
}

/** A planned move: the API's move (common/api.ts) before anything was started for it. */
export type RebalanceMove = Omit<RebalanceMoveJson, 'migration' | 'error'>;

export interface RebalancePlan {
  threshold: number;
  /** max − min use before and after the moves, as fractions. */
  spreadBefore: number;
  spreadAfter: number;
  moves: RebalanceMove[];
}

const pct = (x: number): string => `${Math.round(x * 100)}%`;

export function planRebalance(r: RebalanceRequest): RebalancePlan {
  const hosts = r.hosts.filter((h) => h.inventory !== null && h.state === 'ready' && !h.maintenance);
  const loads = loadsByHost(r.vms.map((v) => ({ host: v.host, memoryBytes: v.spec.memoryBytes, vcpus: v.spec.vcpus, pending: false })));
  const where = new Map(r.vms.map((v) => [v.name, v.host]));
  const capacity = (name: string): number => {
    const h = hosts.find((x) => x.name === name);
    return Math.max(1, (h?.inventory?.memoryBytes ?? 0) - DEFAULT_RESERVE_BYTES);
  };
  const use = (name: string): number => (loads.get(name)?.memoryBytes ?? 0) / capacity(name);
  const spread = (): number => (hosts.length < 2 ? 0 : Math.max(...hosts.map((h) => use(h.name))) - Math.min(...hosts.map((h) => use(h.name))));
  const spreadBefore = spread();
  const moves: RebalanceMove[] = [];
  const moved = new Set<string>();
  while (moves.length < r.maxMoves && hosts.length >= 2 && spread() > r.threshold) {
    const byUse = [...hosts].sort((a, b) => use(b.name) - use(a.name) || a.name.localeCompare(b.name));
    const top = byUse[0]!;
    const gap = use(top.name) - use(byUse.at(-1)!.name);
    let best: { move: RebalanceMove; newGap: number; mem: number; vcpus: number } | null = null;
    for (const vm of r.vms) {
      if (where.get(vm.name) !== top.name || moved.has(vm.name) || (vm.state !== 'running' && vm.state !== 'stopped' && vm.state !== 'paused')) continue;
      const link = top.linkBytesPerSec || DEFAULT_LINK_BYTES_PER_SEC;
      const d = vm.state === 'stopped' ? 0 : (vm.dirtyBytesPerSec ?? 0);
      if (d >= link * 0.9) continue; // would not converge: not worth moving for balance
      const cost = (vm.spec.memoryBytes + vm.diskBytes) / (1 - d / link);
      // Destinations from the least used up, the first that takes it.
      for (const dst of [...byUse].reverse()) {
        if (dst.name === top.name) continue;
        const newTop = use(top.name) - vm.spec.memoryBytes / capacity(top.name);
        const newDst = use(dst.name) + vm.spec.memoryBytes / capacity(dst.name);
        if (Math.max(newTop, newDst) >= use(top.name)) continue; // would not narrow the gap
        const j = judgeHostLoad(moveRequest(vm.spec, top.inventory), dst, loads.get(dst.name) ?? NO_LOAD);
        if (!j.accepted) continue;
        const others = hosts.filter((h) => h.name !== top.name && h.name !== dst.name).map((h) => use(h.name));
        const newGap = Math.max(newTop, newDst, ...others) - Math.min(newTop, newDst, ...others);
        if (best === null || cost < best.move.costBytes || (cost === best.move.costBytes && newGap < best.newGap)) {
          best = {
            move: {
              vm: vm.name,
              from: top.name,
              to: dst.name,
              mode: vm.state === 'stopped' ? 'cold' : 'live',
              costBytes: Math.round(cost),
              reason: `${top.name} ${pct(use(top.name))} → ${pct(newTop)}, ${dst.name} ${pct(use(dst.name))} → ${pct(newDst)}: sends ~${formatBytes(cost)} (${formatBytes(vm.spec.memoryBytes)}${d > 0 ? `, dirtying ${formatBytes(d)}/s` : ''}), the cheapest move that narrows the spread`,
            },
            newGap,
            mem: vm.spec.memoryBytes,
            vcpus: vm.spec.vcpus,
          };
        }
        break;
      }
    }
    if (best === null || best.newGap >= gap) break;
    moves.push(best.move);
    moved.add(best.move.vm);
    where.set(best.move.vm, best.move.to);
    const a: HostLoad = loads.get(best.move.from) ?? { ...NO_LOAD };
    const b: HostLoad = loads.get(best.move.to) ?? { ...NO_LOAD };
    loads.set(best.move.from, { ...a, memoryBytes: a.memoryBytes - best.mem, vcpus: a.vcpus - best.vcpus });
    loads.set(best.move.to, { ...b, memoryBytes: b.memoryBytes + best.mem, vcpus: b.vcpus + best.vcpus });
  }
  return { threshold: r.threshold, spreadBefore, spreadAfter: spread(), moves };
}
