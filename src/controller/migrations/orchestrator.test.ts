import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nearSwitchover } from './orchestrator.ts';

const progress = (etaMs: number | null) => ({
  percent: 50,
  transferredBytes: 1,
  totalBytes: 2,
  remainingBytes: 1,
  rateBytesPerSec: 1,
  dirtyRateBytesPerSec: 0,
  pass: 1,
  etaMs,
  converges: true,
  disk: null,
  sampledAt: '2026-12-01T00:00:00.000Z',
});

test('the source is read quickly only near the switch-over', () => {
  assert.equal(nearSwitchover({ qemuStatus: 'device', progress: null }, 100), true);
  assert.equal(nearSwitchover({ qemuStatus: 'active', progress: progress(150) }, 100), true);
  assert.equal(nearSwitchover({ qemuStatus: 'active', progress: progress(5000) }, 100), false);
  // Estimating: no reason to hurry.
  assert.equal(nearSwitchover({ qemuStatus: 'active', progress: progress(null) }, 100), false);
  assert.equal(nearSwitchover({ qemuStatus: 'setup', progress: null }, 100), false);
});
