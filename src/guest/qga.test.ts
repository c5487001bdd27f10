import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qgaProbe, QgaClient } from './qga.ts';

const BOOT = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

interface FakeOpts {
  /** Junk an earlier client left in the pipe, sent before anything else. */
  stale?: string;
  fileBlocked?: boolean;
  silent?: boolean;
}

/** A fake qemu-ga at the wire: answers lines the way qemu-ga does (0xFF before a sync answer). */
async function fakeQga(o: FakeOpts = {}): Promise<{ path: string; server: Server; seen: string[]; done: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-qga-'));
  const path = join(dir, 'qga.sock');
  const seen: string[] = [];
  const server = createServer((s: Socket) => {
    s.setEncoding('latin1');
    if (o.stale !== undefined) s.write(o.stale);
    let buf = '';
    s.on('data', (chunk: string) => {
      buf += chunk.replaceAll('\xff', '');
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: Record<string, unknown> };
        buf = buf.slice(nl + 1);
        seen.push(req.execute);
        if (o.silent) continue;
        const reply = (v: unknown) => s.write(JSON.stringify({ return: v }) + '\n');
        switch (req.execute) {
          case 'guest-sync-delimited':
            s.write('\xff', 'latin1');
            reply(req.arguments?.id);
            break;
          case 'guest-ping':
            reply({});
            break;
          case 'guest-file-open':
            if (o.fileBlocked) s.write(JSON.stringify({ error: { class: 'GenericError', desc: 'command disabled' } }) + '\n');
            else reply(7);
            break;
          case 'guest-file-read':
            reply({ count: 37, 'buf-b64': Buffer.from(BOOT + '\n').toString('base64'), eof: true });
            break;
          case 'guest-file-close':
            reply({});
            break;
          case 'guest-exec':
            reply({ pid: 42 });
            break;
          case 'guest-exec-status':
            reply({ exited: true, exitcode: 0, 'out-data': Buffer.from(BOOT + '\n').toString('base64') });
            break;
          default:
            s.write(JSON.stringify({ error: { class: 'CommandNotFound', desc: req.execute } }) + '\n');
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server, seen, done: async () => { await new Promise<void>((r) => server.close(() => r())); await rm(dir, { recursive: true, force: true }); } };
}

test('qga: sync drops stale answers of an earlier client, then ping and boot id by guest-file-*', async () => {
  const f = await fakeQga({ stale: '{"return": {"count": 3}}\n{"return": 12' });
  try {
    assert.deepEqual(await qgaProbe(f.path), { bootId: BOOT });
    assert.deepEqual(f.seen, ['guest-sync-delimited', 'guest-ping', 'guest-file-open', 'guest-file-read', 'guest-file-close']);
  } finally {
    await f.done();
  }
});

test('qga: where file access is blocked, the boot id comes from guest-exec of cat', async () => {
  const f = await fakeQga({ fileBlocked: true });
  try {
    const c = await QgaClient.connect(f.path);
    try {
      assert.equal(await c.bootId(), BOOT);
      await assert.rejects(c.execute('guest-nope'), { code: 'FERRY_E_GUEST_COMMAND' });
    } finally {
      await c.close();
    }
    assert.ok(f.seen.includes('guest-exec') && f.seen.includes('guest-exec-status'));
  } finally {
    await f.done();
  }
});

test('qga: a guest whose agent never answers is a timeout, and a missing socket a connect error', async () => {
  const f = await fakeQga({ silent: true });
  try {
    await assert.rejects(QgaClient.connect(f.path, { timeoutMs: 200 }), { code: 'FERRY_E_GUEST_TIMEOUT' });
    await assert.rejects(QgaClient.connect(f.path + '.nope', { timeoutMs: 200 }), { code: 'FERRY_E_GUEST_COMMAND' });
  } finally {
    await f.done();
  }
});
