/**
 * The drain planner: plain data in (hosts with their links, VMs with their size, dirty rate and
 * evacuation policy, the deadline, the limits), a plan out — for each VM its destination and why, its
 * strategy and predicted end, and whether the whole drain meets the deadline. Pure: the controller's
 * drain runs it over the store, `ferry sim` over simulated hosts.
 *
 * Per VM the ladder is: pre-copy (the orchestrator raises the downtime limit within the VM's budget when
 * it does not converge) → post-copy where the VM's policy allows (`--evacuation postcopy-ok` or
 * `cold-ok`) → cold for VMs marked `cold-ok`. A stopped VM moves cold. The first rung predicted to end
 * within the deadline is taken; VMs predicted late after the fluid model ran them together climb one rung
 * and the model runs again. A VM no host takes, or that cannot converge and may not go further up, is
 * `none`: reported with the reason, never tried.
 */
import type { Evacuation, VmSpec } from '../../common/spec.ts';
import { formatBytes } from '../../common/units.ts';
import { freeMemoryOf, judgeHostLoad, loadsByHost, moveRequest, NO_LOAD, type HostLoad, type HostView, type Judgement, type VmLoad } from '../scheduler.ts';
import { isolatedMs, simulate, type Limits, type Move, type Strategy } from './fluid.ts';


/** A migration link assumed when nothing better is known: 10 Gb/s. */
export const DEFAULT_LINK_BYTES_PER_SEC = 1.25e9;
/** Pre-copy is trusted to converge only while the guest dirties less than this share of the link. */
export const CONVERGE_SHARE = 0.9;
/** Above this share of the link the downtime limit must rise toward the VM's budget. */
export const RAISE_SHARE = 0.5;

export interface FleetHost extends HostView {
  linkBytesPerSec: number;
}

export interface FleetVm {
  name: string;
  host: string;
  state: string;
  spec: Pick<VmSpec, 'memoryBytes' | 'vcpus' | 'machine' | 'cpuModel'> & { evacuation?: Evacuation | undefined };
  /** Local (non-shared) disk bytes a move copies. */
  diskBytes: number;
  /** Measured or last seen; null: unknown (planned as idle, and said so). */
  dirtyBytesPerSec: number | null;
}

export interface DrainRequest {
  /** The hosts to empty (one for `ferry host drain`, many in the simulator). */
  drain: readonly string[];
  hosts: readonly FleetHost[];
  vms: readonly FleetVm[];
  deadlineMs: number;
  limits: Limits;
  /** Each migration's cap in bytes/s (the drain's --bandwidth); 0 = none. */
  bandwidthBytesPerSec?: number;
}

export interface DrainPlanItem {
  vm: string;
  /** Where the VM was (a simulator drains many hosts at once). */
  source: string;
  destination: string | null;
  reason: string;
  predictedMs: number | null;
  strategy: Strategy;
  /** Predicted time alone on its links over the deadline: the order the drain submits in. */
  risk: number;
  bytes: number;
  dirtyBytesPerSec: number | null;
  /** A stable code when the VM cannot move (FERRY_E_NO_CAPACITY, FERRY_E_MACHINE_TYPE, FERRY_E_NOT_CONVERGING, …). */
  code?: string;
  /** The hosts that refused it and why (at most a few). */
  refused?: Judgement[];
}

export interface DrainPlan {
  deadlineMs: number;
  feasible: boolean;
  /** When the last VM is predicted to be moved (null when none moves). */
  predictedMs: number | null;
  plan: DrainPlanItem[];
}

const RUNGS: Exclude<Strategy, 'none'>[] = ['live', 'postcopy', 'cold'];

function allowed(vm: FleetVm): Exclude<Strategy, 'none'>[] {
  if (vm.state === 'stopped') return ['cold'];
  const e = vm.spec.evacuation ?? 'live';
  return e === 'cold-ok' ? RUNGS : e === 'postcopy-ok' ? ['live', 'postcopy'] : ['live'];
}

const rate = (b: number): string => `${formatBytes(b)}/s`;
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

function shareOf(vm: FleetVm, link: number, r: DrainRequest): number {
  const s = link / Math.max(1, r.limits.outPerHost);
  return r.bandwidthBytesPerSec ? Math.min(s, r.bandwidthBytesPerSec) : s;
}

/** The first rung that ends alone within the deadline, else the fastest that ends at all. */
function chooseRung(vm: FleetVm, share: number, deadlineMs: number, from = 0): { strategy: Strategy; ms: number; why: string } {
  const bytes = vm.spec.memoryBytes + vm.diskBytes;
  const d = vm.dirtyBytesPerSec ?? 0;
  const rungs = allowed(vm).filter((s) => RUNGS.indexOf(s) >= from);
  let best: { strategy: Strategy; ms: number } | null = null;
  for (const s of rungs) {
    if (s === 'live' && d >= share * CONVERGE_SHARE) continue;
    const ms = isolatedMs({ strategy: s, bytes, dirtyBytesPerSec: d }, share);
    if (ms <= deadlineMs) return { strategy: s, ms, why: rungWhy(vm, s, share) };
    if (best === null || ms < best.ms) best = { strategy: s, ms };
  }
  if (best) return { ...best, why: `${rungWhy(vm, best.strategy, share)}; alone it needs ${secs(best.ms)}, over the deadline` };
  return {
    strategy: 'none',
    ms: Infinity,
    why: `dirties ${rate(d)}, faster than pre-copy can send at its ${rate(share)} share, and its policy allows no post-copy or cold move (--evacuation)`,
  };
}

function rungWhy(vm: FleetVm, s: Strategy, share: number): string {
  const d = vm.dirtyBytesPerSec;
  const dirty = d === null ? 'dirty rate unknown' : `dirties ${rate(d)}`;
  if (vm.state === 'stopped') return 'stopped: moves cold';
  if (s === 'live') return d !== null && d > share * RAISE_SHARE ? `live, ${dirty} of a ${rate(share)} share: the downtime limit will rise toward its budget` : `live, ${dirty}`;
  if (s === 'postcopy') return `post-copy (its policy allows it): ${dirty}, pre-copy alone would not meet the deadline at a ${rate(share)} share`;
  return `cold (its policy allows it): ${dirty}, neither pre-copy nor post-copy meets the deadline`;
}

/** Plans emptying `drain`; see the module comment for the ladder. */
export function planDrain(r: DrainRequest): DrainPlan {
  const draining = new Set(r.drain);
  const hostsByName = new Map(r.hosts.map((h) => [h.name, h]));
  const linkOf = (h: string): number => hostsByName.get(h)?.linkBytesPerSec ?? DEFAULT_LINK_BYTES_PER_SEC;
  const targets = r.hosts.filter((h) => !draining.has(h.name)).sort((a, b) => a.name.localeCompare(b.name));
  const loadList: VmLoad[] = r.vms.map((v) => ({ host: v.host, memoryBytes: v.spec.memoryBytes, vcpus: v.spec.vcpus, pending: false }));
  const loads = loadsByHost(loadList);
  const movers = r.vms.filter((v) => draining.has(v.host));

  const items = movers.map((vm) => {
    const share = shareOf(vm, linkOf(vm.host), r);
    const rung = chooseRung(vm, share, r.deadlineMs);
    const item: DrainPlanItem = {
      vm: vm.name,
      source: vm.host,
      destination: null,
      reason: rung.why,
      predictedMs: null,
      strategy: rung.strategy,
      risk: rung.ms === Infinity ? Infinity : rung.ms / Math.max(1, r.deadlineMs),
      bytes: vm.spec.memoryBytes + vm.diskBytes,
      dirtyBytesPerSec: vm.dirtyBytesPerSec,
    };
    if (rung.strategy === 'none') item.code = 'FERRY_E_NOT_CONVERGING';
    return { vm, item, share };
  });
  // Biggest risks first: they get the roomiest hosts and the first slots.
  items.sort((a, b) => b.item.risk - a.item.risk || b.item.bytes - a.item.bytes || a.vm.name.localeCompare(b.vm.name));

  for (const { vm, item } of items) {
    if (item.strategy === 'none') continue;
    const source = hostsByName.get(vm.host)?.inventory;
    const req = moveRequest(vm.spec, source, item.strategy === 'postcopy' ? { mode: 'live', postcopy: 'always', multifd: 0, xbzrle: false, autoConverge: false } : undefined);
    // The roomiest host that takes it, tried from the most free memory down (the scheduler's own order);
    // one judgement per host tried, not one per host of the fleet.
    let best: Judgement | null = null;
    const refused: Judgement[] = [];
    const tried = new Set<string>();
    while (best === null && tried.size < targets.length) {
      let pick: FleetHost | null = null;
      let pickFree = -1;
      for (const h of targets) {
        if (tried.has(h.name)) continue;
        const f = freeMemoryOf(h, loads.get(h.name) ?? NO_LOAD);
        if (f > pickFree) [pick, pickFree] = [h, f];
      }
      if (pick === null) break;
      tried.add(pick.name);
      const j = judgeHostLoad(req, pick, loads.get(pick.name) ?? NO_LOAD);
      if (j.accepted) best = j;
      else {
        refused.push(j);
        // Hosts with less free memory than it needs refuse it for memory too.
        if (pickFree < vm.spec.memoryBytes && j.code === undefined) break;
      }
    }
    if (refused.length > 0) item.refused = refused.slice(0, 5);
    if (best === null) {
      item.strategy = 'none';
      const first = refused.find((j) => j.code !== undefined);
      item.code = refused.length > 0 && refused.every((j) => j.code === first?.code) && first?.code ? first.code : 'FERRY_E_NO_CAPACITY';
      item.reason = refused.length === 0 ? 'no other host' : `no host takes it: ${refused.slice(0, 3).map((j) => `${j.host}: ${j.reason}`).join('; ')}${refused.length > 3 ? `; and ${refused.length - 3} more` : ''}`;
      continue;
    }
    item.destination = best.host;
    item.reason = `${item.reason}; to ${best.host}: ${best.reason}${refused.length > 0 ? ` (refused: ${refused.slice(0, 2).map((j) => `${j.host}: ${j.reason}`).join('; ')}${refused.length > 2 ? '; …' : ''})` : ''}`;
    const l: HostLoad = loads.get(best.host) ?? { memoryBytes: 0, pendingBytes: 0, vcpus: 0 };
    loads.set(best.host, { ...l, memoryBytes: l.memoryBytes + vm.spec.memoryBytes, vcpus: l.vcpus + vm.spec.vcpus });
  }

  // Together they share links and slots: predict with the fluid model; late VMs climb a rung.
  let result = simulate(toMoves(items.map((x) => x.item), r), linkOf, r.limits);
  for (let round = 0; round < RUNGS.length && result.makespanMs > r.deadlineMs; round++) {
    let climbed = false;
    for (const x of items) {
      const f = result.finishMs.get(x.item.vm);
      if (x.item.strategy === 'none' || f === undefined || f <= r.deadlineMs) continue;
      const next = RUNGS.indexOf(x.item.strategy as Exclude<Strategy, 'none'>) + 1;
      const up = allowed(x.vm).find((s) => RUNGS.indexOf(s) >= next);
      if (up === undefined) continue;
      x.item.strategy = up;
      x.item.reason = `${rungWhy(x.vm, up, x.share)}; escalated: with the others it would end at ${secs(f)}; to ${x.item.destination}`;
      climbed = true;
    }
    if (!climbed) break;
    result = simulate(toMoves(items.map((x) => x.item), r), linkOf, r.limits);
  }
  for (const { item } of items) {
    const f = result.finishMs.get(item.vm);
    item.predictedMs = f === undefined || !Number.isFinite(f) ? null : Math.round(f);
  }
  const plan = items.map((x) => x.item);
  const moved = plan.filter((i) => i.strategy !== 'none');
  const ends = moved.map((i) => i.predictedMs);
  const predictedMs = ends.length === 0 ? null : ends.some((e) => e === null) ? null : Math.max(...(ends as number[]));
  return {
    deadlineMs: r.deadlineMs,
    feasible: moved.length === plan.length && predictedMs !== null && predictedMs <= r.deadlineMs,
    predictedMs: plan.length === 0 ? 0 : predictedMs,
    plan,
  };
}

/** The moves of a plan, in its order (VMs that cannot move are left out). */
export function toMoves(plan: readonly DrainPlanItem[], r: Pick<DrainRequest, 'bandwidthBytesPerSec'>): Move[] {
  return plan
    .filter((i) => i.strategy !== 'none' && i.destination !== null)
    .map((i) => ({
      vm: i.vm,
      from: i.source,
      to: i.destination!,
      strategy: i.strategy as Move['strategy'],
      bytes: i.bytes,
      dirtyBytesPerSec: i.dirtyBytesPerSec ?? 0,
      capBytesPerSec: r.bandwidthBytesPerSec ?? 0,
    }));
}
