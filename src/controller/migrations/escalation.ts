/**
 * The escalation ladder that makes a
 * live migration converge or end honestly. `nextEscalation` is pure: given the job's progress so far it says
 * what to do next; the orchestrator applies it (through the source agent) and records it in `escalations[]`.
 *
 * The ladder, in order, each step only when the previous one did not make the migration converge:
 *  1. start with a low downtime limit (a fraction of the budget: shorter pauses when the guest allows it);
 *  2. not converging → double the downtime limit, up to the VM's budget (`--max-downtime`);
 *  3. at the budget and still not converging → switch to post-copy when allowed (`--postcopy auto`);
 *  4. past the deadline → abort (FERRY_E_MIGRATION_TIMEOUT), unless post-copy already started (it cannot be
 *     undone; it ends by itself); no progress at all → abort (STALLED).
 */
import type { Escalation, MigrationPolicy } from '../../common/policy.ts';

/** What the orchestrator knows of a running live migration when it asks the policy. */
export interface ConvergenceView {
  elapsedMs: number;
  /** QEMU's dirty-sync-count: the pre-copy pass number. */
  passes: number;
  remainingBytes: number;
  /** Remaining bytes at the end of each pass so far (index = pass); used to see if passes shrink. */
  remainingByPass: readonly number[];
  /** Milliseconds since the transferred byte count last grew. */
  msSinceProgress: number;
  downtimeLimitMs: number;
  postcopyActive: boolean;
  /** Pass number at which the last escalation was applied (0 if none). */
  lastEscalationPass: number;
}


/** True when the last passes did not shrink what is left to send (by at least 10 %). */
export function isStuck(remainingByPass: readonly number[], window: number): boolean {
  if (remainingByPass.length < window + 1) return false;
  const recent = remainingByPass.slice(-window - 1);
  const first = recent[0]!;
  const best = Math.min(...recent.slice(1));
  return best > first * 0.9;
}

export function nextEscalation(v: ConvergenceView, p: MigrationPolicy): Escalation | null {
  // Once post-copy runs, the destination holds the guest and nothing can be cancelled: a deadline abort
  // would only mark a guest that is arriving as lost. What is left (pulling the rest) ends by itself.
  if (v.elapsedMs > p.deadlineMs && !v.postcopyActive) {
    return { kind: 'abort', code: 'FERRY_E_MIGRATION_TIMEOUT', reason: `not finished within ${p.deadlineMs} ms` };
  }
  if (v.msSinceProgress > p.stallTimeoutMs) {
    // Post-copy cannot be cancelled (the guest's pages are split between the hosts): reconnect instead.
    if (v.postcopyActive) return { kind: 'postcopy-recover', reason: `post-copy: no bytes moved for ${Math.round(v.msSinceProgress)} ms (link down?)` };
    return {
      kind: 'abort',
      code: 'FERRY_E_MIGRATION_STALLED',
      reason: `no bytes moved for ${Math.round(v.msSinceProgress)} ms (link down?)`,
    };
  }
  if (v.postcopyActive) return null;
  // `--postcopy always`: once the first pass is done every page went once; the rest is faster pulled on demand.
  if (p.postcopy === 'always' && v.passes >= 2 && v.lastEscalationPass < v.passes) {
    return { kind: 'postcopy', reason: `pass ${v.passes}: the first pass is done (--postcopy always)` };
  }
  if (v.passes - v.lastEscalationPass < p.passesPerStep) return null;
  if (!isStuck(v.remainingByPass, p.passesPerStep - 1)) return null;
  if (v.downtimeLimitMs < p.maxDowntimeMs) {
    const toMs = Math.min(p.maxDowntimeMs, v.downtimeLimitMs * 2);
    return {
      kind: 'downtime-limit',
      fromMs: v.downtimeLimitMs,
      toMs,
      reason: `pass ${v.passes}: ${v.remainingBytes} bytes still dirty, not shrinking`,
    };
  }
  if (p.postcopy === 'auto') {
    return { kind: 'postcopy', reason: `pass ${v.passes}: at the downtime budget and still not converging` };
  }
  return null;
}
