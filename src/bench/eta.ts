/**
 * How well Ferry's ETA held in a benchmark run: the ETA the API showed when progress first reached 10, 25
 * and 50 %, against the time the transfer really took from that moment. Pure functions of the samples the
 * runner read (its own clock, one read every ETA_POLL_MS: that is the resolution of the "real" end).
 */

export const ETA_CHECKPOINTS = [10, 25, 50] as const;
export type EtaCheckpoint = (typeof ETA_CHECKPOINTS)[number];

/** One read of a running migration: when (the runner's monotonic ms), how far, and the ETA shown. */
export interface EtaSample {
  atMs: number;
  percent: number;
  /** null while Ferry says `estimating…`. */
  etaMs: number | null;
}

export interface EtaPoint {
  /** The progress actually read (the first read at or past the checkpoint). */
  percent: number;
  etaMs: number | null;
  /** From that read to the end of the transfer. */
  actualMs: number;
  /** (ETA − actual) / actual × 100: positive when the ETA was too long; null when no ETA was shown. */
  errorPct: number | null;
}

export type EtaReport = Record<`at${EtaCheckpoint}`, EtaPoint | null>;

export function etaErrors(samples: readonly EtaSample[], transferEndMs: number): EtaReport {
  const point = (pct: number): EtaPoint | null => {
    const s = samples.find((x) => x.percent >= pct && x.atMs <= transferEndMs);
    if (s === undefined) return null;
    const actualMs = Math.max(0, transferEndMs - s.atMs);
    const errorPct =
      s.etaMs === null || actualMs === 0 ? null : Math.round(((s.etaMs - actualMs) / actualMs) * 1000) / 10;
    return { percent: s.percent, etaMs: s.etaMs, actualMs: Math.round(actualMs), errorPct };
  };
  return { at10: point(10), at25: point(25), at50: point(50) };
}
