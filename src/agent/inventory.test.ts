import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AGENT_PROTOCOL } from '../common/protocol.ts';
import { MIB } from '../common/spec.ts';
import { buildInventory, freeMemory, HOST_RESERVE_BYTES, parseCpuinfo, readCpuFacts } from './inventory.ts';

const SAMPLE = `processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU
flags\t\t: fpu vme sse2 avx2 sse2

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU
flags\t\t: fpu vme sse2 avx2
`;

test('cpuinfo gives model, vendor, sorted unique flags and the processor count', () => {
  assert.deepEqual(parseCpuinfo(SAMPLE), {
    model: 'Intel(R) Xeon(R) CPU',
    vendor: 'GenuineIntel',
    flags: ['avx2', 'fpu', 'sse2', 'vme'],
    cores: 2,
  });
});

test('this host’s cpuinfo parses into something usable', async () => {
  const cpu = await readCpuFacts();
  assert.ok(cpu.cores >= 1);
  assert.notEqual(cpu.model, '');
  if (process.arch === 'x64') assert.ok(cpu.flags.includes('sse2'));
});

test('free memory is total less the VMs and the reserve, never negative', () => {
  assert.equal(freeMemory(4096 * MIB, 1024 * MIB), 4096 * MIB - 1024 * MIB - HOST_RESERVE_BYTES);
  assert.equal(freeMemory(256 * MIB, 1024 * MIB), 0);
  const inv = buildInventory({
    name: 'h1',
    cpu: parseCpuinfo(SAMPLE),
    qemu: { accel: 'tcg', version: '10.0.2', machineTypes: ['pc-q35-10.0'] },
    migrationAddress: '10.0.0.1',
    committedBytes: 256 * MIB,
    totalBytes: 2048 * MIB,
  });
  assert.equal(inv.protocol, AGENT_PROTOCOL);
  assert.equal(inv.freeMemoryBytes, 2048 * MIB - 256 * MIB - HOST_RESERVE_BYTES);
  assert.equal(inv.migrationAddress, '10.0.0.1');
  assert.match(inv.agentVersion, /^\d+\.\d+\.\d+/);
});
