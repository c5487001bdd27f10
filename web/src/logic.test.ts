import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MigrationJson } from '../../src/common/migration.ts';
import { DEFAULT_POLICY } from '../../src/common/policy.ts';
import { LIVE_COMMENT as SERVER_LIVE } from '../../src/common/events.ts';
import type { VmJson } from '../../src/common/api.ts';
import { LIVE_COMMENT } from './sse.ts';
import {
  addSample,
  downtimeLimitAt,
  etaText,
  filterVms,
  formatBytes,
  formatMs,
  MonotoneProgress,
  phaseDurations,
  phaseSteps,
  share,
} from './logic.ts';

const policy = { ...DEFAULT_POLICY };

test('the progress bar never runs backwards, and a completed migration shows 100 %', () => {
  const bar = new MonotoneProgress();
  assert.deepEqual([10, 35, 20, 34, 60].map((p) => bar.show('m1', p)), [10, 35, 35, 35, 60]);
  assert.equal(bar.show('m2', 5), 5, 'each migration has its own bar');
  assert.equal(bar.show('m1', 90, 'completed'), 100);
  assert.equal(bar.show('m3', null), 0);
  assert.equal(bar.show('m3', 140), 100);
});

test('the ETA line: estimating, the estimate, not converging with what would help, the end', () => {
  const base = { state: 'transferring' as const, policy, totalMs: null };
  assert.equal(etaText({ ...base, progress: null }), 'estimating…');
  assert.equal(etaText({ ...base, progress: { etaMs: null, converges: null } }), 'estimating…');
  assert.equal(etaText({ ...base, progress: { etaMs: 4200, converges: true } }), 'about 4.20 s left');
  const stuck = etaText({ ...base, policy: { ...policy, bandwidthBytesPerSec: 1 << 20 }, progress: { etaMs: null, converges: false } });
  assert.match(stuck, /^not converging/);
  assert.match(stuck, /lift the bandwidth limit/);
  assert.match(stuck, /post-copy auto/);
  assert.equal(etaText({ ...base, state: 'completed', totalMs: 1500, progress: null }), 'done in 1.50 s');
  assert.equal(etaText({ ...base, state: 'cancelled', progress: null }), 'cancelled');
});

test('phase steps: done before the current one, the current highlighted, a failed one marked', () => {
  assert.deepEqual(
    phaseSteps({ phase: 'perform', state: 'transferring' }).map((s) => s.status),
    ['done', 'done', 'current', 'todo', 'todo'],
  );
  assert.deepEqual(phaseSteps({ phase: 'confirm', state: 'completed' }).map((s) => s.status), ['done', 'done', 'done', 'done', 'done']);
  assert.equal(phaseSteps({ phase: 'perform', state: 'cancelled' })[2]!.status, 'failed');
});

test('the downtime limit over time follows the escalations', () => {
  const m = {
    policy: { ...policy, initialDowntimeMs: 30 },
    escalations: [
      { at: '2026-01-01T00:00:10.000Z', step: { kind: 'downtime-limit' as const, fromMs: 30, toMs: 60, reason: 'x' } },
      { at: '2026-01-01T00:00:20.000Z', step: { kind: 'downtime-limit' as const, fromMs: 60, toMs: 120, reason: 'y' } },
    ],
  };
  const t = (s: number) => Date.parse('2026-01-01T00:00:00.000Z') / 1000 + s;
  assert.deepEqual([5, 10, 15, 25].map((s) => downtimeLimitAt(m, t(s))), [30, 60, 60, 120]);
});

test('samples: a repeated time is not a new point', () => {
  const s = { t: 1, remainingBytes: 5, diskRemainingBytes: null, rateBytesPerSec: 1, dirtyRateBytesPerSec: 0 };
  const one = addSample([], s);
  assert.equal(addSample(one, s).length, 1);
  assert.equal(addSample(one, { ...s, t: 2 }).length, 2);
});

test('the VM filter matches every word against name, host, state, address and boot id', () => {
  const vm = (name: string, host: string, ip: string | null): VmJson => ({ name, host, ip, state: 'running', ready: true, bootId: null } as unknown as VmJson);
  const list = [vm('web1', 'h1', '10.0.0.5'), vm('db1', 'h2', null)];
  assert.deepEqual(filterVms(list, '').map((v) => v.name), ['web1', 'db1']);
  assert.deepEqual(filterVms(list, 'H2').map((v) => v.name), ['db1']);
  assert.deepEqual(filterVms(list, 'web 10.0.0').map((v) => v.name), ['web1']);
  assert.deepEqual(filterVms(list, 'web h2'), []);
});

test('figures as text, shares and phase durations', () => {
  assert.equal(formatBytes(256 * 1024 * 1024), '256 MiB');
  assert.equal(formatBytes(null), '—');
  assert.equal(formatMs(12), '12 ms');
  assert.equal(formatMs(65_000), '1 min 5 s');
  assert.equal(share(3, 4), 75);
  assert.equal(share(5, 0), 0);
  const m = {
    finishedAt: '2026-01-01T00:00:03.000Z',
    timeline: [
      { at: '2026-01-01T00:00:00.000Z', state: 'queued', phase: 'begin' },
      { at: '2026-01-01T00:00:01.000Z', state: 'transferring', phase: 'perform' },
    ],
  } as unknown as Pick<MigrationJson, 'timeline' | 'finishedAt'>;
  assert.deepEqual(phaseDurations(m).map((e) => e.ms), [1000, 2000]);
});

test("the console's live marker is the server's", () => {
  assert.equal(LIVE_COMMENT, SERVER_LIVE);
});
