import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { defaultVmSpec, MIB } from '../common/spec.ts';
import { LocalVm, vmStateOf, vmsDir } from './vm.ts';

test('QEMU run states map onto the four VM states; unknown ones count as paused', () => {
  assert.equal(vmStateOf(null), 'stopped');
  assert.equal(vmStateOf('shutdown'), 'stopped');
  assert.equal(vmStateOf('running'), 'running');
  assert.equal(vmStateOf('inmigrate'), 'migrating');
  assert.equal(vmStateOf('finish-migrate'), 'migrating');
  for (const s of ['paused', 'postmigrate', 'prelaunch', 'suspended', 'io-error', 'guest-panicked', 'some-future-state']) {
    assert.equal(vmStateOf(s), 'paused', s);
  }
});

test('admission refuses before anything is created or started', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-vmunit-'));
  try {
    const opts = { accel: 'tcg' as const };
    const huge = Math.ceil(totalmem() / MIB) * MIB;
    await assert.rejects(LocalVm.create(agentDir, defaultVmSpec('a1', { memoryBytes: huge }), opts), { code: 'FERRY_E_MEMORY_TOO_LARGE' });
    await assert.rejects(LocalVm.create(agentDir, { ...defaultVmSpec('a1'), name: 'A1' }, opts), { code: 'FERRY_E_BAD_NAME' });
    await assert.rejects(LocalVm.create(agentDir, { name: 'a1' }, opts), { code: 'FERRY_E_BAD_SPEC' });
    await assert.rejects(LocalVm.create(agentDir, null, opts), { code: 'FERRY_E_BAD_NAME' });
    const withNic = defaultVmSpec('a1', { nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' }] });
    await assert.rejects(LocalVm.create(agentDir, withNic, opts), { code: 'FERRY_E_BAD_INPUT' });
    const withDisk = defaultVmSpec('a1', { disks: [{ id: 'vda', sizeBytes: MIB, shared: true, path: join(agentDir, 'nope.qcow2') }] });
    await assert.rejects(LocalVm.create(agentDir, withDisk, opts), { code: 'FERRY_E_BAD_SPEC' });
    assert.deepEqual(await readdir(agentDir), []);
  } finally {
    await rm(agentDir, { recursive: true, force: true });
  }
});

test('a stopped VM (spec.json, no QEMU) is an existing VM: create refuses, attach reports it stopped', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-vmunit-'));
  try {
    const spec = defaultVmSpec('s1', { memoryBytes: 128 * MIB });
    const dir = join(vmsDir(agentDir), 's1');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'spec.json'), JSON.stringify(spec));
    await writeFile(join(dir, 'state.json'), JSON.stringify({ version: 1, accel: 'tcg', taps: {}, bootId: 'x'.repeat(36), startedAt: null }));
    await writeFile(join(dir, 'qemu.pid'), `${process.pid}\n`); // a live PID that is not our QEMU
    await assert.rejects(LocalVm.create(agentDir, spec, { accel: 'tcg' }), { code: 'FERRY_E_VM_EXISTS' });
    const vm = await LocalVm.attach(agentDir, 's1');
    const st = await vm.status();
    assert.equal(st.state, 'stopped');
    assert.equal(st.pid, null);
    assert.equal(st.bootId, null);
    assert.deepEqual((await LocalVm.list(agentDir)).map((v) => v.name), ['s1']);
    await assert.rejects(vm.pause(), { code: 'FERRY_E_VM_STATE' });
    await assert.rejects(vm.guest(), { code: 'FERRY_E_VM_STATE' });
    await assert.rejects(LocalVm.attach(agentDir, 'nope'), { code: 'FERRY_E_VM_NOT_FOUND' });
    await assert.rejects(LocalVm.attach(agentDir, '../x'), { code: 'FERRY_E_BAD_NAME' });
    await vm.destroy();
    assert.deepEqual(await readdir(vmsDir(agentDir)), []);
  } finally {
    await rm(agentDir, { recursive: true, force: true });
  }
});
