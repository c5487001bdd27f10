import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SETUP_MS } from './fluid.ts';
import { linkBandwidth, predictMigration, type PredictionInput } from './predict.ts';

const MiB = 1024 * 1024;
const link = (mib: number) => ({ bytesPerSec: mib * MiB, source: 'configured' as const, detail: 'test' });
const input = (o: Partial<PredictionInput>): PredictionInput => ({
  mode: 'live',
  bytes: 1024 * MiB,
  dirtyBytesPerSec: 0,
  bandwidth: link(100),
  capBytesPerSec: 0,
  maxDowntimeMs: 300,
  initialDowntimeMs: 30,
  deadlineMs: 600_000,
  at: new Date(0),
  ...o,
});

test('an idle guest: pre-copy as is, 1024 MiB at 100 MiB/s = 10.24 s plus the setup, at the starting limit', () => {
  const p = predictMigration(input({}));
  assert.equal(p.strategy, 'precopy');
  assert.equal(p.converges, true);
  assert.equal(p.totalMs, 10_240 + SETUP_MS);
  assert.equal(p.downtimeMs, 30);
});

test('dirtying 60 of 100 MiB/s: pre-copy still converges (net 40 MiB/s: 25.6 s), the limit rises to the budget', () => {
  const p = predictMigration(input({ dirtyBytesPerSec: 60 * MiB }));
  assert.equal(p.strategy, 'precopy');
  assert.equal(p.totalMs, 25_600 + SETUP_MS);
  assert.equal(p.downtimeMs, 300);
  assert.match(p.reason, /rise toward the 300 ms budget/);
});

test('dirtying 95 of 100 MiB/s: pre-copy does not converge; auto-converge throttles by ~47 % to 50 MiB/s (20.48 s)', () => {
  const p = predictMigration(input({ dirtyBytesPerSec: 95 * MiB }));
  assert.equal(p.converges, false);
  assert.equal(p.strategy, 'auto-converge');
  assert.equal(p.totalMs, 20_480 + SETUP_MS);
  assert.match(p.reason, /about 47 %/);
});

test('dirtying 150 of 100 MiB/s: post-copy sends 1024 MiB plus what was re-dirtied (capped at 1024 MiB): 20.48 s', () => {
  const p = predictMigration(input({ dirtyBytesPerSec: 150 * MiB }));
  assert.equal(p.strategy, 'postcopy');
  assert.equal(p.totalMs, 20_480 + SETUP_MS);
  assert.equal(p.downtimeMs, 30);
});

test('post-copy over the deadline: cannot converge, with what to change', () => {
  const p = predictMigration(input({ dirtyBytesPerSec: 150 * MiB, deadlineMs: 10_000 }));
  assert.equal(p.strategy, 'cannot-converge');
  assert.equal(p.totalMs, null);
  assert.equal(p.downtimeMs, null);
  assert.match(p.reason, /lower the dirty rate or raise the bandwidth/);
});

test("the request's --bandwidth caps the link; an unknown dirty rate is planned as idle and said so", () => {
  const p = predictMigration(input({ dirtyBytesPerSec: null, capBytesPerSec: 50 * MiB }));
  assert.equal(p.bandwidthBytesPerSec, 50 * MiB);
  assert.equal(p.totalMs, 20_480 + SETUP_MS);
  assert.equal(p.dirtyRateBytesPerSec, null);
  assert.match(p.reason, /unknown/);
});

test('a cold move: the whole transfer is downtime', () => {
  const p = predictMigration(input({ mode: 'cold' }));
  assert.equal(p.strategy, 'cold');
  assert.equal(p.totalMs, p.downtimeMs);
  assert.equal(p.converges, null);
});

test('the link: the median of past migrations, else the configured capacity, else the default', () => {
  const past = [
    { id: 'm3', transferredBytes: 300 * MiB, qemuTotalMs: 1000 },
    { id: 'm2', transferredBytes: 100 * MiB, qemuTotalMs: 1000 },
    { id: 'm1', transferredBytes: 200 * MiB, qemuTotalMs: 2000 },
  ];
  const m = linkBandwidth(past, 1024 * MiB, 10);
  assert.equal(m.source, 'measured');
  assert.equal(m.bytesPerSec, 100 * MiB, 'rates 300, 100, 100 MiB/s: median 100');
  assert.match(m.detail, /last 3 completed migrations.*m3, m2, m1/);
  assert.equal(linkBandwidth([], 1024 * MiB, 10).source, 'configured');
  assert.equal(linkBandwidth([], 1024 * MiB, 10).bytesPerSec, 1024 * MiB);
  const d = linkBandwidth([], 0, 10);
  assert.deepEqual([d.source, d.bytesPerSec], ['default', 10]);
});
