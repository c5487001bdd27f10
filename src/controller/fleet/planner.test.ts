import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { HostInventory } from '../../common/protocol.ts';
import { compatibility, placeVm } from '../scheduler.ts';
import { DEFAULT_LIMITS, simulate } from './fluid.ts';
import { planDrain, type FleetHost, type FleetVm } from './planner.ts';
import { planRebalance } from './rebalance.ts';
import { runSim } from './sim.ts';

const MiB = 1024 * 1024;
const inv = (name: string, over: Partial<HostInventory['qemu']> = {}): HostInventory => ({
  name,
  protocol: 2,
  cpu: { model: 'x', vendor: 'x', flags: [], cores: 8 },
  memoryBytes: 8192 * MiB,
  freeMemoryBytes: 8192 * MiB,
  accel: 'tcg',
  qemu: { version: '10.0.2', machineTypes: ['pc-q35-10.0'], cpuDefinitions: [{ name: 'qemu64', usable: true, unavailableFeatures: [] }], migrationCapabilities: ['postcopy-ram', 'multifd'], ...over },
  migrationAddress: '10.0.0.1',
  agentVersion: 'test',
});
const host = (name: string, over: Partial<HostInventory['qemu']> = {}): FleetHost => ({ name, state: 'ready', maintenance: false, inventory: inv(name, over), linkBytesPerSec: 100 * MiB });
const vm = (name: string, h: string, o: Partial<FleetVm> & { evacuation?: 'live' | 'postcopy-ok' | 'cold-ok' } = {}): FleetVm => ({
  name,
  host: h,
  state: 'running',
  spec: { memoryBytes: 256 * MiB, vcpus: 1, machine: 'pc-q35-10.0', cpuModel: 'qemu64', evacuation: o.evacuation },
  diskBytes: 0,
  dirtyBytesPerSec: 0,
  ...o,
});

test('the scheduler refuses a host lacking the machine type, the CPU model or a capability, naming it; other QEMU versions are fine', () => {
  const req = { memoryBytes: 256 * MiB, vcpus: 1, machine: 'pc-q35-10.0', cpuModel: 'qemu64' };
  assert.equal(compatibility(req, inv('a', { version: '9.2.0', machineTypes: ['pc-q35-10.0', 'pc-q35-9.2'] })), null);
  assert.deepEqual(compatibility(req, inv('a', { machineTypes: ['pc-q35-9.2'] }))?.code, 'FERRY_E_MACHINE_TYPE');
  assert.match(compatibility(req, inv('a', { machineTypes: ['pc-q35-9.2'] }))!.reason, /pc-q35-10\.0/);
  assert.equal(compatibility(req, inv('a', { cpuDefinitions: [{ name: 'qemu64', usable: false, unavailableFeatures: ['lm'] }] }))?.code, 'FERRY_E_CPU_MODEL');
  assert.equal(compatibility({ ...req, cpuFeatures: ['sse2', 'avx'] }, inv('a', { cpuExpansions: { qemu64: ['sse2'] } }))?.code, 'FERRY_E_CPU_MODEL');
  assert.equal(compatibility({ ...req, capabilities: ['postcopy-ram'] }, inv('a', { migrationCapabilities: ['multifd'] }))?.code, 'FERRY_E_QEMU_CAPABILITY');
  const hosts = [host('a', { machineTypes: ['pc-q35-9.2'] }), host('b')];
  assert.equal(placeVm(req, hosts, []).host, 'b');
  assert.throws(() => placeVm({ ...req, host: 'a' }, hosts, []), (e: { code?: string }) => e.code === 'FERRY_E_MACHINE_TYPE');
});

test('a drain plan: stopped VMs cold, a fast dirtier up the ladder its policy allows, an unmovable one reported, biggest risk first', () => {
  const hosts = [host('h1'), host('h2'), host('h3', { machineTypes: [] })];
  const vms = [
    vm('quiet', 'h1'),
    vm('off', 'h1', { state: 'stopped' }),
    vm('fast', 'h1', { dirtyBytesPerSec: 200 * MiB, evacuation: 'cold-ok' }),
    vm('stuck', 'h1', { dirtyBytesPerSec: 200 * MiB }),
  ];
  const p = planDrain({ drain: ['h1'], hosts, vms, deadlineMs: 120_000, limits: DEFAULT_LIMITS });
  const by = new Map(p.plan.map((i) => [i.vm, i]));
  assert.equal(by.get('quiet')?.strategy, 'live');
  assert.equal(by.get('off')?.strategy, 'cold');
  assert.equal(by.get('fast')?.strategy, 'postcopy');
  assert.equal(by.get('stuck')?.strategy, 'none');
  assert.equal(by.get('stuck')?.code, 'FERRY_E_NOT_CONVERGING');
  for (const v of ['quiet', 'off', 'fast']) assert.equal(by.get(v)?.destination, 'h2', by.get(v)?.reason);
  assert.equal(p.feasible, false, 'one VM cannot move');
  assert.equal(p.plan[0]?.vm, 'stuck');
  // A deadline too short for post-copy: the VM that may go cold goes cold.
  const tight = planDrain({ drain: ['h1'], hosts, vms: [vms[2]!], deadlineMs: 3000, limits: DEFAULT_LIMITS });
  assert.equal(tight.plan[0]?.strategy, 'cold');
});

test('no host with the machine type: reported with the code and the host named, never planned', () => {
  const p = planDrain({ drain: ['h1'], hosts: [host('h1'), host('h3', { machineTypes: ['pc-i440fx-10.0'] })], vms: [vm('a', 'h1')], deadlineMs: 60_000, limits: DEFAULT_LIMITS });
  assert.equal(p.plan[0]?.code, 'FERRY_E_MACHINE_TYPE');
  assert.match(p.plan[0]!.reason, /h3: .*pc-q35-10\.0/);
});

test('the fluid model shares a link and respects the limits', () => {
  const link = () => 100 * MiB;
  const moves = ['a', 'b'].map((n) => ({ vm: n, from: 'h1', to: 'h2', strategy: 'cold' as const, bytes: 100 * MiB, dirtyBytesPerSec: 0, capBytesPerSec: 0 }));
  const together = simulate(moves, link, DEFAULT_LIMITS);
  const alone = simulate(moves, link, { outPerHost: 1, inPerHost: 1, cluster: 1 });
  assert.equal(Math.round(together.makespanMs), 3000, 'two share the link: 2 s of bytes + 1 s setup');
  assert.equal(Math.round(alone.makespanMs), 4000);
  assert.equal(together.peakConcurrency, 2);
});

test('rebalance moves the cheapest VM from the fullest host and explains it', () => {
  const hosts = [host('a'), host('b')];
  const vms = [vm('big', 'a', { spec: { memoryBytes: 2048 * MiB, vcpus: 1, machine: 'pc-q35-10.0', cpuModel: 'qemu64' } }), vm('hot', 'a', { dirtyBytesPerSec: 50 * MiB }), vm('cold1', 'a')];
  const r = planRebalance({ hosts, vms, threshold: 0.1, maxMoves: 5 });
  assert.ok(r.moves.length >= 1);
  assert.equal(r.moves[0]?.vm, 'cold1', 'same size, no dirtying: cheaper than hot');
  assert.ok(r.spreadAfter < r.spreadBefore);
  assert.match(r.moves[0]!.reason, /a \d+% → \d+%/);
});

test('the simulator runs the same planner over a generated fleet: beats one at a time, never beats the bound', () => {
  const { report } = runSim({ hosts: 100, vms: 1500, drain: 5, seed: 7 });
  assert.ok(report.moves > 0);
  assert.ok(report.makespanMs !== null && report.baselineMs !== null);
  assert.ok(report.makespanMs <= report.baselineMs);
  assert.ok(report.makespanMs >= report.lowerBoundMs);
});
