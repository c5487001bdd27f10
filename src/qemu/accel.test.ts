import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findProbeKernel, probeAccel, probeBoot, qemuInfo } from './accel.ts';

test('qemuInfo reads the version and the machine types from the binary', async () => {
  const info = await qemuInfo();
  assert.match(info.version, /^\d+\.\d+\.\d+$/);
  assert.ok(info.machineTypes.includes('q35'));
  assert.ok(info.machineTypes.some((m) => m.startsWith('pc-q35-')));
});

test('FERRY_ACCEL overrides the probe; a bad value is refused', async () => {
  const before = process.env.FERRY_ACCEL;
  try {
    process.env.FERRY_ACCEL = 'tcg';
    assert.equal((await probeAccel()).accel, 'tcg');
    process.env.FERRY_ACCEL = 'hvf';
    await assert.rejects(probeAccel(), { code: 'FERRY_E_ACCEL' });
  } finally {
    if (before === undefined) delete process.env.FERRY_ACCEL;
    else process.env.FERRY_ACCEL = before;
  }
});

test('the probe sees a guest that runs (TCG), so a KVM refusal means something', async (t) => {
  const kernel = await findProbeKernel();
  if (kernel === undefined) return t.skip('no guest kernel (npm run setup)');
  const r = await probeBoot('tcg', kernel, 20_000);
  assert.ok(r.ok, r.detail);
});

test('probeAccel decides, caches the verdict per kernel release + QEMU version, and reports it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-accel-'));
  const before = process.env.FERRY_ACCEL;
  try {
    delete process.env.FERRY_ACCEL;
    const cacheFile = join(dir, 'accel.json');
    const first = await probeAccel({ timeoutMs: 3000, cacheFile });
    assert.ok(first.accel === 'kvm' || first.accel === 'tcg');
    assert.equal(first.cached, false);
    assert.ok(first.reason.length > 0);
    const second = await probeAccel({ timeoutMs: 3000, cacheFile });
    assert.deepEqual({ ...second, cached: false }, first);
    assert.equal(second.cached, true);
    const file = JSON.parse(await readFile(cacheFile, 'utf8')) as { verdicts: Record<string, unknown> };
    assert.equal(Object.keys(file.verdicts).length, 1);
    assert.match(Object.keys(file.verdicts)[0]!, / qemu-\d+\.\d+\.\d+$/);
  } finally {
    if (before !== undefined) process.env.FERRY_ACCEL = before;
    await rm(dir, { recursive: true, force: true });
  }
});
