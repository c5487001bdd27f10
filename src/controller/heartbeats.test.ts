/**
 * Heartbeat rounds at fleet size, against plain TCP listeners that count connections: a round has at
 * most 64 hosts' heartbeats in flight at once, and a host declared unreachable is left alone by the next rounds
 * for a while (backoff) while `poll(name)` still asks it at once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SyncSql } from './store/sync.ts';
import { createController } from './controller.ts';
import { nowIso } from './store/db.ts';

/** A listener that counts connections and either refuses them at once (closes) or holds them unanswered. */
async function listener(mode: 'close' | 'hold'): Promise<{ server: Server; port: number; total: () => number; peak: () => number }> {
  let total = 0;
  let open = 0;
  let peak = 0;
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    total++;
    open++;
    peak = Math.max(peak, open);
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      open--;
      sockets.delete(s);
    });
    if (mode === 'close') s.destroy();
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { server, port, total: () => total, peak: () => peak };
}

function addHosts(db: SyncSql, names: string[], port: number): void {
  const at = nowIso();
  for (const name of names) {
    db.prepare(`INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES (?, ?, 'ready', 0, NULL, ?, ?)`).run(name, `https://127.0.0.1:${port}`, at, at);
  }
}

test('an unreachable host is backed off by rounds, not by poll(name)', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-heartbeats-'));
  const gone = await listener('close');
  const ctl = await createController({ dataDir: dir, heartbeats: false, recover: false, heartbeatMs: 2000 });
  try {
    addHosts(ctl.store.sql, ['h1'], gone.port);
    for (let i = 0; i < 3; i++) await ctl.hosts.pollAll();
    assert.equal(ctl.hosts.get('h1').state, 'unreachable');
    const asked = gone.total();
    assert.ok(asked > 0);
    await ctl.hosts.pollAll();
    assert.equal(gone.total(), asked, 'the round right after the third miss leaves the host alone');
    await ctl.hosts.poll('h1');
    assert.ok(gone.total() > asked, 'poll(name) asks it all the same');
  } finally {
    await ctl.close();
    gone.server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a round over 70 silent hosts asks 64 of them first, the rest as heartbeats end', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-heartbeats-'));
  const silent = await listener('hold');
  // Heartbeats time out after 1.5 s at this interval: until then only the first 64 hosts are asked.
  const ctl = await createController({ dataDir: dir, heartbeats: false, recover: false, heartbeatMs: 1000 });
  try {
    addHosts(ctl.store.sql, Array.from({ length: 70 }, (_, i) => `h${i + 1}`), silent.port);
    const round = ctl.hosts.pollAll();
    await new Promise((r) => setTimeout(r, 700));
    // Each heartbeat is three calls (inventory, VM list, version), each its own connection at most.
    assert.ok(silent.total() <= 64 * 3, `${silent.total()} connections before the first heartbeats ended`);
    await round;
    assert.ok(silent.total() > 64 * 2, `every host was asked in the end (${silent.total()} connections)`);
  } finally {
    await ctl.close();
    silent.server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
