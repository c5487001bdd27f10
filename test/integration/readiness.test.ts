/**
 * Readiness is not state: a VM is `running` when QEMU runs its guest, and `ready` once the guest answered.
 * With real QEMU (TCG) and the tiny guest: a create that does not wait returns while the guest boots and the
 * VM becomes ready by itself; a create that waits briefly returns a running VM that is not ready yet, still
 * not a failed one; a guest that never answers (a qemu-guest-agent port nobody serves) runs on, not ready,
 * and is stopped and deleted like any other.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalVm, vmsDir } from '../../src/agent/vm.ts';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { processGone } from '../../src/qemu/process.ts';
import { waitFor } from './helpers.ts';

const uniq = (): string => `r${process.pid.toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

async function killUnder(agentDir: string): Promise<void> {
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(agentDir) && !processGone(Number(e))) {
      try {
        process.kill(Number(e), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  await rm(agentDir, { recursive: true, force: true });
}

test('readiness: skip and a short wait return a running VM that becomes ready; a silent guest runs, not ready', async () => {
  const agentDir = await mkdtemp(join(tmpdir(), 'ferry-ready-'));
  try {
    const t0 = Date.now();
    const skip = await LocalVm.create(agentDir, defaultVmSpec(uniq(), { memoryBytes: 128 * MIB }), { accel: 'tcg', readiness: 'skip' });
    const first = await skip.status();
    const returnedMs = Date.now() - t0;
    assert.equal(first.state, 'running');
    assert.equal(first.ready, false, `returned after ${returnedMs} ms, before the guest could answer`);
    assert.equal(first.bootId, null);
    const ready = await waitFor('the tiny guest to become ready', async () => {
      const st = await skip.status();
      return st.ready ? st : undefined;
    }, 60_000, 50);
    assert.match(ready.bootId ?? '', /^[0-9a-f-]{36}$/);
    console.log(`readiness: create returned in ${returnedMs} ms; ready after ${Date.now() - t0} ms`);
    // The boot id the watcher recorded is the guest's own.
    const ch = await skip.guest();
    try {
      assert.equal((await ch.info()).bootId, ready.bootId);
    } finally {
      await ch.close();
    }

    // A wait shorter than the boot: the VM is running and kept, merely not ready yet.
    const short = await LocalVm.create(agentDir, defaultVmSpec(uniq(), { memoryBytes: 128 * MIB }), { accel: 'tcg', readiness: 'wait', readyTimeoutMs: 100 });
    const s1 = await short.status();
    assert.equal(s1.state, 'running');
    assert.equal(s1.ready, false);
    await waitFor('the slow guest to become ready anyway', async () => (await short.status()).ready, 60_000);

    // No one answers on the qemu-guest-agent port (the tiny guest has no qemu-ga): still a running VM.
    const silent = await LocalVm.create(
      agentDir,
      defaultVmSpec(uniq(), { memoryBytes: 128 * MIB, guestChannel: false, guestAgent: true }),
      { accel: 'tcg', readiness: 'wait', readyTimeoutMs: 3000 },
    );
    const s2 = await silent.status();
    assert.equal(s2.state, 'running');
    assert.equal(s2.ready, false);
    assert.equal(s2.bootId, null);
    const stopped = await silent.stop({ force: true });
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.ready, false);

    for (const vm of [skip, short, silent]) await vm.destroy();
    assert.deepEqual(await readdir(vmsDir(agentDir)), []);
  } finally {
    await killUnder(agentDir);
  }
});
