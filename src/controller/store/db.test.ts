import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from './db.ts';
import { MIGRATIONS } from './migrations.ts';

test('migrations apply once and are idempotent at restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-store-'));
  try {
    const file = join(dir, 'ferry.db');
    const a = openStore(file);
    assert.deepEqual(a.applied, MIGRATIONS.map((m) => m.version));
    await a.db.insertInto('hosts').values({ name: 'h1', url: 'https://10.0.0.1:1', state: 'ready', maintenance: 0, inventory: null, last_seen_at: null, joined_at: 'now' }).execute();
    assert.equal(a.sqlite.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(a.sqlite.pragma('foreign_keys', { simple: true }), 1);
    await a.close();
    const b = openStore(file);
    try {
      assert.deepEqual(b.applied, []);
      const rows = await b.db.selectFrom('hosts').selectAll().execute();
      assert.equal(rows.length, 1);
      const versions = b.sqlite.prepare('SELECT version FROM schema_migrations').all();
      assert.equal(versions.length, MIGRATIONS.length);
      // Foreign keys hold: a VM on an unknown host is refused.
      await assert.rejects(
        b.db.insertInto('vms').values({ name: 'v', host: 'nope', state: 'stopped', spec: '{}', boot_id: null, ready: 0, ip: null, created_at: 'x', updated_at: 'x' }).execute(),
      );
    } finally {
      await b.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
