/**
 * Migration policy: what the user asked for (or Ferry's defaults), and the escalation ladder that makes a
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
import { FerryError } from '../common/errors.ts';
import { parseDuration, parseSize } from '../common/units.ts';
import { MIGRATION_MODES, type MigrationMode } from './states.ts';

export const STORAGE_MODES = ['auto', 'shared', 'copy'] as const;
export type StorageMode = (typeof STORAGE_MODES)[number];
export const POSTCOPY_MODES = ['never', 'auto', 'always'] as const;
export type PostcopyMode = (typeof POSTCOPY_MODES)[number];

export interface MigrationPolicy {
  mode: MigrationMode;
  storage: StorageMode;
  postcopy: PostcopyMode;
  /** The VM's downtime budget: the most the guest may be paused at switch-over. */
  maxDowntimeMs: number;
  /** The downtime limit QEMU starts with (escalated up to maxDowntimeMs). */
  initialDowntimeMs: number;
  /** Bytes per second; 0 = no limit (QEMU's own 128 MiB/s default cap is lifted). */
  bandwidthBytesPerSec: number;
  tls: boolean;
  autoConverge: boolean;
  xbzrle: boolean;
  /** Number of multifd channels; 0 = off. */
  multifd: number;
  /** No progress in transferred bytes for this long → abort (a cut link leaves QEMU `active` forever). */
  stallTimeoutMs: number;
  /** The whole migration must end within this; past it → abort. */
  deadlineMs: number;
  /** Passes without convergence before the next escalation step. */
  passesPerStep: number;
}

export const DEFAULT_POLICY: MigrationPolicy = {
  mode: 'live',
  storage: 'auto',
  postcopy: 'never',
  maxDowntimeMs: 300,
  initialDowntimeMs: 30,
  bandwidthBytesPerSec: 0,
  tls: true,
  autoConverge: false,
  xbzrle: false,
  multifd: 0,
  stallTimeoutMs: 10_000,
  deadlineMs: 10 * 60_000,
  passesPerStep: 4,
};

/** What a user may say (CLI flags / API body), each optional, as strings or numbers. */
export interface PolicyInput {
  mode?: string;
  storage?: string;
  postcopy?: string;
  maxDowntime?: string | number;
  bandwidth?: string | number;
  tls?: boolean;
  autoConverge?: boolean;
  xbzrle?: boolean;
  multifd?: number;
  stallTimeout?: string | number;
  deadline?: string | number;
}

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], what: string, dflt: T): T {
  if (value === undefined) return dflt;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new FerryError('FERRY_E_BAD_INPUT', `Bad ${what} ${JSON.stringify(value)}: one of ${allowed.join(', ')}.`);
}

/** `--bandwidth`: `0` (no limit), a number of MiB/s, or a size per second such as `100M`. */
export function parseBandwidth(v: string | number): number {
  if (v === 0 || v === '0') return 0;
  if (typeof v === 'number') return Math.round(v * 1024 * 1024);
  const t = v.replace(/\/s$/i, '').replace(/ps$/i, '');
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1024 * 1024);
  return parseSize(t, 'bandwidth');
}

export function resolvePolicy(input: PolicyInput = {}): MigrationPolicy {
  const p: MigrationPolicy = { ...DEFAULT_POLICY };
  p.mode = oneOf(input.mode, MIGRATION_MODES, 'mode', p.mode);
  p.storage = oneOf(input.storage, STORAGE_MODES, 'storage', p.storage);
  p.postcopy = oneOf(input.postcopy, POSTCOPY_MODES, 'postcopy', p.postcopy);
  if (input.maxDowntime !== undefined) p.maxDowntimeMs = parseDuration(input.maxDowntime, 'max downtime');
  if (p.maxDowntimeMs < 1) throw new FerryError('FERRY_E_BAD_INPUT', 'The max downtime must be at least 1ms.');
  p.initialDowntimeMs = Math.min(p.maxDowntimeMs, Math.max(10, Math.round(p.maxDowntimeMs / 10)));
  if (input.bandwidth !== undefined) p.bandwidthBytesPerSec = parseBandwidth(input.bandwidth);
  if (input.tls !== undefined) p.tls = input.tls;
  if (input.autoConverge !== undefined) p.autoConverge = input.autoConverge;
  if (input.xbzrle !== undefined) p.xbzrle = input.xbzrle;
  if (input.multifd !== undefined) {
    if (!Number.isInteger(input.multifd) || input.multifd < 0 || input.multifd > 16) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'multifd channels: a whole number from 0 (off) to 16.');
    }
    p.multifd = input.multifd;
  }
  if (input.stallTimeout !== undefined) p.stallTimeoutMs = parseDuration(input.stallTimeout, 'stall timeout');
  if (input.deadline !== undefined) p.deadlineMs = parseDuration(input.deadline, 'deadline');
  if (p.mode === 'cold' && p.postcopy === 'always') {
    throw new FerryError('FERRY_E_BAD_INPUT', 'Post-copy is a live migration technique: not with --mode cold.');
  }
  return p;
}

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

export type Escalation =
  | { kind: 'downtime-limit'; fromMs: number; toMs: number; reason: string }
  | { kind: 'postcopy'; reason: string }
  /** Post-copy stalled or paused: pause both sides, `migrate-recover` on the destination, resume. */
  | { kind: 'postcopy-recover'; reason: string }
  | { kind: 'abort'; code: 'FERRY_E_MIGRATION_TIMEOUT' | 'FERRY_E_MIGRATION_STALLED'; reason: string };

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
