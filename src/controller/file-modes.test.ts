/**
 * The controller's secrets on disk: data dir and pki/ 0700; CA key, controller key, admin token, and the
 * store with its WAL and SHM 0600 (the store holds token hashes and the cluster's state) — under the usual
 * umask, and also for a data dir an older Ferry left with wider modes. The agent's identity files are
 * checked in src/agent/identity.test.ts, the QMP and guest sockets in src/qemu/process.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createController } from './controller.ts';

const mode = (f: string): string => (statSync(f).mode & 0o777).toString(8);

test('controller data dir: keys, token and the store (with WAL and SHM) are 0600, dirs 0700', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-modes-'));
  const umask = process.umask(0o022);
  try {
    const check = (): void => {
      assert.equal(mode(dir), '700', 'data dir');
      assert.equal(mode(join(dir, 'pki')), '700', 'pki');
      for (const f of ['pki/ca.key', 'pki/controller.key', 'admin-token', 'ferry.db', 'ferry.db-wal', 'ferry.db-shm']) {
        assert.equal(mode(join(dir, f)), '600', f);
      }
    };
    let ctl = await createController({ dataDir: dir, heartbeats: false, recover: false });
    try {
      check();
    } finally {
      await ctl.close();
    }
    // What an older Ferry left: the store as SQLite made it under umask 022, dirs wide open.
    chmodSync(dir, 0o755);
    chmodSync(join(dir, 'pki'), 0o755);
    chmodSync(join(dir, 'ferry.db'), 0o644);
    ctl = await createController({ dataDir: dir, heartbeats: false, recover: false });
    try {
      check();
    } finally {
      await ctl.close();
    }
  } finally {
    process.umask(umask);
    rmSync(dir, { recursive: true, force: true });
  }
});
