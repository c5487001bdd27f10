import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../common/errors.ts';
import type { HostInventory } from '../common/protocol.ts';
import { placeVm, type HostView, type VmLoad } from './scheduler.ts';

const MiB = 1024 * 1024;
const inv = (name: string, memMiB: number, freeMiB: number, cores = 2): HostInventory => ({
  name,
  protocol: 1,
  cpu: { model: 'qemu64', vendor: 'x', flags: [], cores },
  memoryBytes: memMiB * MiB,
  freeMemoryBytes: freeMiB * MiB,
  accel: 'tcg',
  qemu: { version: '10.0.2', machineTypes: ['pc-q35-10.0'] },
  migrationAddress: '10.0.0.1',
  agentVersion: '0.1.0',
});
const host = (name: string, memMiB: number, freeMiB: number, over: Partial<HostView> = {}): HostView => ({
  name,
  state: 'ready',
  maintenance: false,
  inventory: inv(name, memMiB, freeMiB),
  ...over,
});
const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof FerryError);
    return e.code;
  }
  return 'no error';
};

test('prefers the host with most free memory', () => {
  const p = placeVm({ memoryBytes: 256 * MiB, vcpus: 1 }, [host('a', 4096, 1000), host('b', 4096, 3000)], []);
  assert.equal(p.host, 'b');
  assert.equal(p.why.length, 2);
  assert.ok(p.why.every((j) => j.accepted));
});

test('store-known VMs count: pending ones against the agent view, all against the total', () => {
  const vms: VmLoad[] = [
    { host: 'b', memoryBytes: 2500 * MiB, vcpus: 1, pending: true },
    { host: 'a', memoryBytes: 100 * MiB, vcpus: 1, pending: false },
  ];
  assert.equal(placeVm({ memoryBytes: 256 * MiB, vcpus: 1 }, [host('a', 4096, 1000), host('b', 4096, 3000)], vms).host, 'a');
});

test('never maintenance or unreachable; none fits → NO_CAPACITY with why', () => {
  const hosts = [host('a', 4096, 4000, { maintenance: true }), host('b', 4096, 4000, { state: 'unreachable' }), host('c', 4096, 100)];
  try {
    placeVm({ memoryBytes: 256 * MiB, vcpus: 1 }, hosts, []);
    assert.fail('placed');
  } catch (e) {
    assert.ok(e instanceof FerryError);
    assert.equal(e.code, 'FERRY_E_NO_CAPACITY');
    const why = e.details?.why as { host: string; accepted: boolean; reason: string }[];
    assert.deepEqual(why.map((j) => [j.host, j.accepted]), [['a', false], ['b', false], ['c', false]]);
    assert.match(why[0]!.reason, /maintenance/);
    assert.match(why[1]!.reason, /unreachable/);
    assert.match(why[2]!.reason, /memory/);
  }
});

test('vCPUs overcommit at most 4× cores', () => {
  const vms: VmLoad[] = [{ host: 'a', memoryBytes: MiB, vcpus: 7, pending: false }];
  assert.equal(placeVm({ memoryBytes: 16 * MiB, vcpus: 1 }, [host('a', 4096, 4000)], vms).host, 'a');
  assert.equal(code(() => placeVm({ memoryBytes: 16 * MiB, vcpus: 2 }, [host('a', 4096, 4000)], vms)), 'FERRY_E_NO_CAPACITY');
});

test('explicit host: unknown → HOST_NOT_FOUND, not fitting → NO_CAPACITY, fitting → that host', () => {
  const hosts = [host('a', 4096, 3000), host('b', 4096, 200)];
  assert.equal(code(() => placeVm({ memoryBytes: 256 * MiB, vcpus: 1, host: 'zz' }, hosts, [])), 'FERRY_E_HOST_NOT_FOUND');
  assert.equal(code(() => placeVm({ memoryBytes: 256 * MiB, vcpus: 1, host: 'b' }, hosts, [])), 'FERRY_E_NO_CAPACITY');
  assert.equal(placeVm({ memoryBytes: 128 * MiB, vcpus: 1, host: 'b' }, hosts, []).host, 'b');
});

test('more memory than the biggest host → MEMORY_TOO_LARGE', () => {
  assert.equal(code(() => placeVm({ memoryBytes: 8192 * MiB, vcpus: 1 }, [host('a', 4096, 4000)], [])), 'FERRY_E_MEMORY_TOO_LARGE');
});

test('no hosts → NO_CAPACITY', () => {
  assert.equal(code(() => placeVm({ memoryBytes: 16 * MiB, vcpus: 1 }, [], [])), 'FERRY_E_NO_CAPACITY');
});
