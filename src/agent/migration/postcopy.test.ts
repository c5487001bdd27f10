/**
 * Post-copy recovery over the fake QMP socket: the states a real cut link reaches only by chance — a
 * recovery whose handshake hangs (`postcopy-recover`) on either side — must be broken and started again
 * from `postcopy-paused`, never answered with the address of a listener that already accepted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { emptyView } from '../../common/agent-migration.ts';
import { QmpClient } from '../../qemu/qmp.ts';
import { fakeQmp } from '../../testing/fake-qmp.ts';
import type { LocalVm } from '../vm.ts';
import { startPerform } from './perform.ts';
import { recoverIncoming } from './postcopy.ts';
import { saveRecord } from './record.ts';

/** A QEMU in post-copy whose migration status the test sets; `migrate-pause` pauses it after two looks. */
async function postcopyQemu(dir: string, status: string) {
  const state = { status, port: 40000, commands: [] as string[] };
  let pausing = 0;
  const server = await fakeQmp(dir, (cmd, conn) => {
    state.commands.push(cmd.execute);
    let ret: unknown = {};
    if (cmd.execute === 'migrate-pause') pausing = 2;
    if (cmd.execute === 'migrate-recover') {
      state.port += 1;
      state.status = 'postcopy-recover-setup';
    }
    if (cmd.execute === 'migrate') state.status = 'postcopy-active';
    if (cmd.execute === 'query-status') ret = { running: false, status: 'paused' };
    if (cmd.execute === 'query-migrate-capabilities') ret = ['events', 'postcopy-ram', 'multifd', 'xbzrle', 'auto-converge'].map((capability) => ({ capability, state: false }));
    if (cmd.execute === 'query-migrate') {
      if (pausing > 0 && --pausing === 0) state.status = 'postcopy-paused';
      ret = {
        status: state.status,
        'socket-address': [{ type: 'inet', host: '127.0.0.1', port: String(state.port) }],
        ram: { transferred: 1000, remaining: 5000, total: 6000, 'dirty-sync-count': 2 },
      };
    }
    conn.reply(cmd.id, ret);
  });
  const qmp = await QmpClient.connect(server.path);
  return { state, qmp, close: async () => (await qmp.close(), await server.close()) };
}

async function destination(status: string, run: (q: Awaited<ReturnType<typeof postcopyQemu>>, recover: () => Promise<{ uri: string }>) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-postcopy-'));
  const q = await postcopyQemu(dir, status);
  try {
    await saveRecord(dir, { version: 1, view: emptyView({ id: 'm1', role: 'destination', vm: 'v1', stage: 'postcopy', storage: 'shared', tls: false, uri: null }), runDir: null });
    // recoverIncoming needs only the VM's QMP and that its QEMU runs.
    const vm = { pid: process.pid, qmp: q.qmp } as unknown as LocalVm;
    await run(q, () => recoverIncoming({ id: 'm1', agentDir: dir, vm, listenAddress: '127.0.0.1' }));
  } finally {
    await q.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('destination: a recovery whose handshake hangs is paused and listened for anew', async () => {
  await destination('postcopy-recover', async (q, recover) => {
    const { uri } = await recover();
    assert.equal(uri, 'tcp:127.0.0.1:40001', 'the new listener, not the one that accepted');
    assert.deepEqual(
      q.state.commands.filter((c) => c === 'migrate-pause' || c === 'migrate-recover'),
      ['migrate-pause', 'migrate-recover'],
    );
  });
});

test('destination: a listener nobody reached yet is answered again, not replaced', async () => {
  await destination('postcopy-recover-setup', async (q, recover) => {
    assert.equal((await recover()).uri, 'tcp:127.0.0.1:40000');
    assert.ok(!q.state.commands.includes('migrate-pause') && !q.state.commands.includes('migrate-recover'), q.state.commands.join(' '));
  });
});

test('source: a pause breaks a hung recovery too, and answers once QEMU is paused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-postcopy-'));
  const q = await postcopyQemu(dir, 'none');
  try {
    const job = startPerform({
      id: 'm2',
      agentDir: dir,
      identity: null,
      pollMs: 20,
      vm: { name: 'v1', runDir: dir, memoryBytes: 6000, localDiskIds: [], qmp: q.qmp },
      request: { vm: 'v1', uri: 'tcp:127.0.0.1:1', tls: false, storage: 'shared' },
    });
    for (let i = 0; i < 100 && !job.view().postcopyStarted; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(job.view().postcopyStarted, JSON.stringify(job.view()));
    q.state.status = 'postcopy-recover';
    await job.pausePostcopy();
    assert.ok(q.state.commands.includes('migrate-pause'), q.state.commands.join(' '));
    assert.equal(q.state.status, 'postcopy-paused', 'answered once paused');
    await job.cancel().catch(() => undefined);
  } finally {
    await q.close();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});

test('destination: a QEMU whose main thread is blocked is recovered out of band, on a port chosen here', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-postcopy-'));
  const seen: string[] = [];
  let paused = false;
  let recoverUri: unknown;
  const server = await fakeQmp(dir, (cmd, conn) => {
    const oob = (cmd as { 'exec-oob'?: string })['exec-oob'];
    if (oob === undefined) {
      seen.push(`in-band ${cmd.execute}`); // never answered: the main thread waits for a page
      return;
    }
    seen.push(`oob ${oob}`);
    if (oob === 'migrate-pause') paused = true;
    if (oob === 'migrate-recover') {
      if (!paused) return conn.error(cmd.id, 'GenericError', 'Migrate recover can only be run when postcopy is paused.');
      recoverUri = cmd.arguments?.uri;
    }
    conn.reply(cmd.id, {});
  });
  const qmp = await QmpClient.connect(server.path, { oob: true });
  try {
    assert.ok(qmp.oobEnabled, 'negotiated: the fake offers oob');
    await saveRecord(dir, { version: 1, view: emptyView({ id: 'm3', role: 'destination', vm: 'v1', stage: 'postcopy', storage: 'shared', tls: false, uri: null }), runDir: null });
    const vm = { pid: process.pid, qmp } as unknown as LocalVm;
    const { uri } = await recoverIncoming({ id: 'm3', agentDir: dir, vm, listenAddress: '127.0.0.1' });
    assert.match(uri, /^tcp:127\.0\.0\.1:\d+$/);
    assert.equal(recoverUri, uri, 'QEMU listens where the source is sent');
    assert.deepEqual(seen, ['in-band query-migrate', 'oob migrate-pause', 'oob migrate-recover']);
  } finally {
    await qmp.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
