/**
 * The migration engine against two real QEMUs on this machine: the source is a LocalVm in one agent dir,
 * the destination is what prepare() starts in another, both on 127.0.0.1. What is asserted is what a user
 * cares about: the guest that arrives is the same boot (same boot id), its memory pattern survived while
 * it was being written, the source is gone only after success, and a lost destination leaves the guest
 * running where it was and nothing behind on the destination.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { LocalVm } from '../../src/agent/vm.ts';
import { caFromPem, createCaCert } from '../../src/controller/ca.ts';
import { processGone } from '../../src/qemu/process.ts';
import { prepare, type Prepared } from '../../src/migration/prepare.ts';
import { sourceVmOf, startPerform } from '../../src/migration/perform.ts';
import { finish } from '../../src/migration/finish.ts';
import { confirm } from '../../src/migration/confirm.ts';
import type { TlsIdentity } from '../../src/migration/tls.ts';

let base = '';
let srcDir = '';
let dstDir = '';
let identity: TlsIdentity;
let source: LocalVm | undefined;
const started: LocalVm[] = [];

async function bootIdOf(vm: LocalVm): Promise<string> {
  const ch = await vm.guest();
  try {
    return (await ch.info()).bootId;
  } finally {
    await ch.close();
  }
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-mig-'));
  srcDir = join(base, 'a');
  dstDir = join(base, 'b');
  // The cluster CA as the controller makes it; the agent's certificate as it issues it (SAN IP 127.0.0.1).
  const root = await createCaCert('ferry-mig-test-ca');
  const ca = await caFromPem(root.certPem, root.keyPem);
  const leaf = await ca.issueAgentCert('h1', ['127.0.0.1']);
  identity = { caPem: ca.caCertPem, certPem: leaf.certPem, keyPem: leaf.keyPem };
  source = await LocalVm.create(srcDir, defaultVmSpec('mig1', { memoryBytes: 256 * MIB }), { accel: 'tcg' });
  started.push(source);
  const ch = await source.guest();
  try {
    await ch.dirtyStart({ mib: 64, rateMBps: 20 });
  } finally {
    await ch.close();
  }
});

after(async () => {
  // Only the QEMUs this file started, by their handles (each kills its own PID).
  for (const vm of started) await vm.stop({ force: true }).catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

test('a destination killed during the transfer: the guest keeps running on the source, nothing is left behind', async () => {
  const src = source!;
  const bootId = await bootIdOf(src);
  let prepared: Prepared | undefined;
  try {
    prepared = await prepare({
      id: 'm-fail',
      agentDir: dstDir,
      accel: 'tcg',
      identity,
      request: { spec: src.spec, listenAddress: '127.0.0.1', tls: true, storage: 'shared' },
    });
    started.push(prepared.vm);
    const dstPid = prepared.vm.pid!;
    const job = startPerform({
      id: 'm-fail',
      agentDir: srcDir,
      vm: sourceVmOf(src),
      identity,
      request: { vm: 'mig1', uri: prepared.response.uri, tls: true, storage: 'shared', bandwidthBytesPerSec: 5 * MIB },
    });
    // Wait until bytes flow, then take the destination away.
    const deadline = Date.now() + 20_000;
    while ((job.view().transferredBytes ?? 0) < 2 * MIB) {
      assert.ok(Date.now() < deadline, `no transfer started: ${JSON.stringify(job.view())}`);
      assert.equal(job.view().stage, 'transferring', JSON.stringify(job.view().error));
      await sleep(100);
    }
    process.kill(dstPid, 'SIGKILL');
    const end = await job.done;
    assert.equal(end.stage, 'failed');
    assert.equal(end.error?.code, 'FERRY_E_DESTINATION_LOST', end.error?.message);
    assert.equal(end.qemuStatus, 'failed');
    const st = await src.status();
    assert.equal(st.qemuStatus, 'running');
    assert.equal(await bootIdOf(src), bootId, 'the source guest is the same boot');

    const fin = await finish({ id: 'm-fail', agentDir: dstDir, success: false, vm: prepared.vm });
    assert.equal(fin.stage, 'discarded');
    assert.ok(processGone(dstPid), 'no destination QEMU');
    assert.ok(!existsSync(prepared.vm.runDir), 'no destination run dir or disks');
    // Idempotent: the controller may say it again after a crash.
    assert.equal((await finish({ id: 'm-fail', agentDir: dstDir, success: false })).stage, 'discarded');
    const conf = await confirm({ id: 'm-fail', agentDir: srcDir, success: false, vm: src });
    assert.equal(conf.stage, 'resumed');
    assert.equal(conf.runState, 'running');
  } finally {
    if (prepared !== undefined) await prepared.vm.stop({ force: true }).catch(() => undefined);
  }
});

test('live migration over TLS while the guest writes memory: same boot, memory intact, source removed', async () => {
  const src = source!;
  const bootId = await bootIdOf(src);
  const srcPid = src.pid!;
  const prepared = await prepare({
    id: 'm-ok',
    agentDir: dstDir,
    accel: 'tcg',
    identity,
    request: { spec: src.spec, listenAddress: '127.0.0.1', tls: true, storage: 'shared' },
  });
  started.push(prepared.vm);
  assert.match(prepared.response.uri, /^tcp:127\.0\.0\.1:\d+$/);
  const job = startPerform({
    id: 'm-ok',
    agentDir: srcDir,
    vm: sourceVmOf(src),
    identity,
    request: { vm: 'mig1', uri: prepared.response.uri, tls: true, storage: 'shared', downtimeLimitMs: 300 },
  });
  const end = await job.done;
  assert.equal(end.stage, 'completed', JSON.stringify(end.error));
  assert.equal(end.qemuStatus, 'completed');
  assert.equal(typeof end.downtimeMs, 'number', 'QEMU reports the downtime');
  assert.ok(end.totalMs! > 0 && end.memoryBytes! >= 256 * MIB && end.iterations! >= 1);
  assert.equal(end.progress?.percent, 100);

  const fin = await finish({ id: 'm-ok', agentDir: dstDir, success: true, vm: prepared.vm });
  assert.equal(fin.stage, 'finished');
  assert.equal(fin.runState, 'running');
  assert.equal(await bootIdOf(prepared.vm), bootId, 'the destination runs the same boot');
  const ch = await prepared.vm.guest();
  try {
    const v = await ch.dirtyVerify();
    assert.equal(v.ok, true, JSON.stringify(v));
  } finally {
    await ch.close();
  }

  const conf = await confirm({ id: 'm-ok', agentDir: srcDir, success: true, vm: src });
  assert.equal(conf.stage, 'confirmed');
  assert.ok(processGone(srcPid), 'the source QEMU is gone');
  assert.ok(!existsSync(src.runDir), 'the source run dir is gone');
  // Both verdicts are idempotent.
  assert.equal((await confirm({ id: 'm-ok', agentDir: srcDir, success: true })).stage, 'confirmed');
  assert.equal((await finish({ id: 'm-ok', agentDir: dstDir, success: true, vm: prepared.vm })).stage, 'finished');
});
