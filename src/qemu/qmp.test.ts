/**
 * Tests of the QMP client: edge cases against the fake QMP server (src/testing/fake-qmp.ts) that speaks raw
 * bytes on a temporary Unix socket (what real QEMU will not do on demand: garbled lines, replies out of order, silence, storms), and
 * the capability itself against a real QEMU (`-machine none`, no guest, a fraction of a second).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../common/errors.ts';
import { QMP_CHANNEL, QmpClient, isEvent, type QmpDiagnostic, type QmpEvent } from './qmp.ts';
import { fakeQmp, type Command, type FakeServer } from '../testing/fake-qmp.ts';

/** A temporary directory, the fake servers and the clients of one test, all cleaned up in `finally`. */
async function withFixture(
  fn: (f: { dir: string; track: (c: QmpClient) => QmpClient; servers: FakeServer[] }) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-qmp-'));
  const clients: QmpClient[] = [];
  const servers: FakeServer[] = [];
  try {
    await fn({ dir, track: (c) => (clients.push(c), c), servers });
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(servers.map((s) => s.close()));
    await rm(dir, { recursive: true, force: true });
  }
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FerryError, `expected a FerryError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but it resolved`);
}

test('greeting and capabilities: version from the greeting, qmp_capabilities first, with an id', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => c.reply(cmd.id, { running: true, status: 'running' }));
    servers.push(srv);
    const seen: QmpDiagnostic[] = [];
    const onDiag = (m: unknown): void => void seen.push(m as QmpDiagnostic);
    subscribe(QMP_CHANNEL, onDiag);
    try {
      const client = track(await QmpClient.connect(srv.path));
      assert.deepEqual(client.version, { major: 10, minor: 0, micro: 2 });
      assert.equal(client.package, 'Debian 1:10.0.2');
      assert.deepEqual(client.capabilities, ['oob']);
      assert.equal(client.isClosed, false);
      const status = await client.execute('query-status');
      assert.equal(status.status, 'running');
      const [caps, q] = srv.conns[0]!.received;
      assert.equal(caps!.execute, 'qmp_capabilities');
      assert.equal(caps!.arguments, undefined);
      assert.equal(q!.execute, 'query-status');
      assert.notEqual(caps!.id, q!.id);
      assert.ok(seen.some((d) => d.phase === 'send' && d.command === 'query-status'));
      assert.ok(seen.some((d) => d.phase === 'reply' && d.command === 'query-status' && d.ok));
    } finally {
      unsubscribe(QMP_CHANNEL, onDiag);
    }
  });
});

test('replies are matched by id, even out of order; a refused command is FERRY_E_QMP_COMMAND', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const held: Command[] = [];
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute === 'migrate-recover')
        return c.error(cmd.id, 'GenericError', 'nope: ' + String(cmd.arguments?.uri));
      if (held.length === 3) return c.reply(cmd.id, { again: cmd.execute });
      held.push(cmd);
      if (held.length === 3) for (const h of [...held].reverse()) c.reply(h.id, { name: h.execute });
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const a = client.executeRaw('cmd-a');
    const b = client.executeRaw('cmd-b', { x: 1 });
    const c = client.executeRaw('cmd-c');
    assert.deepEqual(await Promise.all([a, b, c]), [{ name: 'cmd-a' }, { name: 'cmd-b' }, { name: 'cmd-c' }]);
    assert.deepEqual(srv.conns[0]!.received[2]!.arguments, { x: 1 });
    const err = await rejectsWith(
      client.execute('migrate-recover', { uri: 'tcp:x:1' }),
      'FERRY_E_QMP_COMMAND',
    );
    assert.deepEqual(err.details, {
      command: 'migrate-recover',
      class: 'GenericError',
      desc: 'nope: tcp:x:1',
    });
    // the connection survives a refused command
    assert.deepEqual(await client.executeRaw('cmd-d'), { again: 'cmd-d' });
  });
});

test('events interleave with replies; a storm of events while a command is pending loses nothing', async () => {
  const N = 5000;
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute !== 'query-migrate') return c.reply(cmd.id);
      // The reply sits in the middle of the storm, and the storm arrives in odd-sized chunks.
      let text = '';
      for (let i = 0; i < N; i++) {
        text += c.eventLine('MIGRATION_PASS', { pass: i });
        if (i === N / 2) text += JSON.stringify({ return: { status: 'active' }, id: cmd.id }) + '\n';
      }
      text += c.eventLine('STOP');
      for (let off = 0; off < text.length; off += 7919) c.raw(text.slice(off, off + 7919));
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const all = client.events();
    const small = client.events({ maxBuffered: 100 }); // never read during the storm
    const pass4321 = client.waitForEvent('MIGRATION_PASS', (ev) => ev.data.pass === 4321);
    const stop = client.waitForEvent('STOP');

    const info = await client.execute('query-migrate');
    assert.equal(info.status, 'active');
    const got: number[] = [];
    for await (const ev of all) {
      if (isEvent(ev, 'MIGRATION_PASS')) got.push(ev.data.pass);
      else {
        assert.equal(ev.event, 'STOP');
        assert.deepEqual(ev.data, {}); // QEMU omits data; the client gives an object
        assert.deepEqual(ev.timestamp, { seconds: 1700000000, microseconds: 42 });
        break;
      }
    }
    assert.equal(got.length, N);
    assert.ok(
      got.every((p, i) => p === i),
      'events in order',
    );
    assert.equal(all.dropped, 0);
    assert.equal((await pass4321).data.pass, 4321);
    await stop;

    assert.equal(small.dropped, N + 1 - 100);
    const first = await small.next();
    assert.equal(first.done, false);
    assert.equal((first.value as QmpEvent).data.pass, N - 99); // the newest 100 were kept
    await small.return?.();
    // the client is still usable
    assert.deepEqual(await client.execute('cont'), {});
  });
});

test('lines split across chunks, several per chunk, CRLF and multi-byte characters', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => {
      const bytes = Buffer.from(
        c.eventLine('X_EVENT', { text: 'żółw 🐢' }) +
          JSON.stringify({ return: 'héllo\n🐢', id: cmd.id }) +
          '\r\n',
      );
      // one byte at a time: every multi-byte character is split
      void (async () => {
        for (let i = 0; i < bytes.length; i++) {
          c.socket.write(bytes.subarray(i, i + 1));
          if (i % 16 === 0) await sleep(0);
        }
      })();
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const ev = client.waitForEvent('X_EVENT');
    assert.equal(
      await client.execute('human-monitor-command', { 'command-line': 'info status' }),
      'héllo\n🐢',
    );
    assert.deepEqual((await ev).data, { text: 'żółw 🐢' });
  });
});

test('a garbled line condemns the connection: FERRY_E_QMP_PROTOCOL for pending commands, then closed', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (_cmd, c) => c.raw('{"return": {}, "id": \x00garbage\r\n'));
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const events = client.events();
    const waiting = client.waitForEvent('MIGRATION', undefined, { timeoutMs: 5000 });
    await rejectsWith(client.execute('query-status'), 'FERRY_E_QMP_PROTOCOL');
    await rejectsWith(waiting, 'FERRY_E_QMP_PROTOCOL');
    await client.closed;
    assert.equal(client.isClosed, true);
    assert.equal(client.closeError?.code, 'FERRY_E_QMP_PROTOCOL');
    assert.deepEqual(await events.next(), { value: undefined, done: true });
    await rejectsWith(client.execute('query-status'), 'FERRY_E_QMP_PROTOCOL');
  });
});

test('a greeting that is not QMP fails the connect', async () => {
  await withFixture(async ({ dir, servers }) => {
    const srv = await fakeQmp(dir, () => {}, { greeting: false });
    servers.push(srv);
    const p = QmpClient.connect(srv.path, { timeoutMs: 2000 });
    while (srv.conns.length === 0) await sleep(5);
    srv.conns[0]!.raw('SSH-2.0-OpenSSH_9.2\r\n');
    const err = await rejectsWith(p, 'FERRY_E_QMP_CONNECT');
    assert.equal((err.cause as FerryError).code, 'FERRY_E_QMP_PROTOCOL');
  });
});

test('a reply that never comes: FERRY_E_QMP_TIMEOUT, the late reply is dropped, the client stays usable', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    let stuckId: unknown;
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute === 'stop') {
        stuckId = cmd.id; // never answered in time
        return;
      }
      c.reply(stuckId, { late: true }); // the stale reply first: it must not be taken for this one
      c.reply(cmd.id, { running: false, status: 'paused' });
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const t0 = performance.now();
    const err = await rejectsWith(client.execute('stop', {}, { timeoutMs: 100 }), 'FERRY_E_QMP_TIMEOUT');
    assert.ok(performance.now() - t0 >= 95);
    assert.equal(err.retryable, true);
    assert.deepEqual(await client.execute('query-status'), { running: false, status: 'paused' });
    assert.equal(client.isClosed, false);
    await rejectsWith(client.waitForEvent('RESUME', undefined, { timeoutMs: 50 }), 'FERRY_E_QMP_TIMEOUT');
  });
});

test('abort via AbortSignal: pending and already-aborted commands, waits and iterators', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute === 'query-status') c.reply(cmd.id, { running: true, status: 'running' });
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));

    const ac = new AbortController();
    const p = client.execute('migrate', { uri: 'tcp:127.0.0.1:1' }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 30);
    await rejectsWith(p, 'FERRY_E_ABORTED');

    const sent = srv.conns[0]!.received.length;
    await rejectsWith(client.execute('cont', {}, { signal: AbortSignal.abort() }), 'FERRY_E_ABORTED');
    assert.equal(srv.conns[0]!.received.length, sent, 'an aborted command is not sent');

    const ac2 = new AbortController();
    const w = client.waitForEvent('SHUTDOWN', undefined, { signal: ac2.signal });
    const it = client.events({ signal: ac2.signal });
    const next = it.next();
    ac2.abort();
    await rejectsWith(w, 'FERRY_E_ABORTED');
    await rejectsWith(next, 'FERRY_E_ABORTED');

    assert.equal((await client.execute('query-status')).running, true);
  });
});

test('the server closing mid-command (QEMU exiting): FERRY_E_QMP_CLOSED, waits fail, iterators end', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute === 'query-migrate') {
        c.event('RESUME');
        setTimeout(() => c.socket.destroy(), 20);
      }
    });
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const it = client.events();
    const w = client.waitForEvent('MIGRATION');
    const a = client.execute('query-migrate');
    const b = client.execute('query-block-jobs');
    await rejectsWith(a, 'FERRY_E_QMP_CLOSED');
    await rejectsWith(b, 'FERRY_E_QMP_CLOSED');
    await rejectsWith(w, 'FERRY_E_QMP_CLOSED');
    const seen: string[] = [];
    for await (const ev of it) seen.push(ev.event);
    assert.deepEqual(seen, ['RESUME']); // what came before the close is still delivered, then the end
    await client.closed;
    assert.equal(client.isClosed, true);
    await rejectsWith(client.execute('query-status'), 'FERRY_E_QMP_CLOSED');
    assert.deepEqual(await client.events().next(), { value: undefined, done: true });
  });
});

test('connect retries while the socket does not exist yet, and gives up with FERRY_E_QMP_CONNECT', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const path = join(dir, 'later.sock');
    const t0 = performance.now();
    const p = QmpClient.connect(path, { timeoutMs: 5000 });
    await sleep(300);
    servers.push(await fakeQmp(dir, (cmd, c) => c.reply(cmd.id), { path }));
    const client = track(await p);
    assert.ok(performance.now() - t0 >= 290);
    assert.equal(client.version.major, 10);

    const err = await rejectsWith(
      QmpClient.connect(join(dir, 'never.sock'), { timeoutMs: 150 }),
      'FERRY_E_QMP_CONNECT',
    );
    assert.equal(err.details?.errno, 'ENOENT');

    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(QmpClient.connect(join(dir, 'never.sock'), { signal: ac.signal }), 'FERRY_E_ABORTED');

    // accepted but never greeted (QMP serves one client at a time): a connect error, not a hang
    const mute = await fakeQmp(dir, () => {}, { greeting: false });
    servers.push(mute);
    await rejectsWith(QmpClient.connect(mute.path, { timeoutMs: 150 }), 'FERRY_E_QMP_CONNECT');
  });
});

test('quit resolves whether the socket closes before or after its reply', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, (cmd, c) => {
      if (cmd.execute !== 'quit') return c.reply(cmd.id);
      if (srv.conns.indexOf(c) === 0)
        c.socket.destroy(); // gone without a word
      else {
        c.reply(cmd.id);
        c.event('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
        c.socket.end();
      }
    });
    servers.push(srv);
    const first = track(await QmpClient.connect(srv.path));
    const other = first.execute('query-status'); // answered before quit
    assert.deepEqual(await first.execute('quit'), {});
    await other;
    await first.closed;

    const second = track(await QmpClient.connect(srv.path));
    const shutdown = second.waitForEvent('SHUTDOWN');
    assert.deepEqual(await second.execute('quit'), {});
    assert.equal((await shutdown).data.reason, 'host-qmp-quit');
    await second.closed;
    assert.equal(second.isClosed, true);
  });
});

test('close() rejects pending commands and resolves closed', async () => {
  await withFixture(async ({ dir, track, servers }) => {
    const srv = await fakeQmp(dir, () => {});
    servers.push(srv);
    const client = track(await QmpClient.connect(srv.path));
    const p = client.execute('query-status');
    await client.close();
    await rejectsWith(p, 'FERRY_E_QMP_CLOSED');
    assert.equal(client.isClosed, true);
  });
});

/** Compile-time checks of the typed overloads (never run). */
export function _typeChecks(client: QmpClient): void {
  void client.execute('query-status');
  // @ts-expect-error migrate-recover requires its uri
  void client.execute('migrate-recover');
  // @ts-expect-error unknown arguments are refused
  void client.execute('stop', { force: true });
  // @ts-expect-error unknown commands need executeRaw
  void client.execute('query-nothing');
  void client.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'postcopy-ram', state: true }],
  });
  void client.execute('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0' } } });
  void client.execute('blockdev-add', {
    driver: 'nbd',
    'node-name': 'mirror-vda',
    server: { type: 'inet', host: '10.0.0.2', port: '10809' },
    export: 'vda',
  });
}

function qemuAvailable(): boolean {
  return spawnSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' }).status === 0;
}

test(
  'a real QEMU: connect, query-version, query-status, migration capabilities, quit, process exits',
  {
    skip: qemuAvailable() ? false : 'qemu-system-x86_64 is not installed',
  },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-qmp-qemu-'));
    const path = join(dir, 'qmp.sock');
    let proc: ChildProcess | undefined;
    let client: QmpClient | undefined;
    let stderr = '';
    try {
      proc = spawn(
        'qemu-system-x86_64',
        [
          '-machine',
          'none',
          '-accel',
          'tcg',
          '-nodefaults',
          '-nographic',
          '-qmp',
          `unix:${path},server=on,wait=off`,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const exited = once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
      // Stop waiting for the socket as soon as QEMU dies instead of running out the timeout.
      const ac = new AbortController();
      void exited.then(() => ac.abort(new Error(`QEMU exited: ${stderr}`)));

      client = await QmpClient.connect(path, { timeoutMs: 15_000, signal: ac.signal });
      assert.equal(client.version.major, 10);
      const v = await client.execute('query-version');
      assert.equal(v.qemu.major, 10);
      assert.deepEqual(v.qemu, client.version);
      const st = await client.execute('query-status');
      assert.equal(typeof st.running, 'boolean');
      assert.equal(typeof st.status, 'string');
      const caps = await client.execute('query-migrate-capabilities');
      assert.ok(
        caps.some((c) => c.capability === 'postcopy-ram'),
        JSON.stringify(caps),
      );
      await rejectsWith(client.execute('migrate-recover', { uri: 'tcp:127.0.0.1:1' }), 'FERRY_E_QMP_COMMAND');

      assert.deepEqual(await client.execute('quit'), {});
      await client.closed;
      const [code] = await Promise.race([
        exited,
        sleep(10_000, undefined, { ref: false }).then(() =>
          assert.fail(`QEMU did not exit after quit: ${stderr}`),
        ),
      ]);
      assert.equal(code, 0, stderr);
    } finally {
      await client?.close();
      if (proc?.pid !== undefined && proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, 'SIGKILL');
      }
      await rm(dir, { recursive: true, force: true });
    }
  },
);
