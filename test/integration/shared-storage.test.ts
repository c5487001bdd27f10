/**
 * Shared storage (issue #9) in a real two-host lab, through the real CLI: the tiny guest with a qcow2 data
 * disk on shared storage (`vm create --disk-image FILE --shared`): the VM's disk is the file itself, held by
 * QEMU's image lock (a second VM on it does not start); a destination that does not see the path, or sees
 * another file there, is refused in prepare with FERRY_E_SHARED_MISSING / FERRY_E_SHARED_DIFFERS, nothing
 * started there, the VM running on the source unchanged; a live migration moves no disk byte (no mirror,
 * no NBD, the source agent's record says so), and the guest on the destination reads its data back and
 * writes more into the same file, with one QEMU in the lab; a cold move back carries the saved state only.
 *
 * The lab's hosts share the machine's file system, so a directory of this test plays NFS. Each agent runs
 * in a mount namespace of its own (`ip netns exec` makes one, and the agent's QEMUs inherit it), so the
 * test changes what one host sees at the path with `nsenter -m`: a tmpfs over the directory (missing), or
 * another file bound over the disk (differs). The path stays the same; only that host's view changes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentMigrationView, ColdManifest } from '../../src/common/agent-migration.ts';
import type { MigrationJson } from '../../src/common/migration.ts';
import type { VmSpec } from '../../src/common/spec.ts';
import { readLabState } from '../../src/lab/index.ts';
import { runFiles } from '../../src/qemu/process.ts';
import { QmpClient } from '../../src/qemu/qmp.ts';
import { LabHarness, waitFor, type VmView } from './helpers.ts';

const VM = 'sh1';
const DISK_MIB = 16;
const h = new LabHarness('sh');
const measured: string[] = [];

const guest = <T>(...cmd: string[]): Promise<T> => h.guest<T>(VM, ...cmd);
const diskSum = async (): Promise<string> => {
  const r = await guest<{ ok: boolean; sum: string }>('disk', 'sum', '/dev/vda', String(DISK_MIB));
  assert.equal(r.ok, true, `disk sum: ${JSON.stringify(r)}`);
  return r.sum;
};
const diskFill = async (seed: number): Promise<string> => {
  const r = await guest<{ ok: boolean; sum: string }>(
    'disk',
    'fill',
    '/dev/vda',
    String(DISK_MIB),
    String(seed),
  );
  assert.equal(r.ok, true, `disk fill: ${JSON.stringify(r)}`);
  return r.sum;
};

/** Runs argv inside one lab host's mount namespace (its agent's, which its QEMUs share). */
function onHost(host: string, argv: string[]): void {
  const pid = h.state?.hosts.find((x) => x.name === host)?.pid;
  assert.ok(pid, `the agent of ${host} runs`);
  // Never in our own namespace: that would change what every host sees.
  assert.notEqual(
    readlinkSync(`/proc/${pid}/ns/mnt`),
    readlinkSync('/proc/self/ns/mnt'),
    `${host}'s agent has a mount namespace of its own`,
  );
  execFileSync('nsenter', ['-t', String(pid), '-m', '--', ...argv], { stdio: 'pipe' });
}

/** Asks a host's QEMU of the VM through its observer monitor. */
async function observe<T>(host: string, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const qmp = await QmpClient.connect(runFiles(join(h.hostDir(host), 'vms', VM)).observeSocket, {
    timeoutMs: 5000,
  });
  try {
    return await fn(qmp);
  } finally {
    await qmp.close();
  }
}

/** A host agent's own record of a migration (it keeps it after the end). */
function agentRecord(
  host: string,
  id: string,
): { view: AgentMigrationView; cold?: { manifest: ColdManifest } } {
  return JSON.parse(readFileSync(join(h.hostDir(host), 'migrations', `${id}.json`), 'utf8')) as {
    view: AgentMigrationView;
    cold?: { manifest: ColdManifest };
  };
}

describe('shared storage in a two-host lab', { timeout: 480_000 }, () => {
  let sharedDir = '';
  let disk = '';
  let bootId = '';
  let sum = '';
  let written = '';

  /** A refused migration: exit 1, the job failed in prepare with `code`, the VM on h1 exactly as before. */
  async function assertRefused(code: string, what: string): Promise<void> {
    const r = await h.ferryRaw(['vm', 'migrate', VM, '--to', 'h2', '--wait']);
    assert.equal(r.code, 1, `${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
    const m = JSON.parse(r.stdout) as MigrationJson;
    assert.equal(m.state, 'failed', `${what}: ${r.stdout}`);
    assert.equal(m.error?.code, code, `${what}: ${JSON.stringify(m.error)}`);
    assert.equal(m.phase, 'prepare', `${what}: refused in prepare`);
    const shown = await h.migrationShow(m.id);
    assert.equal(shown.error?.code, code, `${what}: migration show carries the code`);
    measured.push(`${what}: ${code}: ${m.error?.message}`);
    const v = await h.vmShow(VM);
    assert.deepEqual(
      [v.host, v.state, v.bootId],
      ['h1', 'running', bootId],
      `${what}: the VM runs on h1, same boot`,
    );
    assert.equal(h.qemuPids('h2', VM).length, 0, `${what}: no QEMU was started on h2`);
    assert.equal(h.runDirExists('h2', VM), false, `${what}: nothing left on h2`);
    assert.equal(h.qemuPids('h1', VM).length, 1, `${what}: one QEMU on h1`);
  }

  before(async () => {
    sharedDir = join(h.root, 'shared');
    mkdirSync(sharedDir);
    disk = join(sharedDir, 'data.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, `${DISK_MIB}M`]);
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
  });

  after(() => h.down(measured));

  it('vm create --shared: the disk is the file itself (no overlay), the guest writes it, QEMU holds its lock', async () => {
    const v = await h.ferryJson<VmView & { spec: VmSpec }>([
      'vm',
      'create',
      VM,
      '--image',
      'tiny',
      '--disk-image',
      disk,
      '--shared',
      '--host',
      'h1',
    ]);
    assert.deepEqual([v.host, v.state], ['h1', 'running']);
    assert.ok(v.bootId, 'the tiny guest reports its boot id');
    bootId = v.bootId;
    assert.deepEqual(v.spec.disks, [
      { id: 'vda', sizeBytes: DISK_MIB * 2 ** 20, shared: true, path: disk, format: 'qcow2' },
    ]);
    assert.equal(
      existsSync(join(h.hostDir('h1'), 'vms', VM, 'vda.qcow2')),
      false,
      'no disk of its own in the run dir',
    );
    sum = await diskFill(7);
    // QEMU's image lock: a second VM on the same file does not start, and leaves nothing behind.
    const second = await h.ferryRaw([
      'vm',
      'create',
      'sh2',
      '--image',
      'tiny',
      '--disk-image',
      disk,
      '--shared',
      '--host',
      'h2',
    ]);
    assert.equal(second.code, 1, `a second VM on the disk: exit ${second.code}\n${second.stdout}`);
    const err = (JSON.parse(second.stdout) as { error: { code: string; message: string } }).error;
    assert.match(err.message, /lock/, `refused by the image lock: ${err.message}`);
    measured.push(`second VM on the shared disk: ${err.code}: ${err.message.slice(0, 160)}`);
    assert.equal(h.qemuPids('h2', 'sh2').length, 0);
    assert.equal(h.runDirExists('h2', 'sh2'), false);
    assert.equal(await diskSum(), sum, 'the first VM still reads its data');
  });

  it('a destination that does not see the path is refused with FERRY_E_SHARED_MISSING, the source untouched', async () => {
    onHost('h2', ['mount', '-t', 'tmpfs', '-o', 'size=1m', 'ferry-test-hide', sharedDir]);
    try {
      await assertRefused('FERRY_E_SHARED_MISSING', 'path missing on h2');
    } finally {
      onHost('h2', ['umount', sharedDir]);
    }
  });

  it('a destination that sees another file at the path is refused with FERRY_E_SHARED_DIFFERS', async () => {
    const other = join(h.root, 'other.qcow2'); // same format and virtual size, another file
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', other, `${DISK_MIB}M`]);
    onHost('h2', ['mount', '--bind', other, disk]);
    try {
      await assertRefused('FERRY_E_SHARED_DIFFERS', 'another file on h2');
    } finally {
      onHost('h2', ['umount', disk]);
    }
  });

  it('live h1→h2 moves no disk byte; the guest on h2 reads its data and writes the same file; one QEMU', async () => {
    const inode = statSync(disk).ino;
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', 'h2', '--wait'], [0, 1]);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal(m.progress?.disk ?? null, null, 'the job reports no disk copy');
    const src = agentRecord('h1', m.id).view;
    assert.deepEqual(
      [src.storage, src.mirror],
      ['shared', null],
      "the source agent's record: shared storage, no mirror ran",
    );
    measured.push(
      `live h1→h2, shared disk: total ${m.totalMs} ms, QEMU downtime ${m.downtimeMs ?? '-'} ms, ${Math.round((m.transferredBytes ?? 0) / 2 ** 20)} MiB sent (RAM)`,
    );

    const v = await h.vmShow(VM);
    assert.deepEqual([v.host, v.state, v.bootId], ['h2', 'running', bootId], 'the same guest runs on h2');
    await waitFor(
      'the source QEMU on h1 gone',
      () => h.qemuPids('h1', VM).length === 0 && !h.runDirExists('h1', VM),
      10_000,
    );
    assert.equal(h.qemuPids('h2', VM).length, 1, 'one QEMU on h2');
    const { jobs, nodes, status } = await observe('h2', async (q) => ({
      jobs: await q.execute('query-block-jobs'),
      nodes: await q.execute('query-named-block-nodes', { flat: true }),
      status: await q.execute('query-status'),
    }));
    assert.equal(status.status, 'running');
    assert.deepEqual(jobs, [], 'no block job on the destination');
    assert.equal(
      nodes.find((n) => n['node-name'] === 'disk-vda')?.file,
      disk,
      'the destination opened the shared file itself',
    );
    assert.ok(!nodes.some((n) => n.drv === 'nbd'), 'no NBD node');
    assert.equal(
      existsSync(join(h.hostDir('h2'), 'vms', VM, 'vda.qcow2')),
      false,
      'no copy in the destination run dir',
    );

    assert.equal(
      await diskSum(),
      sum,
      'the guest on h2 reads the data it wrote on h1, untouched by the refusals',
    );
    written = await diskFill(11);
    assert.notEqual(written, sum);
    assert.equal(await diskSum(), written, 'the guest on h2 writes the shared disk');
    assert.equal(statSync(disk).ino, inode, 'the same file, never replaced');
  });

  it('cold h2→h1 moves the saved state only, no disk file; the guest on h1 reads what it wrote on h2', async () => {
    const m = await h.ferryJson<MigrationJson>(
      ['vm', 'migrate', VM, '--to', 'h1', '--mode', 'cold', '--wait'],
      [0, 1],
    );
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    const files = agentRecord('h2', m.id).cold?.manifest.files.map((f) => f.name);
    assert.deepEqual(files, ['state'], 'the source agent offered the saved state and no disk');
    measured.push(
      `cold h2→h1, shared disk: total ${m.totalMs} ms, ${Math.round((m.transferredBytes ?? 0) / 2 ** 20)} MiB moved (the saved state)`,
    );
    const v = await h.vmShow(VM);
    assert.deepEqual([v.host, v.state, v.bootId], ['h1', 'running', bootId], 'the same guest runs on h1');
    await waitFor(
      'the source QEMU on h2 gone',
      () => h.qemuPids('h2', VM).length === 0 && !h.runDirExists('h2', VM),
      10_000,
    );
    assert.equal(h.qemuPids('h1', VM).length, 1, 'one QEMU on h1');
    assert.equal(await diskSum(), written, 'the data written on h2 is read on h1');
  });
});
