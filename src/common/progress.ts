/**
 * The progress model of a live migration: turns successive `query-migrate` (and mirror job) samples into
 * what a user asks — how far, how fast, how much is being re-dirtied, which pass, when will it end, and will
 * it end at all. The ETA is honest: a guest that dirties memory as fast as the link sends it never
 * converges, and then there is no ETA, only `converges: false`. Memory is counted as QEMU clears it from
 * `remaining` within a pass, not as bytes on the wire, so zero pages (a few bytes each) shorten the ETA as
 * they really shorten the transfer; and there is no ETA (`estimating…`) before a rate was measured.
 */
import Type, { type Static } from 'typebox';
import type { MigrationProgress } from './migration.ts';

/** The parts of QEMU's `query-migrate` answer the model reads (QEMU 7.2 and 10.x; all optional). */
export interface QueryMigrateInfo {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  'error-desc'?: string;
  'cpu-throttle-percentage'?: number;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    'dirty-pages-rate'?: number;
    'page-size'?: number;
    mbps?: number;
    'dirty-sync-count'?: number;
    'postcopy-requests'?: number;
    'pages-per-second'?: number;
  };
  'xbzrle-cache'?: { 'cache-miss-rate'?: number; overflow?: number };
  'socket-address'?: Array<{ type?: string; host?: string; port?: string }>;
}

/** Disk mirror progress summed over all disks (from `query-block-jobs`). */
export interface MirrorProgress {
  /** Bytes copied so far (sum of job offsets). */
  doneBytes: number;
  /** Bytes to copy (sum of job lengths; grows while the guest writes). */
  totalBytes: number;
  /** True when every mirror reached BLOCK_JOB_READY (source and target in sync). */
  ready: boolean;
}

/** One observation: what QEMU said at a moment (monotonic milliseconds). */
export interface MigrationSample {
  atMs: number;
  /** QEMU's status string, verbatim (an open set: `setup`, `active`, `postcopy-active`, `device`, ...). */
  status: string;
  transferredBytes: number;
  remainingBytes: number;
  /** Guest RAM as QEMU counts it (includes ROMs and video memory, so a bit more than the spec's memory). */
  memoryBytes: number;
  dirtyPagesRate: number;
  pageSize: number;
  mbps: number;
  /** dirty-sync-count: the pre-copy pass number. */
  iterations: number;
  totalTimeMs: number | null;
  setupTimeMs: number | null;
  downtimeMs: number | null;
  expectedDowntimeMs: number | null;
  errorDesc: string | null;
  mirror: MirrorProgress | null;
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

export function sampleFromQueryMigrate(info: QueryMigrateInfo, atMs: number, mirror: MirrorProgress | null = null): MigrationSample {
  const ram = info.ram ?? {};
  return {
    atMs,
    status: info.status ?? 'none',
    transferredBytes: num(ram.transferred) ?? 0,
    remainingBytes: num(ram.remaining) ?? 0,
    memoryBytes: num(ram.total) ?? 0,
    dirtyPagesRate: num(ram['dirty-pages-rate']) ?? 0,
    pageSize: num(ram['page-size']) ?? 4096,
    mbps: num(ram.mbps) ?? 0,
    iterations: num(ram['dirty-sync-count']) ?? 0,
    totalTimeMs: num(info['total-time']),
    setupTimeMs: num(info['setup-time']),
    downtimeMs: num(info.downtime),
    expectedDowntimeMs: num(info['expected-downtime']),
    errorDesc: typeof info['error-desc'] === 'string' ? info['error-desc'] : null,
    mirror,
  };
}

/** What the progress model predicts; part of an agent's migration view (agent-migration.ts), so a schema. */
export const Prediction = Type.Object({
  /** Predicted end-to-end time from the start of the migration, null when it does not converge. */
  totalMs: Type.Union([Type.Number(), Type.Null()]),
  /** Predicted pause of the guest at switch-over. */
  downtimeMs: Type.Union([Type.Number(), Type.Null()]),
  converges: Type.Boolean(),
});
export type Prediction = Static<typeof Prediction>;

export interface ProgressView {
  status: string;
  /** Share of guest RAM already on the destination (0–100); can fall back when the guest re-dirties. */
  ramPercent: number;
  /** Share of everything (disks being mirrored + RAM) already on the destination (0–100). */
  percent: number;
  movedBytes: number;
  totalBytes: number;
  remainingBytes: number;
  transferredBytes: number;
  memoryBytes: number;
  /** Smoothed send rate, bytes per second. */
  rateBytesPerSec: number;
  mbps: number;
  /** Bytes re-dirtied per second by the guest (QEMU measures it per pass; 0 during the first pass). */
  dirtyRateBytesPerSec: number;
  /** Pass number (QEMU's dirty-sync-count). */
  pass: number;
  etaMs: number | null;
  converges: boolean;
  prediction: Prediction;
  mirror: MirrorProgress | null;
}

export interface PredictInput {
  memoryBytes: number;
  /** Disk bytes still to mirror (0 with shared storage). */
  diskBytes: number;
  rateBytesPerSec: number;
  dirtyRateBytesPerSec: number;
  downtimeLimitMs: number;
  /** Already spent, to turn a time-left into an end-to-end total. */
  elapsedMs?: number;
  /** RAM still to send; defaults to all of it. */
  remainingBytes?: number;
  /**
   * Guest bytes that leave `remaining` per second, when measured: above `rateBytesPerSec` (wire bytes) when
   * zero pages, which QEMU sends as a few bytes, are being skipped over. Defaults to the wire rate.
   */
  clearRateBytesPerSec?: number;
}

/**
 * A prediction from rates. QEMU stops the guest once what is left fits into `downtimeLimit` at the current
 * rate, so the time left is: bring `remaining` down to rate × limit while the guest re-dirties at
 * `dirtyRate`, then send that last bit. Disks mirror before RAM starts (and the mirror's own re-dirtied
 * blocks are small next to RAM), so they simply add their transfer time.
 */
export function predict(p: PredictInput): Prediction {
  const rate = p.rateBytesPerSec;
  const elapsed = p.elapsedMs ?? 0;
  if (!(rate > 0)) return { totalMs: null, downtimeMs: null, converges: false };
  const remaining = p.remainingBytes ?? p.memoryBytes;
  const finalBytes = (rate * p.downtimeLimitMs) / 1000;
  const diskMs = (p.diskBytes / rate) * 1000;
  const downtimeMs = Math.min(p.downtimeLimitMs, (remaining / rate) * 1000);
  if (remaining <= finalBytes) {
    return { totalMs: Math.round(elapsed + diskMs + downtimeMs), downtimeMs: Math.round(downtimeMs), converges: true };
  }
  const clear = p.clearRateBytesPerSec !== undefined && p.clearRateBytesPerSec > rate ? p.clearRateBytesPerSec : rate;
  const net = clear - p.dirtyRateBytesPerSec;
  if (net <= 0) return { totalMs: null, downtimeMs: null, converges: false };
  const ms = ((remaining - finalBytes) / net) * 1000 + downtimeMs;
  return { totalMs: Math.round(elapsed + diskMs + ms), downtimeMs: Math.round(downtimeMs), converges: true };
}

const clampPct = (x: number): number => Math.max(0, Math.min(100, x));

/**
 * An ETA needs a rate measured over at least this long: one early sample 50 ms into the setup phase, with
 * a few KiB sent, once showed `ETA 970m42s` at 0 %. Until then the ETA is null (`estimating…`).
 */
export const MIN_RATE_WINDOW_MS = 250;

/** Folds samples into a view. One model per migration; feed it every sample in order. */
export class ProgressModel {
  private last: MigrationSample | null = null;
  private first: MigrationSample | null = null;
  private rate = 0;
  /** Smoothed guest bytes cleared from `remaining` per second within one pass (zero pages included). */
  private clearRate = 0;
  /** When the first sample with memory moving was taken: the start of the rate's window. */
  private movingSince: number | null = null;
  private current: ProgressView | null = null;

  /** `alpha` weighs the newest rate measurement in the exponential moving average. */
  constructor(
    private readonly opts: { downtimeLimitMs: number; alpha?: number } = { downtimeLimitMs: 300 },
  ) {}

  setDowntimeLimit(ms: number): void {
    this.opts.downtimeLimitMs = ms;
  }

  add(s: MigrationSample): ProgressView {
    this.first ??= s;
    const prev = this.last;
    if (prev !== null && s.atMs > prev.atMs) {
      const dRam = Math.max(0, s.transferredBytes - prev.transferredBytes);
      const dDisk = s.mirror !== null && prev.mirror !== null ? Math.max(0, s.mirror.doneBytes - prev.mirror.doneBytes) : 0;
      const instant = ((dRam + dDisk) * 1000) / (s.atMs - prev.atMs);
      const alpha = this.opts.alpha ?? 0.3;
      // Start from the first real measurement, not from 0, so early ETAs are not wildly long.
      this.rate = this.rate === 0 ? instant : alpha * instant + (1 - alpha) * this.rate;
      // Within one pass `remaining` only falls (QEMU adds re-dirtied pages at the next sync), and it falls
      // by whole pages even when a zero page cost a few bytes on the wire.
      const cleared = prev.remainingBytes - s.remainingBytes;
      if (s.iterations === prev.iterations && cleared > 0) {
        const c = (cleared * 1000) / (s.atMs - prev.atMs);
        this.clearRate = this.clearRate === 0 ? c : alpha * c + (1 - alpha) * this.clearRate;
      }
      if (dRam + dDisk > 0) this.movingSince ??= prev.atMs;
    } else if (this.rate === 0 && s.mbps > 0) {
      this.rate = (s.mbps * 1e6) / 8;
    }
    this.last = s;
    this.current = this.view(s);
    return this.current;
  }

  latest(): ProgressView | null {
    return this.current;
  }

  private view(s: MigrationSample): ProgressView {
    const dirtyRate = s.dirtyPagesRate * s.pageSize;
    const ramMoved = Math.max(0, s.memoryBytes - s.remainingBytes);
    const ramStarted = s.memoryBytes > 0;
    const ramPercent = s.status === 'completed' ? 100 : ramStarted ? clampPct((ramMoved / s.memoryBytes) * 100) : 0;
    const m = s.mirror;
    const diskTotal = m?.totalBytes ?? 0;
    const diskDone = m?.doneBytes ?? 0;
    const diskLeft = Math.max(0, diskTotal - diskDone);
    const ramTotal = ramStarted ? s.memoryBytes : 0;
    const totalBytes = diskTotal + ramTotal;
    const movedBytes = diskDone + (s.status === 'completed' ? ramTotal : ramMoved);
    const percent = s.status === 'completed' ? 100 : totalBytes > 0 ? clampPct((movedBytes / totalBytes) * 100) : 0;
    const remainingRam = s.status === 'completed' ? 0 : ramStarted ? s.remainingBytes : 0;
    const elapsed = s.totalTimeMs ?? (this.first === null ? 0 : s.atMs - this.first.atMs);
    let prediction: Prediction;
    let etaMs: number | null;
    if (s.status === 'completed') {
      prediction = { totalMs: s.totalTimeMs, downtimeMs: s.downtimeMs, converges: true };
      etaMs = 0;
    } else if (s.status === 'postcopy-active') {
      // In post-copy every page arrives once: no more re-dirtying, the end is remaining / rate.
      etaMs = this.rate > 0 ? Math.round((remainingRam / this.rate) * 1000) : null;
      prediction = { totalMs: etaMs === null ? null : elapsed + etaMs, downtimeMs: s.downtimeMs, converges: true };
    } else {
      prediction = predict({
        memoryBytes: ramTotal,
        remainingBytes: ramStarted ? remainingRam : undefined,
        diskBytes: diskLeft,
        rateBytesPerSec: this.rate,
        clearRateBytesPerSec: this.clearRate,
        dirtyRateBytesPerSec: dirtyRate,
        downtimeLimitMs: this.opts.downtimeLimitMs,
        elapsedMs: elapsed,
      });
      if (s.expectedDowntimeMs !== null && prediction.converges && prediction.downtimeMs !== null) {
        prediction.downtimeMs = Math.min(prediction.downtimeMs, s.expectedDowntimeMs);
      }
      const rateKnown = this.movingSince !== null && s.atMs - this.movingSince >= MIN_RATE_WINDOW_MS;
      etaMs = prediction.totalMs === null || !rateKnown ? null : Math.max(0, prediction.totalMs - elapsed);
      if (!rateKnown) prediction = { ...prediction, totalMs: null };
    }
    return {
      status: s.status,
      ramPercent: Math.round(ramPercent * 10) / 10,
      percent: Math.round(percent * 10) / 10,
      movedBytes,
      totalBytes,
      remainingBytes: remainingRam + diskLeft,
      transferredBytes: s.transferredBytes,
      memoryBytes: s.memoryBytes,
      rateBytesPerSec: Math.round(this.rate),
      mbps: s.mbps,
      dirtyRateBytesPerSec: dirtyRate,
      pass: s.iterations,
      etaMs,
      converges: prediction.converges,
      prediction,
      mirror: m,
    };
  }
}

/** The API's progress shape (src/common/migration.ts) from a view. */
export function toMigrationProgress(v: ProgressView, sampledAt: Date = new Date()): MigrationProgress {
  return {
    percent: v.percent,
    transferredBytes: v.movedBytes,
    totalBytes: v.totalBytes,
    remainingBytes: v.remainingBytes,
    rateBytesPerSec: v.rateBytesPerSec,
    dirtyRateBytesPerSec: v.dirtyRateBytesPerSec,
    pass: v.pass,
    etaMs: v.etaMs,
    converges: v.converges,
    disk: v.mirror === null ? null : { transferredBytes: v.mirror.doneBytes, totalBytes: v.mirror.totalBytes, ready: v.mirror.ready },
    sampledAt: sampledAt.toISOString(),
  };
}
