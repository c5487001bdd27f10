/**
 * One VM's whole life on one host, with real QEMU (TCG) and the real tiny guest: boot to READY, the boot
 * id seen from outside and from inside, pause/resume, re-attach after the managing process was SIGKILLed,
 * stop when the guest ignores ACPI, destroy, and refusals that must leave nothing behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { LocalVm, vmsDir } from '../../src/agent/vm.ts';
import { FerryError } from '../../src/common/errors.ts';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { processGone, runFiles } from '../../src/qemu/process.ts';

const MEM = 256 * MIB;
const uniq = (): string => `t${process.pid.toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

/** PIDs of live QEMUs whose command line names `agentDir`: ours alone, since the dir is a fresh mkdtemp. */
async function qemusUnder(agentDir: string): Promise<number[]> {
  const found: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(agentDir) && !processGone(Number(e))) found.push(Number(e));
  }
  return found;
}

/** Kills, by PID, every QEMU this test may have left in `agentDir`, then removes the dir. */
async function cleanup(agentDir: string): Promise<void> {
  for (const pid of await qemusUnder(agentDir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await rm(agentDir, { recursive: true, force: true });
}

test('boot → READY → boot id inside = outside; pause/resume; exists refused; stop without ACPI; start; destroy', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-vm-'));
  try {
    const name = uniq();
    const vm = await LocalVm.create(agentDir, defaultVmSpec(name, { memoryBytes: MEM }), { accel: 'tcg' });
    let st = await vm.status();
    assert.equal(st.state, 'running');
    assert.equal(st.qemuStatus, 'running');
    assert.equal(st.bootId?.length, 36);
    const files = runFiles(vm.runDir);
    assert.equal((await stat(files.qmpSocket)).mode & 0o777, 0o600);
    for (const f of ['spec.json', 'state.json', 'qemu.pid', 'serial.log', 'qemu.stderr', 'guest.sock']) {
      assert.ok(existsSync(join(vm.runDir, f)), f);
    }

    const ch = await vm.guest();
    try {
      assert.equal((await ch.info()).bootId, st.bootId);
    } finally {
      await ch.close();
    }

    st = await vm.pause();
    assert.equal(st.state, 'paused');
    assert.equal(st.qemuStatus, 'paused');
    st = await vm.resume();
    assert.equal(st.state, 'running');

    await assert.rejects(LocalVm.create(agentDir, defaultVmSpec(name, { memoryBytes: MEM }), { accel: 'tcg' }), { code: 'FERRY_E_VM_EXISTS' });
    assert.equal((await vm.status()).state, 'running', 'the refused create must not touch the running VM');

    const pid = vm.pid!;
    const bootId = st.bootId;
    const t0 = Date.now();
    st = await vm.stop({ timeoutMs: 1000 });
    assert.ok(Date.now() - t0 < 10_000);
    assert.equal(st.state, 'stopped');
    assert.equal(st.pid, null);
    assert.ok(processGone(pid));

    st = await vm.start();
    assert.equal(st.state, 'running');
    assert.equal(st.bootId?.length, 36);
    assert.notEqual(st.bootId, bootId, 'a new boot has a new boot id');

    const pid2 = vm.pid!;
    await vm.destroy({ timeoutMs: 500 });
    assert.ok(processGone(pid2));
    assert.ok(!existsSync(vm.runDir));
  } finally {
    await cleanup(agentDir);
  }
});

test('re-attach after the managing process was SIGKILLed: same QEMU, same boot id from the guest itself', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-vm-'));
  let child: ReturnType<typeof spawn> | undefined;
  try {
    const name = uniq();
    const vmModule = fileURLToPath(new URL('../../src/agent/vm.ts', import.meta.url));
    const specModule = fileURLToPath(new URL('../../src/common/spec.ts', import.meta.url));
    const script = join(agentDir, 'child.mts'); // .mts: ESM outside the package (top-level await)
    await writeFile(
      script,
      [
        `import { LocalVm } from ${JSON.stringify(vmModule)};`,
        `import { defaultVmSpec } from ${JSON.stringify(specModule)};`,
        `const vm = await LocalVm.create(${JSON.stringify(agentDir)}, defaultVmSpec(${JSON.stringify(name)}, { memoryBytes: ${MEM} }), { accel: 'tcg' });`,
        `const st = await vm.status();`,
        `console.log(JSON.stringify({ pid: st.pid, bootId: st.bootId }));`,
        `setInterval(() => {}, 1000);`,
      ].join('\n'),
    );
    child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'], cwd: fileURLToPath(new URL('../..', import.meta.url)) });
    const line = await new Promise<string>((resolve, reject) => {
      const rl = createInterface({ input: child!.stdout! });
      rl.once('line', resolve);
      child!.once('exit', (code) => reject(new Error(`child exited ${code} before reporting`)));
    });
    const fromChild = JSON.parse(line) as { pid: number; bootId: string };
    assert.equal(fromChild.bootId.length, 36);

    const exited = new Promise((r) => child!.once('exit', r));
    process.kill(child.pid!, 'SIGKILL');
    await exited;
    assert.ok(!processGone(fromChild.pid), 'QEMU must survive its manager');

    const vm = await LocalVm.attach(agentDir, name);
    assert.equal(vm.pid, fromChild.pid);
    const st = await vm.status();
    assert.equal(st.state, 'running');
    assert.equal(st.bootId, fromChild.bootId);
    const ch = await vm.guest();
    try {
      assert.equal((await ch.info()).bootId, fromChild.bootId);
    } finally {
      await ch.close();
    }
    // QMP serves one client: let go, then find the VM again the way a restarted agent does.
    await vm.detach();
    const listed = await LocalVm.list(agentDir);
    assert.deepEqual(listed.map((v) => [v.name, v.pid]), [[name, fromChild.pid]]);
    await listed[0]!.destroy({ timeoutMs: 500 });
    assert.ok(processGone(fromChild.pid));
    assert.ok(!existsSync(vm.runDir));
  } finally {
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
    await cleanup(agentDir);
  }
});

test('refusals leave nothing: memory beyond the host, bad name, guest timeout', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-vm-'));
  try {
    const huge = Math.ceil(totalmem() / MIB) * MIB + 1024 * MIB;
    await assert.rejects(LocalVm.create(agentDir, defaultVmSpec(uniq(), { memoryBytes: huge }), { accel: 'tcg' }), { code: 'FERRY_E_MEMORY_TOO_LARGE' });
    await assert.rejects(LocalVm.create(agentDir, { ...defaultVmSpec('ok'), name: 'Bad_Name' }, { accel: 'tcg' }), { code: 'FERRY_E_BAD_NAME' });
    await assert.rejects(LocalVm.create(agentDir, { ...defaultVmSpec('ok'), name: '../etc' }, { accel: 'tcg' }), { code: 'FERRY_E_BAD_NAME' });
    await assert.rejects(LocalVm.create(agentDir, { ...defaultVmSpec('ok'), vcpus: 0 }, { accel: 'tcg' }), { code: 'FERRY_E_BAD_SPEC' });
    assert.deepEqual(await readdir(vmsDir(agentDir)).catch(() => []), []);

    const name = uniq();
    await assert.rejects(
      LocalVm.create(agentDir, defaultVmSpec(name, { memoryBytes: 128 * MIB }), { accel: 'tcg', readyTimeoutMs: 200 }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_GUEST_TIMEOUT',
    );
    assert.ok(!existsSync(join(vmsDir(agentDir), name)), 'a failed boot removes its run dir');
    assert.deepEqual(await qemusUnder(agentDir), [], 'and kills its QEMU');
    await assert.rejects(LocalVm.attach(agentDir, name), { code: 'FERRY_E_VM_NOT_FOUND' });
  } finally {
    await cleanup(agentDir);
  }
});
