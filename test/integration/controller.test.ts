/**
 * A real `ferry server` process over real HTTPS (the cluster CA pinned): health, the bearer token
 * refused and accepted, the SSE stream delivering a live event and replaying it with Last-Event-ID,
 * a graceful exit on SIGTERM, and a restart over the same data dir (no new admin token).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Agent, request } from 'undici';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';

interface Started {
  proc: ChildProcess;
  info: { url: string; caFingerprint: string; caHash: string; adminToken?: string };
  stderr: () => string;
}

async function startServer(dataDir: string): Promise<Started> {
  const proc = spawn(process.execPath, [join(PACKAGE_ROOT, 'bin/ferry.js'), 'server', '--data', dataDir, '--listen', '127.0.0.1:0', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const lines = createInterface({ input: proc.stdout! });
  const first = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not start in 30 s: ${err}`)), 30_000);
    lines.once('line', (l) => {
      clearTimeout(t);
      resolve(l);
    });
    proc.once('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
  return { proc, info: JSON.parse(first) as Started['info'], stderr: () => err };
}

async function stop(s: Started | undefined): Promise<number | null> {
  if (!s || s.proc.exitCode !== null) return s?.proc.exitCode ?? null;
  const exited = new Promise<number | null>((r) => s.proc.once('exit', (code) => r(code)));
  s.proc.kill('SIGTERM');
  const t = setTimeout(() => s.proc.kill('SIGKILL'), 10_000);
  const code = await exited;
  clearTimeout(t);
  return code;
}

test('ferry server over real HTTPS: health, auth, SSE with replay, graceful stop, restart', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-ctl-it-'));
  const dataDir = join(dir, 'server');
  let s: Started | undefined;
  let dispatcher: Agent | undefined;
  try {
    s = await startServer(dataDir);
    const { url, adminToken } = s.info;
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(adminToken, 'first start prints the admin token');
    assert.equal(readFileSync(join(dataDir, 'admin-token'), 'utf8').trim(), adminToken);
    const ca = readFileSync(join(dataDir, 'pki', 'ca.crt'), 'utf8');
    dispatcher = new Agent({ connect: { ca } });
    const call = async (path: string, init: { method?: string; token?: string; body?: unknown } = {}) => {
      const res = await request(url + path, {
        method: (init.method ?? 'GET') as 'GET' | 'POST',
        dispatcher,
        headers: {
          ...(init.token ? { authorization: `Bearer ${init.token}` } : {}),
          ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: init.body === undefined ? null : JSON.stringify(init.body),
      });
      return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
    };

    const health = await call('/api/v1/health');
    assert.equal(health.status, 200);
    assert.equal(health.body.caFingerprint, s.info.caFingerprint);

    const refused = await call('/api/v1/hosts');
    assert.equal(refused.status, 401);
    assert.equal((refused.body.error as { code: string }).code, 'FERRY_E_UNAUTHORIZED');
    const accepted = await call('/api/v1/hosts', { token: adminToken });
    assert.equal(accepted.status, 200);

    // Live: subscribe, then cause an event.
    const ac = new AbortController();
    const sse = await request(url + '/api/v1/events', {
      dispatcher,
      headers: { authorization: `Bearer ${adminToken}`, accept: 'text/event-stream' },
      signal: ac.signal,
    });
    assert.equal(sse.statusCode, 200);
    assert.match(String(sse.headers['content-type']), /text\/event-stream/);
    const got: EventSourceMessage[] = [];
    const parser = createParser({ onEvent: (e) => got.push(e) });
    const live = (async () => {
      try {
        for await (const chunk of sse.body) {
          parser.feed((chunk as Buffer).toString());
          if (got.some((e) => e.event === 'join-token.created')) return;
        }
      } catch {
        // aborted
      }
    })();
    const tok = await call('/api/v1/join-tokens', { method: 'POST', token: adminToken, body: {} });
    assert.equal(tok.status, 200);
    await Promise.race([live, new Promise((_, rej) => setTimeout(() => rej(new Error('no SSE event within 10 s')), 10_000))]);
    ac.abort();
    const ev = got.find((e) => e.event === 'join-token.created')!;
    assert.match(ev.id ?? '', /^\d+$/);
    const data = JSON.parse(ev.data) as { type: string; subject: string; seq: number };
    assert.equal(data.type, 'join-token.created');
    assert.equal(String(data.seq), ev.id);

    // Replay: Last-Event-ID one before it gets it again, from the table.
    const ac2 = new AbortController();
    const replay = await request(url + '/api/v1/events', {
      dispatcher,
      headers: { authorization: `Bearer ${adminToken}`, 'last-event-id': String(Number(ev.id) - 1) },
      signal: ac2.signal,
    });
    const again: EventSourceMessage[] = [];
    const p2 = createParser({ onEvent: (e) => again.push(e) });
    for await (const chunk of replay.body) {
      p2.feed((chunk as Buffer).toString());
      if (again.length > 0) break;
    }
    ac2.abort();
    assert.equal(again[0]?.id, ev.id);

    // Graceful stop, then a restart over the same data dir keeps the CA and prints no new token.
    assert.equal(await stop(s), 0, s.stderr());
    s = await startServer(dataDir);
    assert.equal(s.info.adminToken, undefined);
    const before = health.body.caFingerprint;
    assert.equal(s.info.caFingerprint, before);
    const stillOk = await call2(s.info.url, ca, adminToken);
    assert.equal(stillOk, 200);
    assert.equal(await stop(s), 0, s.stderr());
  } finally {
    await stop(s).catch(() => undefined);
    await dispatcher?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

async function call2(url: string, ca: string, token: string): Promise<number> {
  const d = new Agent({ connect: { ca } });
  try {
    const res = await request(url + '/api/v1/vms', { dispatcher: d, headers: { authorization: `Bearer ${token}` } });
    await res.body.dump();
    return res.statusCode;
  } finally {
    await d.close();
  }
}
