import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestChannel } from './client.ts';
import { FerryError } from '../common/errors.ts';

/** A fake of QEMU's socket end of the port, scripted per command: the wire is real, the guest is not. */
async function fakePort(answer: (cmd: string, tag: string, sock: Socket) => void): Promise<{ path: string; server: Server; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-guest-client-'));
  const path = join(dir, 'guest.sock');
  const server = createServer((sock) => {
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /^#(\d+) (.*)$/.exec(line);
        if (m) answer(m[2]!, m[1]!, sock);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, server, dir };
}

test('replies are matched by tag: a late reply to a timed-out command is dropped', async () => {
  let slowSock: Socket | undefined;
  let slowTag = '';
  const f = await fakePort((cmd, tag, sock) => {
    if (cmd === 'info') {
      sock.write('garbage that is not json\n');
      sock.write(`{"tag":${tag},"ok":true,"bootId":"b","uptimeMs":1,"dirty":{"running":false,"mib":0,"rateMBps":0,"passes":0}}\n`);
    } else if (cmd === 'dirty verify') {
      slowSock = sock;
      slowTag = tag; // answered later, after the client gave up
    } else if (cmd === 'probe 7') {
      slowSock?.write(`{"tag":${slowTag},"ok":true,"pages":1,"passes":1,"cursor":0}\n`);
      sock.write(`{"tag":${tag},"ok":true,"probe":7}\n`);
    } else {
      sock.write(`{"tag":${tag},"ok":false,"error":"unknown command"}\n`);
    }
  });
  const ch = await GuestChannel.connect(f.path);
  try {
    assert.equal((await ch.info()).bootId, 'b');
    await assert.rejects(ch.dirtyVerify({ timeoutMs: 100 }), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_GUEST_TIMEOUT');
    assert.equal(await ch.probe(7), 7);
    await assert.rejects(ch.command('bogus'), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_GUEST_COMMAND');
    assert.deepEqual(await ch.command('bogus', { raw: true }), { ok: false, error: 'unknown command' });
    const ac = new AbortController();
    const p = ch.dirtyVerify({ signal: ac.signal });
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_ABORTED');
  } finally {
    await ch.close();
    f.server.close();
    await rm(f.dir, { recursive: true, force: true });
  }
});

test('commands queue: one at a time, each gets its own reply', async () => {
  const f = await fakePort((cmd, tag, sock) => {
    const n = /^probe (\d+)$/.exec(cmd)![1]!;
    setTimeout(() => sock.write(`{"tag":${tag},"ok":true,"probe":${n}}\n`), 5);
  });
  const ch = await GuestChannel.connect(f.path);
  try {
    const got = await Promise.all([1, 2, 3, 4, 5].map((i) => ch.probe(i)));
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
  } finally {
    await ch.close();
    f.server.close();
    await rm(f.dir, { recursive: true, force: true });
  }
});

test('a closed channel fails the command in flight and the next ones', async () => {
  const f = await fakePort((_cmd, _tag, sock) => sock.destroy());
  const ch = await GuestChannel.connect(f.path);
  try {
    await assert.rejects(ch.info(), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_GUEST_COMMAND');
    await assert.rejects(ch.info(), /closed/);
  } finally {
    await ch.close();
    f.server.close();
    await rm(f.dir, { recursive: true, force: true });
  }
});

test('connect waits for the socket to appear, then gives up with a clear error', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-guest-client-'));
  try {
    await assert.rejects(
      GuestChannel.connect(join(dir, 'none.sock'), { timeoutMs: 150 }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_GUEST_COMMAND' && /ENOENT/.test(e.message),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
