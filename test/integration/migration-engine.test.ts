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
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultVmSpec, MIB } from '../../src/common/spec.ts';
import { LocalVm } from '../../src/agent/vm.ts';
import type { GuestChannel } from '../../src/guest/client.ts';
import { caFromPem, createCaCert } from '../../src/controller/ca.ts';
import { processGone } from '../../src/qemu/process.ts';
import { prepare, type Prepared } from '../../src/agent/migration/prepare.ts';
import { sourceVmOf, startPerform } from '../../src/agent/migration/perform.ts';
import { finish } from '../../src/agent/migration/finish.ts';
import { confirm } from '../../src/agent/migration/confirm.ts';
import type { TlsIdentity } from '../../src/agent/migration/tls.ts';
import { openColdFile, performCold, prepareCold, receiveColdFile } from '../../src/agent/migration/cold.ts';

let base = '';
let srcDir = '';
let dstDir = '';
let identity: TlsIdentity;
let source: LocalVm | undefined;
/** The guest after the live migration: moved on, cold, by the last test. */
let moved: LocalVm | undefined;
/**
 * One guest channel per QEMU, held across checks: every reconnect to a virtio-serial port is a chance for
 * the guest tool to miss the host (see the report on ferry-guest), and that is not what this file tests.
 */
let srcCh: GuestChannel | undefined;
let movedCh: GuestChannel | undefined;
let diskSum = '';
const started: LocalVm[] = [];

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'ferry-mig-'));
  srcDir = join(base, 'a');
  dstDir = join(base, 'b');
  // The cluster CA as the controller makes it; the agent's certificate as it issues it (SAN IP 127.0.0.1).
  const root = await createCaCert('ferry-mig-test-ca');
  const ca = await caFromPem(root.certPem, root.keyPem);
  const leaf = await ca.issueAgentCert('h1', ['127.0.0.1']);
  identity = { caPem: ca.caCertPem, certPem: leaf.certPem, keyPem: leaf.keyPem };
  // A small local disk: the live migration copies it over NBD (mirror), the cold one streams it.
  const spec = defaultVmSpec('mig1', { memoryBytes: 256 * MIB, disks: [{ id: 'vda', sizeBytes: 32 * MIB, shared: false }] });
  source = await LocalVm.create(srcDir, spec, { accel: 'tcg' });
  started.push(source);
  srcCh = await source.guest();
  diskSum = (await srcCh.diskFill('vda', 8, 7)).sum;
  await srcCh.dirtyStart({ mib: 64, rateMBps: 20 });
});

after(async () => {
  await srcCh?.close();
  await movedCh?.close();
  // Only the QEMUs this file started, by their handles (each kills its own PID).
  for (const vm of started) await vm.stop({ force: true }).catch(() => undefined);
  await rm(base, { recursive: true, force: true });
});

test('a destination killed during the transfer: the guest keeps running on the source, nothing is left behind', async () => {
  const src = source!;
  const bootId = (await srcCh!.info()).bootId;
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
    assert.equal((await srcCh!.info()).bootId, bootId, 'the source guest is the same boot');

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

test('live migration over TLS with the disk copied (NBD mirror) while the guest writes memory: same boot, memory and disk intact, source removed', async () => {
  const src = source!;
  const bootId = (await srcCh!.info()).bootId;
  const srcPid = src.pid!;
  const prepared = await prepare({
    id: 'm-ok',
    agentDir: dstDir,
    accel: 'tcg',
    identity,
    request: { spec: src.spec, listenAddress: '127.0.0.1', tls: true, storage: 'copy' },
  });
  started.push(prepared.vm);
  assert.deepEqual(prepared.response.nbd?.exports, { vda: 'vda' });
  assert.match(prepared.response.uri, /^tcp:127\.0\.0\.1:\d+$/);
  const job = startPerform({
    id: 'm-ok',
    agentDir: srcDir,
    vm: sourceVmOf(src),
    identity,
    request: { vm: 'mig1', uri: prepared.response.uri, nbd: prepared.response.nbd, tls: true, storage: 'copy', downtimeLimitMs: 300 },
  });
  const end = await job.done;
  assert.equal(end.stage, 'completed', JSON.stringify(end.error));
  assert.equal(end.qemuStatus, 'completed');
  assert.equal(typeof end.downtimeMs, 'number', 'QEMU reports the downtime');
  assert.ok(end.totalMs! > 0 && end.memoryBytes! >= 256 * MIB && end.iterations! >= 1);
  assert.equal(end.progress?.percent, 100);
  assert.equal(end.mirror?.ready, true, 'the disk was mirrored before the memory');

  const fin = await finish({ id: 'm-ok', agentDir: dstDir, success: true, vm: prepared.vm });
  assert.equal(fin.stage, 'finished');
  assert.equal(fin.runState, 'running');
  // Kept open into the cold test: a guest saved while the host holds its port comes back answering.
  movedCh = await prepared.vm.guest();
  assert.equal((await movedCh.info()).bootId, bootId, 'the destination runs the same boot');
  const v = await movedCh.dirtyVerify();
  assert.equal(v.ok, true, JSON.stringify(v));
  assert.equal((await movedCh.diskSum('vda', 8)).sum, diskSum, 'the disk arrived intact');

  moved = prepared.vm;
  const conf = await confirm({ id: 'm-ok', agentDir: srcDir, success: true, vm: src });
  assert.equal(conf.stage, 'confirmed');
  assert.ok(processGone(srcPid), 'the source QEMU is gone');
  assert.ok(!existsSync(src.runDir), 'the source run dir is gone');
  // Both verdicts are idempotent.
  assert.equal((await confirm({ id: 'm-ok', agentDir: srcDir, success: true })).stage, 'confirmed');
  assert.equal((await finish({ id: 'm-ok', agentDir: dstDir, success: true, vm: prepared.vm })).stage, 'finished');
});

test('cold migration with saved state: the same boot resumes on the other host, files checksummed', async () => {
  const vm = moved!;
  assert.ok(vm !== undefined, 'needs the live migration before it');
  const bootId = vm.bootId!; // recorded by finish from the guest itself
  // Back to the first agent dir: the live migration's confirm freed the name there.
  const dst = await prepareCold({ id: 'm-cold', agentDir: srcDir, accel: 'tcg', spec: vm.spec });
  started.push(dst.vm);
  const manifest = await performCold({ id: 'm-cold', agentDir: dstDir, vm, mode: 'save' });
  assert.deepEqual(manifest.files.map((f) => f.name), ['vda', 'state']);
  assert.equal(vm.pid, null, 'the source QEMU stopped after saving');
  for (const f of manifest.files) {
    const out = await openColdFile(dstDir, 'm-cold', f.name);
    const got = await receiveColdFile({ agentDir: srcDir, id: 'm-cold', name: f.name, sha256: out.file.sha256, body: out.stream });
    assert.equal(got.bytes, f.bytes);
  }
  await assert.rejects(
    receiveColdFile({ agentDir: srcDir, id: 'm-cold', name: 'state', sha256: '0'.repeat(64), body: Readable.from([Buffer.from('garbage')]) }),
    { code: 'FERRY_E_VERIFY_FAILED' },
  );
  const fin = await finish({ id: 'm-cold', agentDir: srcDir, success: true, vm: dst.vm });
  assert.equal(fin.stage, 'finished');
  assert.equal(fin.runState, 'running');
  // finish asked the guest itself for its boot id. The guest-level memory and disk checks are done after the
  // live migration only: a second connection to a just-restored guest's port sometimes goes unanswered by
  // ferry-guest (reported to the guest toolkit); the files themselves were verified by sha256 above.
  assert.equal(dst.vm.bootId, bootId, 'the saved state resumed: same boot');
  const conf = await confirm({ id: 'm-cold', agentDir: dstDir, success: true, vm });
  assert.equal(conf.stage, 'confirmed');
  assert.ok(!existsSync(vm.runDir), 'the source copy is removed after the destination runs');
});
