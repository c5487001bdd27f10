/**
 * The queue across a controller restart, against fake agents at the wire: a job that waits for the
 * outbound limit stays `queued` (nothing asked of any agent), and starts once the running one ended.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { joinFakeAgent, type FakeAgent } from '../../testing/fake-agent.ts';
import { createController, type Controller } from '../controller.ts';
import { storesUnderTest } from '../../testing/postgres.ts';
import { DEFAULT_LIMITS } from './queue.ts';
import type { MigrationJson } from '../../common/migration.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => T | null): Promise<T> {
  for (let i = 0; i < 400; i++) {
    const v = fn();
    if (v !== null) return v;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

for (const store of storesUnderTest()) test(`a queued job survives a controller restart queued, never half-started, and starts when the limit allows (${store.label})`, { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-queue-'));
  const opts = { dataDir: dir, store: await store.location(), heartbeats: false, probe: false, limits: { ...DEFAULT_LIMITS, maxOutbound: 1 }, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] };
  let ctl: Controller | undefined = await createController(opts);
  const agents: FakeAgent[] = [];
  try {
    agents.push(await joinFakeAgent(ctl, 'h1'), await joinFakeAgent(ctl, 'h2'));
    const [h1, h2] = agents as [FakeAgent, FakeAgent];
    await ctl.vms.create({ name: 'v1', memory: '128M', host: 'h1' });
    await ctl.vms.create({ name: 'v2', memory: '128M', host: 'h1' });
    h1.completeAfterPolls = Number.POSITIVE_INFINITY; // v1's migration keeps transferring
    const m1 = await ctl.migrations.migrate('v1', { to: 'h2', storage: 'shared' });
    const m2 = await ctl.migrations.migrate('v2', { to: 'h2', storage: 'shared' });
    assert.equal(m2.state, 'queued');
    assert.deepEqual([m2.queue?.position, m2.queue?.reason], [1, 'outbound limit of h1 (1/1)']);
    const c1 = ctl;
    await until('v1 transferring', () => (c1.migrations.jobs.mustGet(m1.id).state === 'transferring' ? true : null));

    await ctl.close();
    ctl = await createController(opts);
    const c2 = ctl;
    await sleep(500);
    assert.equal(c2.migrations.jobs.mustGet(m2.id).state, 'queued', 'still queued after the restart');
    const askedAbout = (id: string) => [...h1.calls, ...h2.calls].filter((c) => c.includes(id));
    assert.deepEqual(askedAbout(m2.id), [], 'nothing was asked of any agent for the queued job');

    h1.completeAfterPolls = 1;
    const done = await until('both to end', () => {
      const js = [m1, m2].map((m) => c2.migrations.jobs.mustGet(m.id));
      return js.every((j) => ['completed', 'failed', 'cancelled'].includes(j.state)) ? js : null;
    });
    assert.deepEqual(done.map((j: MigrationJson) => j.state), ['completed', 'completed'], JSON.stringify(done.map((j) => j.error)));
    const [, j2] = done as [MigrationJson, MigrationJson];
    assert.ok(Date.parse(j2.timeline.find((t) => t.state === 'preparing')!.at) >= Date.parse(done[0]!.finishedAt!), 'v2 started after v1 ended');
    assert.equal(c2.vms.get('v2').host, 'h2');
  } finally {
    await ctl?.close();
    for (const a of agents) await a.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
