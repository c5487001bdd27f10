/**
 * The console's pure logic, apart from the DOM so that unit tests check it: figures as text, a progress bar
 * that never runs backwards, the ETA line, the phase steps, the VM filter, and the chart series made from
 * a migration's progress samples and its escalations.
 */
import type { MigrationJson, MigrationProgress } from '../../src/common/migration.ts';
import type { VmJson } from '../../src/common/api.ts';

export const PHASE_STEPS = ['begin', 'prepare', 'perform', 'finish', 'confirm'] as const;
export const FINAL_STATES: readonly string[] = ['completed', 'failed', 'cancelled'];

export const isFinal = (state: string): boolean => FINAL_STATES.includes(state);

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60_000);
  return `${m} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export const formatRate = (bytesPerSec: number | null | undefined): string =>
  bytesPerSec === null || bytesPerSec === undefined ? '—' : `${formatBytes(bytesPerSec)}/s`;

/**
 * Progress bars that never run backwards: QEMU's remaining memory grows when the guest re-dirties pages, so
 * its percent can fall; the bar shows the most that was ever reached for that migration.
 */
export class MonotoneProgress {
  private readonly best = new Map<string, number>();

  show(id: string, percent: number | null | undefined, state?: string): number {
    const p = Math.min(100, Math.max(0, percent ?? 0));
    const shown = Math.max(this.best.get(id) ?? 0, state === 'completed' ? 100 : p);
    this.best.set(id, shown);
    return shown;
  }
}

/** What would help a migration that does not converge: the policy knobs it does not use yet. */
export function convergenceHint(m: Pick<MigrationJson, 'policy'>): string {
  const p = m.policy;
  const tips: string[] = [];
  if (p.bandwidthBytesPerSec > 0) tips.push('lift the bandwidth limit');
  tips.push(`raise the downtime budget (now ${formatMs(p.maxDowntimeMs)})`);
  if (!p.autoConverge) tips.push('auto-converge');
  if (p.postcopy === 'never') tips.push('post-copy auto');
  if (!p.xbzrle) tips.push('xbzrle');
  return tips.join(', ');
}

/** The ETA line: Ferry's honest estimate, `estimating…` while unknown, `not converging` with what would help. */
export function etaText(m: Pick<MigrationJson, 'state' | 'policy' | 'totalMs'> & { progress: Pick<MigrationProgress, 'etaMs' | 'converges'> | null }): string {
  if (isFinal(m.state)) return m.state === 'completed' ? `done in ${formatMs(m.totalMs)}` : m.state;
  const p = m.progress;
  if (p && p.converges === false) return `not converging — would help: ${convergenceHint(m)}`;
  if (!p || p.etaMs === null) return 'estimating…';
  return `about ${formatMs(p.etaMs)} left`;
}

export type StepStatus = 'done' | 'current' | 'todo' | 'failed';

/** The phases as steps: those before the current one done, the current one highlighted (or failed). */
export function phaseSteps(m: Pick<MigrationJson, 'phase' | 'state'>): { phase: string; status: StepStatus }[] {
  const at = PHASE_STEPS.indexOf(m.phase);
  return PHASE_STEPS.map((phase, i) => {
    if (m.state === 'completed') return { phase, status: 'done' };
    if (i < at) return { phase, status: 'done' };
    if (i === at) return { phase, status: m.state === 'failed' || m.state === 'cancelled' ? 'failed' : 'current' };
    return { phase, status: 'todo' };
  });
}

/** The VMs whose name, host, state, address or boot id contain every word of the filter. */
export function filterVms(vms: readonly VmJson[], text: string): VmJson[] {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return [...vms];
  return vms.filter((v) => {
    const hay = [v.name, v.host, v.state, v.ready ? 'ready' : '', v.ip ?? '', v.bootId ?? ''].join(' ').toLowerCase();
    return words.every((w) => hay.includes(w));
  });
}

/** One point of a migration's charts, from one progress event. */
export interface Sample {
  /** Seconds since the epoch (uPlot's time axis). */
  t: number;
  remainingBytes: number;
  diskRemainingBytes: number | null;
  rateBytesPerSec: number;
  dirtyRateBytesPerSec: number;
}

export function sampleOf(p: MigrationProgress): Sample {
  return {
    t: Date.parse(p.sampledAt) / 1000,
    remainingBytes: p.remainingBytes,
    diskRemainingBytes: p.disk ? Math.max(0, p.disk.totalBytes - p.disk.transferredBytes) : null,
    rateBytesPerSec: p.rateBytesPerSec,
    dirtyRateBytesPerSec: p.dirtyRateBytesPerSec,
  };
}

/** Appends a sample unless it repeats the last one's time (a replayed event, or the same job read twice). */
export function addSample(samples: readonly Sample[], s: Sample): Sample[] {
  const last = samples.at(-1);
  if (last && s.t <= last.t) return [...samples];
  return [...samples, s];
}

/** The downtime limit QEMU had at time t: the policy's start, raised by each `downtime-limit` escalation before t. */
export function downtimeLimitAt(m: Pick<MigrationJson, 'policy' | 'escalations'>, t: number): number {
  let limit = m.policy.initialDowntimeMs;
  for (const e of m.escalations) {
    if (e.step.kind === 'downtime-limit' && Date.parse(e.at) / 1000 <= t) limit = e.step.toMs;
  }
  return limit;
}

/** Times (epoch seconds) and labels of the escalations, drawn as markers on the charts. */
export function escalationMarks(m: Pick<MigrationJson, 'escalations'>): { t: number; label: string }[] {
  return m.escalations.map((e) => ({
    t: Date.parse(e.at) / 1000,
    label: e.step.kind === 'downtime-limit' ? `limit ${e.step.fromMs}→${e.step.toMs} ms` : e.step.kind,
  }));
}

/** Each phase of the timeline with how long it took (until the next entry, or the end). */
export function phaseDurations(m: Pick<MigrationJson, 'timeline' | 'finishedAt'>): { phase: string; state: string; ms: number | null }[] {
  return m.timeline.map((e, i) => {
    const next = m.timeline[i + 1]?.at ?? m.finishedAt;
    return { phase: e.phase, state: e.state, ms: next ? Date.parse(next) - Date.parse(e.at) : null };
  });
}

/** Allocated share of a capacity, 0–100, for the capacity bars. */
export const share = (used: number, total: number): number => (total > 0 ? Math.min(100, Math.max(0, (100 * used) / total)) : 0);
