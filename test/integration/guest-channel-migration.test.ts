/**
 * The guest channel (virtio-serial, QEMU's `guest.sock`) across live migrations there and back on one
 * machine: after each hop a new connection to the destination's socket is answered at once, by the same
 * boot. The conditions are those under which ferry-guest used to lose the first reply to a new host (its
 * data read before the driver had handled the host's PORT_OPEN): a channel held on the source while it
 * migrates, a guest that writes memory, and one connection per command as the agent makes them.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { LocalVm } from '../../src/agent/vm.ts';
import type { GuestChannel } from '../../src/guest/client.ts';
import { prepare } from '../../src/agent/migration/prepare.ts';
import { sourceVmOf, startPerform } from '../../src/agent/migration/perform.ts';
import { finish } from '../../src/agent/migration/finish.ts';
import { confirm } from '../../src/agent/migration/confirm.ts';

/** What "answers at once" means here: well under the 10 s a lost reply costs, with room for a busy CI. */
const ANSWER_WITHIN_MS = 2000;

let base = '';
const started: LocalVm[] = [];
const open: GuestChannel[] = [];

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-gchan-'));
});

after(async () => {
  for (const ch of open) await ch.close().catch(() => undefined);
  // Only the QEMUs this file started, each by its own handle (its own PID).
  for (const vm of started) await vm.stop({ force: true }).catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

/** One command over a connection of its own, as `POST /agent/v1/vms/:name/guest` does it. */
async function infoOnce(vm: LocalVm): Promise<{ bootId: string; ms: number }> {
  const t0 = Date.now();
  const ch = await vm.guest();
  open.push(ch);
  try {
    const { bootId } = await ch.info({ timeoutMs: 5000 });
    return { bootId, ms: Date.now() - t0 };
  } finally {
    await ch.close();
  }
}

test('the guest channel answers after each hop of a migration there and back, same boot', async () => {
  const dirs = [join(base, 'h1'), join(base, 'h2')] as const;
  let vm = await LocalVm.create(dirs[0], defaultVmSpec('gchan1', { memoryBytes: 256 * MIB }), {
    accel: 'tcg',
  });
  started.push(vm);
  const bootId = (await infoOnce(vm)).bootId;
  {
    const ch = await vm.guest();
    open.push(ch);
    await ch.dirtyStart({ mib: 32, rateMBps: 20 });
    await ch.close();
  }

  for (const [hop, to] of [dirs[1], dirs[0]].entries()) {
    const id = `gchan-hop${hop + 1}`;
    const from = vm.agentDir;
    // Held across the migration: the guest leaves its source with the host connected.
    const held = await vm.guest();
    open.push(held);
    assert.equal((await held.info()).bootId, bootId);

    const prepared = await prepare({
      id,
      agentDir: to,
      accel: 'tcg',
      identity: null,
      request: { spec: vm.spec, listenAddress: '127.0.0.1', tls: false, storage: 'shared' },
    });
    started.push(prepared.vm);
    const end = await startPerform({
      id,
      agentDir: from,
      vm: sourceVmOf(vm),
      identity: null,
      request: { vm: vm.name, uri: prepared.response.uri, tls: false, storage: 'shared' },
    }).done;
    assert.equal(end.stage, 'completed', JSON.stringify(end.error));

    const t0 = Date.now();
    const fin = await finish({ id, agentDir: to, success: true, vm: prepared.vm });
    assert.equal(fin.stage, 'finished');
    assert.ok(
      Date.now() - t0 < 5000,
      `finish took ${Date.now() - t0} ms: its boot-id refresh must be bounded`,
    );
    // finish reads the boot id in the background; the VM's status waits for that answer.
    assert.equal((await prepared.vm.status()).bootId, bootId, `hop ${hop + 1}: finish recorded the boot id over the channel`);
    await held.close();
    assert.equal((await confirm({ id, agentDir: from, success: true, vm })).stage, 'confirmed');
    vm = prepared.vm;

    // Several fresh connections in a row: each must be answered, not only the first.
    for (let i = 0; i < 3; i++) {
      const r = await infoOnce(vm);
      assert.equal(r.bootId, bootId, `hop ${hop + 1}, command ${i + 1}: the same boot`);
      assert.ok(r.ms < ANSWER_WITHIN_MS, `hop ${hop + 1}, command ${i + 1}: answered after ${r.ms} ms`);
    }
  }
  const ch = await vm.guest();
  open.push(ch);
  const v = await ch.dirtyVerify();
  assert.equal(v.ok, true, `the guest's memory survived both hops: ${JSON.stringify(v)}`);
  await ch.close();
});
