import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { QmpClient } from '../../qemu/qmp.ts';
import { FerryError } from '../../common/errors.ts';
import { fakeQmp } from '../../testing/fake-qmp.ts';
import { classifyFailure, parseTcpUri, startPerform, waitForLingeringMigration, whileOneLingers } from './perform.ts';
import { loadRecord } from './record.ts';

test('QEMU’s failure text says who is to blame', () => {
  assert.equal(classifyFailure('Unable to write to socket: Broken pipe'), 'FERRY_E_DESTINATION_LOST');
  assert.equal(classifyFailure('Connection reset by peer'), 'FERRY_E_DESTINATION_LOST');
  assert.equal(classifyFailure('TLS handshake failed: The certificate is not trusted'), 'FERRY_E_TLS');
  assert.equal(classifyFailure('Certificate does not match the hostname wrong'), 'FERRY_E_TLS');
  assert.equal(classifyFailure('some device refused its state'), 'FERRY_E_MIGRATION_FAILED');
  assert.equal(classifyFailure(null), 'FERRY_E_MIGRATION_FAILED');
});

test('migration URIs are tcp:HOST:PORT only', () => {
  assert.deepEqual(parseTcpUri('tcp:10.0.0.2:4444'), { host: '10.0.0.2', port: 4444 });
  assert.deepEqual(parseTcpUri('tcp:[fd00::2]:4444'), { host: 'fd00::2', port: 4444 });
  for (const bad of ['exec:cat', 'tcp:10.0.0.2', 'tcp:a,b:1', 'tcp:h:0', 'tcp:h:70000', 'unix:/x']) {
    assert.throws(() => parseTcpUri(bad), { code: 'FERRY_E_BAD_INPUT' }, bad);
  }
});

/**
 * The shared fake QMP server (src/testing/fake-qmp.ts) playing a QEMU whose migration stays `active` with the byte
 * counter frozen — what a cut link looks like from the source (docs/qemu.md).
 */
async function frozenQemu(path: string, opts: { cancellingFor?: number; lingeringFor?: number; cancelHangs?: boolean } = {}): Promise<{ commands: string[]; close: () => Promise<void> }> {
  const commands: string[] = [];
  // `lingeringFor`: QEMU says `cancelled` but refuses that many capability settings (an old migration's
  // connection completed after its cancel and QEMU is still winding it up).
  let lingering = opts.lingeringFor ?? 0;
  // `cancellingFor`: the migration before is still being cancelled for that many `query-migrate`s.
  let cancelling = opts.cancellingFor ?? 0;
  let status = cancelling > 0 ? 'cancelling' : lingering > 0 ? 'cancelled' : 'none';
  const server = await fakeQmp(
    dirname(path),
    (cmd, conn) => {
      commands.push(cmd.execute);
      if (cmd.execute === 'migrate-set-capabilities' && (status === 'cancelling' || (lingering > 0 && lingering-- > 0))) {
        conn.error(cmd.id, 'GenericError', "There's a migration process in progress");
        return;
      }
      if (cmd.execute === 'query-migrate' && status === 'cancelling' && !opts.cancelHangs && --cancelling === 0) status = 'cancelled';
      let ret: unknown = {};
      if (cmd.execute === 'query-status') ret = { running: true, status: 'running' };
      if (cmd.execute === 'query-migrate-capabilities') ret = [{ capability: 'events', state: false }, { capability: 'postcopy-ram', state: false }, { capability: 'multifd', state: false }, { capability: 'xbzrle', state: false }, { capability: 'auto-converge', state: false }];
      if (cmd.execute === 'migrate') status = 'active';
      // `cancelHangs`: multifd channels blocked on a cut link keep the migration `cancelling` until yanked.
      if (cmd.execute === 'migrate_cancel') status = opts.cancelHangs ? 'cancelling' : 'cancelled';
      if (cmd.execute === 'yank') status = 'cancelled';
      if (cmd.execute === 'query-migrate') {
        ret = status === 'none' ? {} : { status, 'total-time': 1, ram: { transferred: 1000, remaining: 5000, total: 6000, 'dirty-sync-count': 1 } };
      }
      conn.reply(cmd.id, ret);
    },
    { path },
  );
  return { commands, close: () => server.close() };
}

/** A pre-copy of VM v1 (6000 bytes, shared storage) to a port nobody listens on, over `qmp`. */
function performOn(dir: string, qmp: QmpClient, id: string): ReturnType<typeof startPerform> {
  return startPerform({
    id,
    agentDir: dir,
    identity: null,
    pollMs: 20,
    vm: { name: 'v1', runDir: dir, memoryBytes: 6000, localDiskIds: [], qmp },
    request: { vm: 'v1', uri: 'tcp:127.0.0.1:1', tls: false, storage: 'shared' },
  });
}

test('a frozen stream is the controller\'s to judge: the agent reports it, and its cancel ends it (migrate_cancel, cancelled)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-perform-'));
  const fake = await frozenQemu(join(dir, 'qmp.sock'));
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    const job = performOn(dir, qmp, 'm1');
    // Long past any stall timeout: the agent keeps watching (the controller's policy decides).
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(job.view().stage, 'transferring');
    assert.equal(job.view().transferredBytes, 1000);
    const end = await job.cancel();
    assert.equal(end.stage, 'cancelled');
    assert.equal(end.error?.code, 'FERRY_E_MIGRATION_CANCELLED');
    assert.ok(fake.commands.includes('migrate_cancel'));
    assert.equal((await loadRecord(dir, 'm1'))?.view.stage, 'cancelled', 'the record survives the agent');
  } finally {
    await qmp.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a cancel that QEMU does not carry out (multifd channels stuck on a cut link) yanks the channels, and ends', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-perform-'));
  const fake = await frozenQemu(join(dir, 'qmp.sock'), { cancelHangs: true });
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    const job = performOn(dir, qmp, 'm4');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(job.view().stage, 'transferring');
    const end = await job.cancel();
    assert.equal(end.stage, 'cancelled');
    const cancelAt = fake.commands.indexOf('migrate_cancel');
    assert.ok(cancelAt >= 0 && fake.commands.indexOf('yank') > cancelAt, `migrate_cancel first, then yank: ${fake.commands.join(' ')}`);
  } finally {
    await qmp.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('stageChange: a waiter wakes at the change of stage, not at its bound; one that saw an old stage returns at once', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-perform-'));
  const fake = await frozenQemu(join(dir, 'qmp.sock'));
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    const job = performOn(dir, qmp, 'm0');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(job.view().stage, 'transferring');
    const t0 = Date.now();
    const woken = job.stageChange('transferring', 10_000);
    const bounded = job.stageChange('transferring', 50);
    await bounded;
    assert.ok(Date.now() - t0 < 5000, 'the bound ends a wait without a change');
    await job.cancel();
    await woken;
    assert.ok(Date.now() - t0 < 5000, `woken by the cancel's stage, not by the 10-s bound (${Date.now() - t0} ms)`);
    assert.equal(job.view().stage, 'cancelled');
    const t1 = Date.now();
    await job.stageChange('transferring', 10_000);
    assert.ok(Date.now() - t1 < 1000, 'a stage seen before the change returns at once');
  } finally {
    await qmp.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a migration still being cancelled in QEMU is waited for before the next one sets its capabilities', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-perform-'));
  const fake = await frozenQemu(join(dir, 'qmp.sock'), { cancellingFor: 3 });
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    const job = performOn(dir, qmp, 'm2');
    for (let i = 0; i < 100 && !fake.commands.includes('migrate') && job.view().stage !== 'failed'; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(job.view().stage, 'transferring', JSON.stringify(job.view().error));
    const before = fake.commands.slice(0, fake.commands.indexOf('migrate-set-capabilities'));
    assert.equal(before.filter((c) => c === 'query-migrate').length, 3, `asked until QEMU had cancelled the one before: ${fake.commands.join(' ')}`);
    await job.cancel();
  } finally {
    await qmp.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});

test('a migration that lingers in QEMU after its cancel is waited for: the capabilities are set once QEMU takes them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-perform-'));
  const fake = await frozenQemu(join(dir, 'qmp.sock'), { lingeringFor: 2 });
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    const job = performOn(dir, qmp, 'm3');
    for (let i = 0; i < 200 && !fake.commands.includes('migrate') && job.view().stage !== 'failed'; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(job.view().stage, 'transferring', JSON.stringify(job.view().error));
    assert.equal(fake.commands.filter((c) => c === 'migrate-set-capabilities').length, 3, 'refused twice, then taken');
    await job.cancel();
  } finally {
    await qmp.close();
    await fake.close();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});

test('whileOneLingers: other refusals at once, a lingering migration until the bound', async () => {
  const inProgress = new FerryError('FERRY_E_QMP_COMMAND', "QEMU refused migrate: There's a migration process in progress");
  let calls = 0;
  await assert.rejects(whileOneLingers(() => { calls++; return Promise.reject(new FerryError('FERRY_E_QMP_COMMAND', 'QEMU refused migrate: bad URI')); }, 1_000), /bad URI/);
  assert.equal(calls, 1, 'not retried');
  calls = 0;
  const t0 = Date.now();
  await assert.rejects(whileOneLingers(() => { calls++; return Promise.reject(inProgress); }, 500), /in progress/);
  assert.ok(calls >= 2 && Date.now() - t0 >= 500, `retried until the bound (${calls} calls)`);
});

test('perform waits while QEMU holds a cancelled migration’s yank instance, not for a running one, and gives up with FERRY_E_MIGRATION_ACTIVE', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-yank-'));
  let heldFor = 3;
  let status = 'cancelled';
  let yank = true;
  let yanks = 0;
  const server = await fakeQmp(
    dir,
    (cmd, conn) => {
      if (cmd.execute === 'yank') yanks++;
      if (cmd.execute === 'query-yank') {
        if (!yank) return conn.error(cmd.id, 'CommandNotFound', 'The command query-yank has not been found');
        return conn.reply(cmd.id, heldFor-- > 0 ? [{ type: 'chardev', id: 'm' }, { type: 'migration' }] : [{ type: 'chardev', id: 'm' }]);
      }
      if (cmd.execute === 'query-migrate') return conn.reply(cmd.id, { status });
      conn.reply(cmd.id, {});
    },
    { path: join(dir, 'qmp.sock') },
  );
  const qmp = await QmpClient.connect(join(dir, 'qmp.sock'));
  try {
    await waitForLingeringMigration(qmp, 5_000);
    assert.ok(heldFor < 0, 'asked until QEMU let go');
    assert.equal(yanks, 1, 'the finished migration\'s channels yanked once first');
    heldFor = 1_000;
    status = 'active';
    await waitForLingeringMigration(qmp, 5_000); // a running one is setup's to refuse: no wait
    status = 'cancelled';
    await assert.rejects(waitForLingeringMigration(qmp, 300), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_E_MIGRATION_ACTIVE');
    yank = false;
    await waitForLingeringMigration(qmp, 5_000); // a QEMU without query-yank is not waited for
  } finally {
    await qmp.close();
    await server.close();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  }
});
