import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProgressModel, predict, sampleFromQueryMigrate, toMigrationProgress, type QueryMigrateInfo } from './progress.ts';

const MiB = 1024 * 1024;

function info(status: string, transferred: number, remaining: number, o: Partial<NonNullable<QueryMigrateInfo['ram']>> = {}): QueryMigrateInfo {
  return { status, 'total-time': 0, ram: { transferred, remaining, total: 256 * MiB, 'page-size': 4096, 'dirty-pages-rate': 0, 'dirty-sync-count': 1, mbps: 0, ...o } };
}

test('an idle guest: percent grows, the ETA is remaining over rate, it converges', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 0));
  const v = m.add(sampleFromQueryMigrate(info('active', 64 * MiB, 192 * MiB), 1000));
  assert.equal(v.ramPercent, 25);
  assert.equal(v.percent, 25);
  assert.equal(v.rateBytesPerSec, 64 * MiB);
  assert.equal(v.converges, true);
  // 192 MiB left, QEMU stops the guest when 64 MiB/s × 0.3 s are left: (192 − 19.2) / 64 s + 0.3 s.
  assert.ok(Math.abs(v.etaMs! - 3000) < 20, String(v.etaMs));
  assert.equal(v.pass, 1);
});

test('a guest dirtying faster than the link: no ETA, converges false', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 0));
  // 40 MiB/s sent, 12 800 pages/s × 4 KiB = 50 MiB/s dirtied.
  const v = m.add(sampleFromQueryMigrate(info('active', 40 * MiB, 100 * MiB, { 'dirty-pages-rate': 12_800, 'dirty-sync-count': 7 }), 1000));
  assert.equal(v.dirtyRateBytesPerSec, 50 * MiB);
  assert.equal(v.converges, false);
  assert.equal(v.etaMs, null);
  assert.deepEqual(v.prediction, { totalMs: null, downtimeMs: null, converges: false });
  assert.equal(v.pass, 7);
});

test('the rate is smoothed, not the last jump', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300, alpha: 0.5 });
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 0));
  m.add(sampleFromQueryMigrate(info('active', 100 * MiB, 156 * MiB), 1000));
  const v = m.add(sampleFromQueryMigrate(info('active', 100 * MiB, 156 * MiB), 2000));
  assert.equal(v.rateBytesPerSec, 50 * MiB);
});

test('completed is 100 % with QEMU’s own times; mirrors count in the overall percent', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  const mirror = { doneBytes: 256 * MiB, totalBytes: 512 * MiB, ready: false };
  const v1 = m.add(sampleFromQueryMigrate({ status: 'none' }, 0, mirror));
  assert.equal(v1.percent, 50);
  assert.equal(v1.ramPercent, 0);
  assert.equal(toMigrationProgress(v1).disk?.totalBytes, 512 * MiB);
  const done = m.add(sampleFromQueryMigrate({ ...info('completed', 300 * MiB, 0), 'total-time': 1234, downtime: 12 }, 2000));
  assert.equal(done.percent, 100);
  assert.equal(done.etaMs, 0);
  assert.deepEqual(done.prediction, { totalMs: 1234, downtimeMs: 12, converges: true });
});

test('predict before the start: disks first, then memory; no rate means no prediction', () => {
  const p = predict({ memoryBytes: 1024 * MiB, diskBytes: 1024 * MiB, rateBytesPerSec: 512 * MiB, dirtyRateBytesPerSec: 0, downtimeLimitMs: 100 });
  assert.equal(p.converges, true);
  assert.equal(p.downtimeMs, 100);
  assert.ok(Math.abs(p.totalMs! - (2000 + (1024 - 51.2) / 512 * 1000 + 100)) < 2, String(p.totalMs));
  assert.equal(predict({ memoryBytes: 1, diskBytes: 0, rateBytesPerSec: 0, dirtyRateBytesPerSec: 0, downtimeLimitMs: 1 }).converges, false);
  // Small enough to go in one stop: downtime is what it takes to send it.
  const tiny = predict({ memoryBytes: 10 * MiB, diskBytes: 0, rateBytesPerSec: 100 * MiB, dirtyRateBytesPerSec: 0, downtimeLimitMs: 300 });
  assert.deepEqual(tiny, { totalMs: 100, downtimeMs: 100, converges: true });
});

test('estimating until a rate is measured over a window: never a huge ETA from the first few KiB', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  assert.equal(m.add(sampleFromQueryMigrate(info('setup', 0, 0), 0)).etaMs, null);
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 50));
  // 8 KiB in 50 ms would say 256 MiB take ~27 minutes.
  const early = m.add(sampleFromQueryMigrate(info('active', 8192, 256 * MiB - 8192), 100));
  assert.equal(early.etaMs, null);
  assert.equal(early.prediction.totalMs, null);
  const later = m.add(sampleFromQueryMigrate(info('active', 64 * MiB, 192 * MiB), 1100));
  assert.notEqual(later.etaMs, null);
  assert.ok(later.etaMs! < 10_000, String(later.etaMs));
});

test('zero pages: remaining falls faster than bytes are sent, and the ETA follows remaining', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 0));
  // 32 MiB on the wire cleared 128 MiB of guest memory (96 MiB of it zero pages).
  const v = m.add(sampleFromQueryMigrate(info('active', 32 * MiB, 128 * MiB), 1000));
  assert.equal(v.rateBytesPerSec, 32 * MiB);
  // Wire rate alone would say (128 − 9.6) / 32 + 0.3 ≈ 4 s; at 128 MiB/s cleared it is under 1.3 s.
  assert.ok(v.etaMs! > 800 && v.etaMs! < 1300, String(v.etaMs));
});

test('a later pass: re-dirtied pages slow the ETA down, and the pass change does not count as clearing', () => {
  const m = new ProgressModel({ downtimeLimitMs: 300 });
  m.add(sampleFromQueryMigrate(info('active', 0, 256 * MiB), 0));
  m.add(sampleFromQueryMigrate(info('active', 100 * MiB, 156 * MiB), 1000));
  // Pass 2: 40 MiB re-dirtied came back into remaining; the guest dirties 10 MiB/s.
  const v = m.add(
    sampleFromQueryMigrate(info('active', 200 * MiB, 40 * MiB, { 'dirty-sync-count': 2, 'dirty-pages-rate': 2560 }), 2000),
  );
  assert.equal(v.converges, true);
  // (40 − 30) MiB at (100 − 10) MiB/s net, then the last 30 MiB within the 300 ms limit.
  assert.ok(v.etaMs! > 300 && v.etaMs! < 600, String(v.etaMs));
});
