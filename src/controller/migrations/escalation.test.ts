import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_POLICY, parseBandwidth, resolvePolicy } from '../../common/policy.ts';
import { nextEscalation, type ConvergenceView } from './escalation.ts';
import { FerryError } from '../../common/errors.ts';

const view = (over: Partial<ConvergenceView>): ConvergenceView => ({
  elapsedMs: 5000,
  passes: 1,
  remainingBytes: 1e8,
  remainingByPass: [],
  msSinceProgress: 0,
  downtimeLimitMs: 30,
  postcopyActive: false,
  lastEscalationPass: 0,
  ...over,
});

test('flags resolve into a policy; bad values are refused with a stable code', () => {
  const p = resolvePolicy({ maxDowntime: '300ms', bandwidth: '100', postcopy: 'auto', tls: false });
  assert.equal(p.maxDowntimeMs, 300);
  assert.equal(p.initialDowntimeMs, 30);
  assert.equal(p.bandwidthBytesPerSec, 100 * 1024 * 1024);
  assert.equal(p.tls, false);
  assert.equal(parseBandwidth('0'), 0);
  assert.equal(parseBandwidth('1G'), 1024 ** 3);
  for (const bad of [{ mode: 'warp' }, { postcopy: 'sometimes' }, { maxDowntime: 'soon' }, { mode: 'cold', postcopy: 'always' }]) {
    assert.throws(() => resolvePolicy(bad), (e: unknown) => e instanceof FerryError && e.exit === 2, JSON.stringify(bad));
  }
});

test('a converging migration is left alone', () => {
  const shrinking = [4e8, 2e8, 1e8, 5e7, 2e7];
  assert.equal(nextEscalation(view({ passes: 5, remainingByPass: shrinking }), DEFAULT_POLICY), null);
});

test('a stuck migration doubles its downtime limit up to the budget, then switches to post-copy if allowed', () => {
  const stuck = [4e8, 1e8, 1e8, 1.05e8, 0.98e8];
  const e1 = nextEscalation(view({ passes: 5, remainingByPass: stuck }), DEFAULT_POLICY);
  assert.deepEqual(e1 && e1.kind === 'downtime-limit' && [e1.fromMs, e1.toMs], [30, 60]);
  const atBudget = view({ passes: 9, remainingByPass: stuck, downtimeLimitMs: 300, lastEscalationPass: 5 });
  assert.equal(nextEscalation(atBudget, DEFAULT_POLICY), null, 'postcopy never: nothing more to try');
  assert.equal(nextEscalation(atBudget, { ...DEFAULT_POLICY, postcopy: 'auto' })?.kind, 'postcopy');
  assert.equal(nextEscalation({ ...atBudget, passes: 6 }, { ...DEFAULT_POLICY, postcopy: 'auto' }), null, 'waits passesPerStep');
});

test('deadline and stall abort with their codes', () => {
  const late = nextEscalation(view({ elapsedMs: DEFAULT_POLICY.deadlineMs + 1 }), DEFAULT_POLICY);
  assert.equal(late?.kind === 'abort' && late.code, 'FERRY_E_MIGRATION_TIMEOUT');
  const stalled = nextEscalation(view({ msSinceProgress: 11_000 }), DEFAULT_POLICY);
  assert.equal(stalled?.kind === 'abort' && stalled.code, 'FERRY_E_MIGRATION_STALLED');
});

test('the deadline never aborts a migration in post-copy: the guest is already on its way to the destination', () => {
  const late = view({ elapsedMs: DEFAULT_POLICY.deadlineMs + 1, postcopyActive: true });
  assert.equal(nextEscalation(late, { ...DEFAULT_POLICY, postcopy: 'auto' }), null);
  // Nor does a stall: a cut link during post-copy is recovered, never aborted (the guest would be lost).
  const lateAndStalled = nextEscalation({ ...late, msSinceProgress: 11_000 }, DEFAULT_POLICY);
  assert.equal(lateAndStalled?.kind, 'postcopy-recover');
});

test('--postcopy always: post-copy once the first pass is done, asked once a pass, never before', () => {
  const always = { ...DEFAULT_POLICY, postcopy: 'always' as const };
  assert.equal(nextEscalation(view({ passes: 1 }), always), null, 'the first pass is still running');
  assert.equal(nextEscalation(view({ passes: 2 }), always)?.kind, 'postcopy');
  assert.equal(nextEscalation(view({ passes: 2, lastEscalationPass: 2 }), always), null, 'asked already in this pass');
  assert.equal(nextEscalation(view({ passes: 3, postcopyActive: true }), always), null, 'running already');
  assert.equal(nextEscalation(view({ passes: 2 }), DEFAULT_POLICY), null, 'never by default');
});
