/**
 * The prediction before one migration (`ferry vm migrate --dry-run`): from the VM's size, the dirty rate
 * measured now and the bandwidth between the two hosts, its total time, downtime, whether pre-copy
 * converges within the downtime budget, and the strategy to use. Pure, and the fleet planner's model
 * (fluid.ts `isolatedMs`, planner.ts's shares), applied to one move alone on its link: one model, so a
 * drain plan and a single prediction never disagree.
 *
 * The ladder, first rung that fits:
 * - `precopy`: the guest dirties less than CONVERGE_SHARE of the bandwidth. Downtime: Ferry's starting
 *   limit while it dirties under RAISE_SHARE, else the budget (the orchestrator raises the limit toward it).
 * - `auto-converge`: QEMU's CPU throttle would have to bring the dirty rate down to RAISE_SHARE of the
 *   bandwidth, and that takes a throttle of at most MAX_GENTLE_THROTTLE (the guest keeps half its CPU).
 * - `postcopy`: the guest runs on the destination at once and pulls what is missing; it ends within the
 *   request's deadline.
 * - `cannot-converge`: none of these: lower the dirty rate or raise the bandwidth.
 * A cold request is predicted as a cold move: the whole transfer is downtime.
 */
import { formatBytes } from '../../common/units.ts';
import type { MigrationPrediction } from '../../common/migration.ts';
import { isolatedMs } from './fluid.ts';
import { CONVERGE_SHARE, RAISE_SHARE } from './planner.ts';

/** Auto-converge is recommended only when it throttles the guest's CPU by at most this share. */
export const MAX_GENTLE_THROTTLE = 0.5;

export interface Bandwidth {
  bytesPerSec: number;
  source: MigrationPrediction['bandwidthSource'];
  detail: string;
}

export interface PredictionInput {
  mode: 'live' | 'cold';
  /** Guest memory plus the local disks a move copies. */
  bytes: number;
  /** Measured now; null when unknown (predicted as idle, and said so). */
  dirtyBytesPerSec: number | null;
  bandwidth: Bandwidth;
  /** The request's --bandwidth cap, bytes/s; 0 = none. */
  capBytesPerSec: number;
  maxDowntimeMs: number;
  /** The downtime limit Ferry starts a pre-copy with (policy.initialDowntimeMs). */
  initialDowntimeMs: number;
  deadlineMs: number;
  at?: Date;
}

const rate = (b: number): string => `${formatBytes(b)}/s`;
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const round = (ms: number): number | null => (Number.isFinite(ms) ? Math.round(ms) : null);

export function predictMigration(p: PredictionInput): MigrationPrediction {
  const bw = p.capBytesPerSec > 0 ? Math.min(p.capBytesPerSec, p.bandwidth.bytesPerSec) : p.bandwidth.bytesPerSec;
  const d = p.dirtyBytesPerSec ?? 0;
  const dirty = p.dirtyBytesPerSec === null ? 'dirty rate unknown (predicted as idle)' : `the guest dirties ${rate(d)}`;
  const link = `${rate(bw)}${p.capBytesPerSec > 0 && p.capBytesPerSec < p.bandwidth.bytesPerSec ? ' (--bandwidth)' : ''}`;
  const base = {
    at: (p.at ?? new Date()).toISOString(),
    bytes: p.bytes,
    dirtyRateBytesPerSec: p.dirtyBytesPerSec,
    bandwidthBytesPerSec: bw,
    bandwidthSource: p.bandwidth.source,
    bandwidthDetail: p.bandwidth.detail,
    maxDowntimeMs: p.maxDowntimeMs,
  };
  const move = { bytes: p.bytes, dirtyBytesPerSec: d };
  const converges = bw > 0 && d < bw * CONVERGE_SHARE;

  if (p.mode === 'cold') {
    const ms = isolatedMs({ ...move, strategy: 'cold' }, bw);
    return { ...base, strategy: 'cold', totalMs: round(ms), downtimeMs: round(ms), converges: null, reason: `cold: the guest is paused while ${formatBytes(p.bytes)} cross at ${link}` };
  }
  if (converges) {
    const raise = d > bw * RAISE_SHARE;
    const ms = isolatedMs({ ...move, strategy: 'live' }, bw);
    return {
      ...base,
      strategy: 'precopy',
      converges,
      totalMs: round(ms),
      downtimeMs: raise ? p.maxDowntimeMs : Math.min(p.initialDowntimeMs, p.maxDowntimeMs),
      reason: `pre-copy converges: ${dirty}, under ${Math.round(CONVERGE_SHARE * 100)} % of ${link}${raise ? `; above ${Math.round(RAISE_SHARE * 100)} %, so the downtime limit will rise toward the ${p.maxDowntimeMs} ms budget` : ''}`,
    };
  }
  // Throttled until the guest dirties RAISE_SHARE of the bandwidth: the throttle that takes.
  const throttled = bw * RAISE_SHARE;
  const throttle = d > 0 ? 1 - throttled / d : 0;
  if (bw > 0 && throttle <= MAX_GENTLE_THROTTLE) {
    const ms = isolatedMs({ ...move, dirtyBytesPerSec: throttled, strategy: 'live' }, bw);
    return {
      ...base,
      strategy: 'auto-converge',
      converges,
      totalMs: round(ms),
      downtimeMs: p.maxDowntimeMs,
      reason: `${dirty}, too close to ${link} for pre-copy alone; auto-converge (--auto-converge) throttling its CPU by about ${Math.round(throttle * 100)} % brings it to ${rate(throttled)}`,
    };
  }
  const post = bw > 0 ? isolatedMs({ ...move, strategy: 'postcopy' }, bw) : Infinity;
  if (post <= p.deadlineMs) {
    return {
      ...base,
      strategy: 'postcopy',
      converges,
      totalMs: round(post),
      downtimeMs: Math.min(p.initialDowntimeMs, p.maxDowntimeMs),
      reason: `${dirty}, faster than pre-copy can send at ${link} even with auto-converge (a throttle of ${Math.round(throttle * 100)} %); post-copy (--postcopy always) runs it on the destination at once`,
    };
  }
  return {
    ...base,
    strategy: 'cannot-converge',
    converges,
    totalMs: null,
    downtimeMs: null,
    reason: `${dirty} at ${link}: no strategy ends within the ${secs(p.deadlineMs)} deadline (post-copy would need ${Number.isFinite(post) ? secs(post) : 'forever'}); lower the dirty rate or raise the bandwidth`,
  };
}

/** A completed migration between the two hosts, as its record has it. */
export interface PastTransfer {
  id: string;
  transferredBytes: number;
  /** QEMU's own transfer time. */
  qemuTotalMs: number;
}

/** How many of the newest completed migrations between the pair the measured bandwidth is the median of. */
export const HISTORY = 5;

/**
 * The bandwidth between two hosts: the median rate of the newest completed uncapped migrations between
 * them (bytes QEMU sent over its own transfer time), else the configured link capacity, else the fleet
 * planner's default link. `history` is newest first.
 */
export function linkBandwidth(history: readonly PastTransfer[], configuredBytesPerSec: number, defaultBytesPerSec: number): Bandwidth {
  const usable = history.filter((h) => h.qemuTotalMs > 0 && h.transferredBytes > 0).slice(0, HISTORY);
  if (usable.length > 0) {
    const rates = usable.map((h) => (h.transferredBytes / h.qemuTotalMs) * 1000).sort((a, b) => a - b);
    const mid = rates.length >> 1;
    const median = rates.length % 2 === 1 ? rates[mid]! : (rates[mid - 1]! + rates[mid]!) / 2;
    const n = usable.length;
    return { bytesPerSec: median, source: 'measured', detail: `median of the ${n === 1 ? 'last completed migration' : `last ${n} completed migrations`} between the two hosts (${usable.map((h) => h.id).join(', ')})` };
  }
  if (configuredBytesPerSec > 0) {
    return { bytesPerSec: configuredBytesPerSec, source: 'configured', detail: `no completed migration between the two hosts yet: the server's link capacity (--link-capacity ${rate(configuredBytesPerSec)})` };
  }
  return { bytesPerSec: defaultBytesPerSec, source: 'default', detail: `no completed migration between the two hosts yet and the link is not limited: the planner's default link of ${rate(defaultBytesPerSec)}` };
}
