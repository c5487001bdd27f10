/**
 * Benchmark results: the shape of one run and of a whole invocation (the `ferry bench --json` document),
 * the per-variant summary (median, min, max, ratio to the baseline), and their two renderings: aligned
 * tables for the terminal and a Markdown section to paste into BENCHMARKS.md.
 */
import { formatTable } from '../client/table.ts';
import type { BenchScenario, MigrateRequest, SetupStep } from './scenarios.ts';
import { ratio, spread, type Spread } from './stats.ts';
import type { EtaReport } from './eta.ts';
import type { RemainingSample } from './samples.ts';

export { thinSamples, type RemainingSample } from './samples.ts';
import { DEFAULT_PROBE_INTERVAL_MS } from '../guest/probe.ts';

/** 2: raw-QMP variants, `aroundQemuMs`, the ETA checks. 3: the libvirt baseline, `machine.libvirt`. */
export const BENCH_RESULT_VERSION = 4;

export const METRICS = [
  'totalMs',
  'qemuTotalMs',
  'aroundQemuMs',
  'downtimeMs',
  'guestDowntimeMs',
  'transferredBytes',
  'etaErrorAt10',
  'etaErrorAt25',
  'etaErrorAt50',
  'phaseBeginMs',
  'phasePrepareMs',
  'phasePerformMs',
  'phaseFinishMs',
  'phaseConfirmMs',
] as const;
export type Metric = (typeof METRICS)[number];

const METRIC_LABELS: Record<Metric, string> = {
  totalMs: 'end to end',
  qemuTotalMs: 'QEMU total',
  aroundQemuMs: 'around QEMU',
  downtimeMs: 'downtime (QEMU)',
  guestDowntimeMs: `guest gap (probe every ${DEFAULT_PROBE_INTERVAL_MS} ms)`,
  transferredBytes: 'transferred',
  etaErrorAt10: '|ETA error| at 10 %',
  etaErrorAt25: '|ETA error| at 25 %',
  etaErrorAt50: '|ETA error| at 50 %',
  phaseBeginMs: 'Ferry phase: begin',
  phasePrepareMs: 'Ferry phase: prepare',
  phasePerformMs: 'Ferry phase: perform',
  phaseFinishMs: 'Ferry phase: finish',
  phaseConfirmMs: 'Ferry phase: confirm',
};

const PHASE_OF: Partial<Record<Metric, string>> = {
  phaseBeginMs: 'begin',
  phasePrepareMs: 'prepare',
  phasePerformMs: 'perform',
  phaseFinishMs: 'finish',
  phaseConfirmMs: 'confirm',
};

/** A run's value of a metric: the record's figures, the time around QEMU, and the ETA's |error| in %. */
export function metricOf(r: BenchRun, m: Metric): number | null {
  switch (m) {
    case 'aroundQemuMs':
      return r.totalMs === null || r.qemuTotalMs === null ? null : r.totalMs - r.qemuTotalMs;
    case 'etaErrorAt10':
    case 'etaErrorAt25':
    case 'etaErrorAt50': {
      const p = r.eta?.[m === 'etaErrorAt10' ? 'at10' : m === 'etaErrorAt25' ? 'at25' : 'at50'];
      return p?.errorPct == null ? null : Math.abs(p.errorPct);
    }
    case 'phaseBeginMs':
    case 'phasePrepareMs':
    case 'phasePerformMs':
    case 'phaseFinishMs':
    case 'phaseConfirmMs':
      return r.phases?.[PHASE_OF[m]!] ?? null;
    default:
      return r[m];
  }
}

/** One migration of a benchmark, and what the guest said after it. */
export interface BenchRun {
  variant: string;
  /** Round, from 1: round r runs every variant once. */
  round: number;
  from: string;
  to: string;
  migration: string | null;
  /** The migration's final state (`completed`, `failed`, …), or `error` when it could not be started. */
  state: string;
  /** `dirty verify` passed on the destination: no guest memory was lost. */
  verified: boolean;
  bootIdKept: boolean;
  /** completed, verified and the same boot: the only runs whose figures count. */
  ok: boolean;
  totalMs: number | null;
  qemuTotalMs: number | null;
  downtimeMs: number | null;
  guestDowntimeMs: number | null;
  transferredBytes: number | null;
  iterations: number | null;
  /** Policy steps the orchestrator took (downtime limit raised, throttling…). */
  escalations: number;
  /** Ferry's ETA at 10/25/50 % against the real end of the transfer; null for raw-QMP runs. */
  eta: EtaReport | null;
  /** Ferry's time per phase (begin, prepare, perform, finish, confirm), from the job's timeline. */
  phases: Record<string, number> | null;
  /**
   * Memory still to send over time, since the migration was asked for: Ferry's progress as its API answers
   * it, raw QMP's `query-migrate`; null where it is not sampled (libvirt).
   */
  remaining: RemainingSample[] | null;
  error: { code: string; message: string } | null;
}


export interface VariantSummary {
  name: string;
  label: string;
  body: MigrateRequest;
  baseline: boolean;
  runs: number;
  okRuns: number;
  /** Every run completed and verified. */
  allOk: boolean;
  /** Over the ok runs only: a run that lost memory is a failed run, not a fast one. */
  stats: Record<Metric, Spread>;
  /** Median of this variant / median of the baseline (1 for the baseline itself). */
  ratio: Record<Metric, number | null>;
}

export interface ScenarioResult {
  name: string;
  title: string;
  measures: string;
  memory: string;
  setup: SetupStep[];
  baseline: string;
  lab: string;
  startedAt: string;
  finishedAt: string;
  variants: VariantSummary[];
  runs: BenchRun[];
  /** Set when the scenario could not run to its end (lab, VM creation…); its runs so far are kept. */
  error: { code: string; message: string } | null;
}

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  kernel: string;
  node: string;
  /** As the lab's agents report it (`query-version`). */
  qemu: string | null;
  accel: string | null;
  /** libvirtd's version when the run had the libvirt baseline (`--with libvirt`), else null. */
  libvirt: string | null;
}

export interface BenchResult {
  version: typeof BENCH_RESULT_VERSION;
  startedAt: string;
  finishedAt: string;
  runsPerVariant: number;
  machine: MachineInfo;
  scenarios: ScenarioResult[];
  /** Every scenario ran to its end and every run was ok. */
  ok: boolean;
}

/** Per-variant figures of a scenario's runs, baseline ratios included. */
export function summarize(
  scenario: Pick<BenchScenario, 'baseline' | 'variants'>,
  runs: readonly BenchRun[],
): VariantSummary[] {
  const statsOf = (name: string): Record<Metric, Spread> => {
    const ok = runs.filter((r) => r.variant === name && r.ok);
    return Object.fromEntries(METRICS.map((m) => [m, spread(ok.map((r) => metricOf(r, m)))])) as Record<Metric, Spread>;
  };
  const base = statsOf(scenario.baseline);
  return scenario.variants.map((v) => {
    const mine = runs.filter((r) => r.variant === v.name);
    const stats = statsOf(v.name);
    const okRuns = mine.filter((r) => r.ok).length;
    return {
      name: v.name,
      label: v.label,
      body: v.body,
      baseline: v.name === scenario.baseline,
      runs: mine.length,
      okRuns,
      allOk: mine.length > 0 && okRuns === mine.length,
      stats,
      ratio: Object.fromEntries(METRICS.map((m) => [m, ratio(stats[m].median, base[m].median)])) as Record<
        Metric,
        number | null
      >,
    };
  });
}

// ---------------------------------------------------------------------------------------------------
// rendering

/** Milliseconds with the precision a benchmark reader wants: 7 ms, 312 ms, 1.78 s. */
export function fmtMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function fmtBytes(n: number): string {
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

function fmtValue(m: Metric, v: number): string {
  if (m.startsWith('etaError')) return `${Math.round(v)} %`;
  return m === 'transferredBytes' ? fmtBytes(v) : fmtMs(v);
}

/** `1.78 s (1.70–1.91)`: median, then the range; a lone value without range. */
export function fmtSpread(m: Metric, s: Spread): string {
  if (s.median === null) return '-';
  if (s.n === 1 || s.min === s.max) return fmtValue(m, s.median);
  const med = fmtValue(m, s.median);
  const unit = (t: string): string => t.slice(t.lastIndexOf(' '));
  // Units are dropped only where the median's unit says it: `1.13 s (986 ms–1.35)`.
  const bare = (t: string): string => (unit(t) === unit(med) ? t.slice(0, t.lastIndexOf(' ')) : t);
  return `${med} (${bare(fmtValue(m, s.min!))}–${bare(fmtValue(m, s.max!))})`;
}

export function fmtRatio(r: number | null): string {
  return r === null ? '-' : `×${r.toFixed(2)}`;
}

/** Rows (header first) of one scenario: one line per metric, a column per variant, a ratio per non-baseline. */
export function scenarioRows(s: Pick<ScenarioResult, 'variants'>): string[][] {
  const others = s.variants.filter((v) => !v.baseline);
  const header = [
    'METRIC (median, min–max)',
    ...s.variants.map((v) => (v.baseline ? `${v.label} (baseline)` : v.label)),
    ...others.map((v) => (others.length === 1 ? 'RATIO' : `RATIO ${v.label}`)),
  ];
  // ETA and phase rows only where some variant has them (raw QMP has neither).
  const optional = (m: Metric): boolean => m.startsWith('etaError') || m.startsWith('phase');
  const shown = METRICS.filter((m) => !optional(m) || s.variants.some((v) => v.stats[m].n > 0));
  const rows = shown.map((m) => [
    METRIC_LABELS[m],
    ...s.variants.map((v) => fmtSpread(m, v.stats[m])),
    ...others.map((v) => fmtRatio(v.ratio[m])),
  ]);
  const okRow = [
    'runs ok (completed + verified)',
    ...s.variants.map((v) => `${v.okRuns}/${v.runs}${v.allOk ? '' : ' FAILED'}`),
    ...others.map(() => ''),
  ];
  return [header, ...rows, okRow];
}

function failures(s: ScenarioResult): string[] {
  const out = s.runs
    .filter((r) => !r.ok)
    .map(
      (r) =>
        `  round ${r.round} ${r.variant} ${r.from}→${r.to}: ${r.state}` +
        (r.state === 'completed'
          ? (r.verified ? '' : ', guest memory check FAILED') + (r.bootIdKept ? '' : ', boot id changed')
          : '') +
        (r.error ? ` (${r.error.code}: ${r.error.message})` : ''),
    );
  if (s.error) out.unshift(`  scenario stopped: ${s.error.code}: ${s.error.message}`);
  return out;
}

/** The terminal rendering: one aligned table per scenario, failed runs listed under it. */
export function renderTables(result: BenchResult): string {
  const out: string[] = [];
  for (const s of result.scenarios) {
    const [header, ...rows] = scenarioRows(s);
    out.push(
      `${s.name}: ${s.title} (${s.memory} guest, ${result.runsPerVariant} runs per variant, interleaved)`,
    );
    out.push(formatTable(header!, rows));
    const f = failures(s);
    if (f.length > 0) out.push('failed:', ...f);
    out.push('');
  }
  out.push(
    result.ok
      ? 'Every run completed and the guest verified its memory after each.'
      : 'Some runs failed: their figures are left out of the medians (see above).',
  );
  return out.join('\n');
}

const mdCell = (t: string): string => t.replace(/\|/g, '\\|');

/** A Markdown section (### heading, machine line, one table per scenario) to paste into BENCHMARKS.md. */
export function renderMarkdown(result: BenchResult): string {
  const m = result.machine;
  const out: string[] = [
    `### Results of ${result.startedAt.slice(0, 16).replace('T', ' ')} UTC`,
    '',
    `${m.cpus} cores (${m.cpuModel}), ${m.accel ?? '?'} accelerator, QEMU ${m.qemu ?? '?'}, ` +
      (m.libvirt === null ? '' : `libvirt ${m.libvirt} (driving that QEMU), `) +
      `Node ${m.node}, kernel ${m.kernel}. ` +
      `${result.runsPerVariant} runs per variant, variants interleaved run by run. Medians, with min–max in parentheses, ` +
      'over the runs that completed and passed the guest memory check; ratio = variant median / baseline median.',
    '',
  ];
  for (const s of result.scenarios) {
    out.push(`**${s.name}**: ${s.title}`, '');
    const rows = scenarioRows(s);
    out.push(`| ${rows[0]!.map(mdCell).join(' | ')} |`);
    out.push(`|${rows[0]!.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    for (const r of rows.slice(1)) out.push(`| ${r.map(mdCell).join(' | ')} |`);
    const f = failures(s);
    if (f.length > 0) out.push('', 'Failed runs:', '', ...f.map((l) => `- ${l.trim()}`));
    out.push('');
  }
  return out.join('\n');
}
