import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { MigrationJson } from '../common/migration.ts';
import { DEFAULT_POLICY } from '../common/policy.ts';
import { createMetrics, type ControllerMetrics } from './metrics.ts';
import { openStore } from './store/db.ts';

function job(over: Partial<MigrationJson>): MigrationJson {
  return {
    id: 'm-1',
    vm: 'web1',
    source: 'h1',
    destination: 'h2',
    mode: 'live',
    state: 'completed',
    phase: 'confirm',
    qemuStatus: 'completed',
    policy: DEFAULT_POLICY as unknown as MigrationJson['policy'],
    prediction: null,
    startedAt: new Date().toISOString(),
    finishedAt: new Date().toISOString(),
    totalMs: 4200,
    qemuTotalMs: 3900,
    downtimeMs: 42,
    guestDowntimeMs: 60,
    memoryBytes: 256 * 2 ** 20,
    transferredBytes: 300_000_000,
    iterations: 3,
    escalations: [],
    progress: null,
    why: null,
    error: null,
    timeline: [],
    waiting: null,
    pending: [],
    ...over,
  } as MigrationJson;
}

async function withMetrics(fn: (m: ControllerMetrics) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-metrics-'));
  const store = openStore(join(dir, 'ferry.db'));
  try {
    await fn(createMetrics(store));
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The value of one sample line of the exposition text, or undefined. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

test('every metric the operators rely on is registered, with its type', async () => {
  await withMetrics(async (m) => {
    const text = await m.registry.metrics();
    for (const [name, type] of [
      ['ferry_migration_duration_seconds', 'histogram'],
      ['ferry_migration_downtime_seconds', 'histogram'],
      ['ferry_migration_guest_downtime_seconds', 'histogram'],
      ['ferry_migrations_total', 'counter'],
      ['ferry_migration_transferred_bytes_total', 'counter'],
      ['ferry_migrations_in_flight', 'gauge'],
      ['ferry_migration_remaining_bytes', 'gauge'],
      ['ferry_migration_transfer_rate_bytes_per_second', 'gauge'],
      ['ferry_migration_dirty_rate_bytes_per_second', 'gauge'],
      ['ferry_api_request_duration_seconds', 'histogram'],
      ['ferry_api_requests_total', 'counter'],
      ['ferry_build_info', 'gauge'],
      ['ferry_hosts', 'gauge'],
      ['process_cpu_seconds_total', 'counter'],
      ['process_resident_memory_bytes', 'gauge'],
    ] as const) {
      assert.match(text, new RegExp(`^# TYPE ${name} ${type}$`, 'm'), name);
    }
    assert.match(text, /^ferry_build_info\{component="controller",version="\d+\.\d+\.\d+[^"]*",node="v20\.[^"]+",protocol="\d+"\} 1$/m);
  });
});

test('a job that ended is observed once: histograms, outcome counter by code, bytes', async () => {
  await withMetrics(async (m) => {
    const done = job({});
    m.migrationChanged('migration.completed', done);
    m.migrationChanged('migration.completed', done); // told twice (a replayed event): counted once
    m.migrationChanged('migration.failed', job({ id: 'm-2', state: 'failed', totalMs: 900, transferredBytes: 1000, error: { code: 'FERRY_E_DESTINATION_LOST', message: 'gone' } }));
    m.migrationChanged('migration.phase', job({ id: 'm-3', state: 'transferring', phase: 'perform' }));
    const text = await m.registry.metrics();
    assert.equal(sample(text, 'ferry_migration_duration_seconds_count', '{mode="live"}'), 1);
    assert.equal(sample(text, 'ferry_migration_duration_seconds_sum', '{mode="live"}'), 4.2);
    assert.equal(sample(text, 'ferry_migration_downtime_seconds_bucket', '{le="0.05",mode="live"}'), 1);
    assert.equal(sample(text, 'ferry_migration_guest_downtime_seconds_count', '{mode="live"}'), 1);
    assert.equal(sample(text, 'ferry_migrations_total', '{result="completed",code="none"}'), 1);
    assert.equal(sample(text, 'ferry_migrations_total', '{result="failed",code="FERRY_E_DESTINATION_LOST"}'), 1);
    assert.equal(sample(text, 'ferry_migration_transferred_bytes_total'), 300_001_000);
  });
});

test('jobs in flight are gauges by job; the history of a restarted controller is replayed', async () => {
  await withMetrics(async (m) => {
    const progress = { percent: 40, transferredBytes: 100, totalBytes: 250, remainingBytes: 150, rateBytesPerSec: 5e6, dirtyRateBytesPerSec: 1e6, pass: 2, etaMs: 30, converges: true, disk: null, sampledAt: new Date().toISOString() };
    const active = [job({ id: 'm-9', state: 'transferring', phase: 'perform', progress })];
    m.watch({ listActive: () => active, listFinished: () => [job({ id: 'm-old' })] });
    const text = await m.registry.metrics();
    const l = '{migration="m-9",vm="web1",source="h1",destination="h2",mode="live"}';
    assert.equal(sample(text, 'ferry_migration_remaining_bytes', l), 150);
    assert.equal(sample(text, 'ferry_migration_transfer_rate_bytes_per_second', l), 5e6);
    assert.equal(sample(text, 'ferry_migration_dirty_rate_bytes_per_second', l), 1e6);
    assert.equal(sample(text, 'ferry_migrations_in_flight', '{state="transferring"}'), 1);
    assert.equal(sample(text, 'ferry_migrations_in_flight', '{state="queued"}'), 0);
    assert.equal(sample(text, 'ferry_migrations_total', '{result="completed",code="none"}'), 1, 'replayed from the store');
    active.length = 0;
    const after = await m.registry.metrics();
    assert.equal(sample(after, 'ferry_migration_remaining_bytes', l), undefined, 'the series of an ended job goes away');
  });
});
