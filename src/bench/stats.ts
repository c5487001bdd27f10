/**
 * The statistics benchmarks report: median, min and max over the runs that succeeded, and the ratio of a
 * variant's median to the baseline's. Medians, not means: on a shared 2-core machine one disturbed run
 * must not move the headline number.
 */

export interface Spread {
  /** Runs that had a value. */
  n: number;
  median: number | null;
  min: number | null;
  max: number | null;
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Median, min and max of the finite numbers among `values` (nulls are runs without that figure). */
export function spread(values: readonly (number | null | undefined)[]): Spread {
  const xs = values.filter((v): v is number => typeof v === 'number' && Number.isFinite(v));
  if (xs.length === 0) return { n: 0, median: null, min: null, max: null };
  return { n: xs.length, median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

/** variant / baseline; null when either is unknown or the baseline is 0 (no meaningful ratio). */
export function ratio(variant: number | null, baseline: number | null): number | null {
  if (variant === null || baseline === null || baseline === 0) return null;
  return variant / baseline;
}
