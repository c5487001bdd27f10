import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildApp } from './api/app.ts';
import type { App } from './api/types.ts';
import { createController, type Controller } from './controller.ts';
import type { LeaseParams } from './leader.ts';
import { storesUnderTest } from '../testing/postgres.ts';

// Short, but with room for a loaded machine: a renewal may take a while without the leader losing its term.
const FAST: LeaseParams = { ttlMs: 3_000, renewMs: 50, marginMs: 500 };

for (const store of storesUnderTest()) test(`controllers sharing a store: one leads, a follower reads and redirects writes, 503 with no leader, the next takes over on release (${store.label})`, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-ha-'));
  const location = await store.location();
  const ctls: Controller[] = [];
  const apps: App[] = [];
  const deposed: string[] = [];
  try {
    const open = async (id: string): Promise<{ ctl: Controller; app: App }> => {
      const ctl = await createController({ dataDir: dir, store: location, heartbeats: false, ha: { id, params: FAST, onDeposed: () => deposed.push(id) } });
      const app = await buildApp(ctl, { tls: await ctl.ca.issue('ferry-server', ['127.0.0.1']) });
      ctls.push(ctl);
      apps.push(app);
      return { ctl, app };
    };
    const c1 = await open('c1');
    const token = c1.ctl.newAdminToken!;
    const auth = { authorization: `Bearer ${token}` };
    const c2 = await open('c2');

    // Nobody competes yet: a write has nowhere to go.
    const none = await c2.app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: {} });
    assert.equal(none.statusCode, 503);
    assert.equal(none.json().error.code, 'FERRY_E_NO_LEADER');

    c1.ctl.ha!.start('https://c1.example:7440');
    while (c1.ctl.ha!.lease.term() === undefined) await sleep(10);
    c2.ctl.ha!.start('https://c2.example:7440');
    await sleep(FAST.renewMs * 3);
    assert.equal(c1.ctl.ha!.lease.term(), 1);
    assert.equal(c2.ctl.ha!.lease.term(), undefined, 'one leader');

    const read = await c2.app.inject({ method: 'GET', url: '/api/v1/vms', headers: auth });
    assert.equal(read.statusCode, 200, 'a follower answers reads');
    const write = await c2.app.inject({ method: 'POST', url: '/api/v1/vms?x=1', headers: auth, payload: {} });
    assert.equal(write.statusCode, 307);
    assert.equal(write.headers.location, 'https://c1.example:7440/api/v1/vms?x=1');
    const leading = await c1.app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: {} });
    assert.equal(leading.statusCode, 400, 'the leader handles the write itself (and finds it bad)');

    // c1 stops: it releases the lease, and c2 leads at its next try, in the next term.
    await c1.app.close();
    await c1.ctl.close();
    ctls.splice(ctls.indexOf(c1.ctl), 1);
    const released = await c2.ctl.ha!.lease.current();
    assert.ok(released.term === 2 || !released.live, 'a released lease is free at once (or taken already)');
    const t0 = Date.now();
    while (c2.ctl.ha!.lease.term() === undefined && Date.now() - t0 < 30_000) await sleep(10);
    assert.equal(c2.ctl.ha!.lease.term(), 2);
    assert.deepEqual(deposed, [], 'stopping gives the term up, it is not deposed');
  } finally {
    for (const a of apps) await a.close().catch(() => undefined);
    for (const c of ctls) await c.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
