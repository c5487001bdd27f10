/**
 * `ferry sim`: the drain planner and the fluid model over a simulated fleet. Hosts and VMs are generated
 * from a seed (the same seed, the same fleet), placed by the scheduler's own judgement, then `drain`
 * hosts are evacuated together: the plan, its makespan under the limits, the same moves one at a time,
 * and the lower bound (each source's bytes through its own link).
 */
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
import { DEFAULT_MACHINE, DEFAULT_CPU_MODEL } from '../../common/spec.ts';
import type { HostInventory } from '../../common/protocol.ts';
import { judgeHostLoad, loadsByHost, NO_LOAD, type HostLoad } from '../scheduler.ts';
import { DEFAULT_LIMITS, lowerBoundMs, simulate, type Limits } from './fluid.ts';
import type { Evacuation } from '../../common/spec.ts';
import { planDrain, toMoves, type DrainPlan, type FleetHost, type FleetVm } from './planner.ts';

export interface SimOptions {
  hosts: number;
  vms: number;
  drain: number;
  seed?: number;
  deadlineMs?: number;
  limits?: Limits;
}

export interface SimReport {
  hosts: number;
  vms: number;
  drainedHosts: number;
  moves: number;
  notMovable: number;
  byStrategy: Record<string, number>;
  limits: Limits;
  deadlineMs: number;
  feasible: boolean;
  makespanMs: number | null;
  baselineMs: number | null;
  lowerBoundMs: number;
  speedupOverBaseline: number | null;
  overLowerBound: number | null;
  planMs: number;
  peakConcurrency: number;
}

/** mulberry32: small, fast, and the same everywhere. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function inventory(name: string, memoryBytes: number): HostInventory {
  return {
    name,
    protocol: 2,
    cpu: { model: 'sim', vendor: 'sim', flags: [], cores: 64 },
    memoryBytes,
    freeMemoryBytes: memoryBytes,
    accel: 'kvm',
    qemu: { version: '10.0.2', machineTypes: [DEFAULT_MACHINE] },
    migrationAddress: '0.0.0.0',
    agentVersion: 'sim',
  };
}

export function generateFleet(o: Pick<SimOptions, 'hosts' | 'vms' | 'seed'>): { hosts: FleetHost[]; vms: FleetVm[] } {
  const rand = rng(o.seed ?? 1);
  const width = String(o.hosts).length;
  const hosts: FleetHost[] = Array.from({ length: o.hosts }, (_, i) => ({
    name: `h${String(i + 1).padStart(width, '0')}`,
    state: 'ready',
    maintenance: false,
    inventory: inventory(`h${i + 1}`, (rand() < 0.5 ? 512 : 768) * GIB),
    // 10 or 25 Gb/s links
    linkBytesPerSec: rand() < 0.7 ? 1.25e9 : 3.125e9,
  }));
  const loads = new Map<string, HostLoad>();
  const sizes = [1, 2, 4, 8, 16];
  const vms: FleetVm[] = [];
  for (let i = 0; i < o.vms; i++) {
    const memoryBytes = sizes[Math.floor(rand() * sizes.length)]! * GIB;
    const heavy = rand() < 0.05;
    const evacRoll = rand();
    const evacuation: Evacuation = evacRoll < 0.7 ? 'live' : evacRoll < 0.9 ? 'postcopy-ok' : 'cold-ok';
    const spec = { memoryBytes, vcpus: 1 + Math.floor(rand() * 4), machine: DEFAULT_MACHINE, cpuModel: DEFAULT_CPU_MODEL, evacuation };
    // The scheduler's own judgement, on a random host first, then the next ones.
    const start = Math.floor(rand() * hosts.length);
    for (let k = 0; k < hosts.length; k++) {
      const h = hosts[(start + k) % hosts.length]!;
      const l = loads.get(h.name) ?? NO_LOAD;
      if (!judgeHostLoad(spec, h, l).accepted) continue;
      loads.set(h.name, { memoryBytes: l.memoryBytes + memoryBytes, pendingBytes: 0, vcpus: l.vcpus + spec.vcpus });
      vms.push({
        name: `vm${i + 1}`,
        host: h.name,
        state: rand() < 0.1 ? 'stopped' : 'running',
        spec,
        diskBytes: 0,
        dirtyBytesPerSec: heavy ? (200 + rand() * 1500) * MIB : rand() * 50 * MIB,
      });
      break;
    }
  }
  // Agents report memory not yet promised: as the store's loads say.
  const summed = loadsByHost(vms.map((v) => ({ host: v.host, memoryBytes: v.spec.memoryBytes, vcpus: v.spec.vcpus, pending: false })));
  for (const h of hosts) h.inventory!.freeMemoryBytes = h.inventory!.memoryBytes - (summed.get(h.name)?.memoryBytes ?? 0);
  return { hosts, vms };
}

export function runSim(o: SimOptions): { report: SimReport; plan: DrainPlan } {
  const limits = o.limits ?? DEFAULT_LIMITS;
  const deadlineMs = o.deadlineMs ?? 60 * 60_000;
  const fleet = generateFleet(o);
  const drain = fleet.hosts.slice(0, o.drain).map((h) => h.name);
  const t0 = performance.now();
  const plan = planDrain({ drain, hosts: fleet.hosts, vms: fleet.vms, deadlineMs, limits });
  const planMs = performance.now() - t0;
  const moves = toMoves(plan.plan, {});
  const links = new Map(fleet.hosts.map((h) => [h.name, h.linkBytesPerSec]));
  const linkOf = (h: string): number => links.get(h)!;
  const together = simulate(moves, linkOf, limits);
  const baseline = simulate(moves, linkOf, { outPerHost: 1, inPerHost: 1, cluster: 1 });
  const lower = lowerBoundMs(moves, linkOf);
  const finite = (x: number): number | null => (Number.isFinite(x) ? Math.round(x) : null);
  const byStrategy: Record<string, number> = {};
  for (const i of plan.plan) byStrategy[i.strategy] = (byStrategy[i.strategy] ?? 0) + 1;
  return {
    plan,
    report: {
      hosts: o.hosts,
      vms: fleet.vms.length,
      drainedHosts: drain.length,
      moves: moves.length,
      notMovable: plan.plan.length - moves.length,
      byStrategy,
      limits,
      deadlineMs,
      feasible: plan.feasible,
      makespanMs: finite(together.makespanMs),
      baselineMs: finite(baseline.makespanMs),
      lowerBoundMs: Math.round(lower),
      speedupOverBaseline: Number.isFinite(together.makespanMs) && together.makespanMs > 0 ? Number((baseline.makespanMs / together.makespanMs).toFixed(2)) : null,
      overLowerBound: Number.isFinite(together.makespanMs) && lower > 0 ? Number((together.makespanMs / lower).toFixed(2)) : null,
      planMs: Math.round(planMs),
      peakConcurrency: together.peakConcurrency,
    },
  };
}
