/**
 * The memory still to send over a migration's time, as the bench samples it (Ferry's progress from its API,
 * raw QMP's `query-migrate`) for the remaining-memory chart; thinned so that a run's JSON stays small.
 */

export interface RemainingSample {
  /** Milliseconds since the migration was asked for. */
  tMs: number;
  bytes: number;
}

/** At most `max` samples, evenly picked, the first and the last kept: enough for a chart. */
export function thinSamples(samples: readonly RemainingSample[], max = 200): RemainingSample[] {
  if (samples.length <= max) return [...samples];
  const step = (samples.length - 1) / (max - 1);
  return Array.from({ length: max }, (_, i) => samples[Math.round(i * step)]!);
}
