import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../common/errors.ts';
import { median, ratio, spread } from './stats.ts';
import {
  fmtMs,
  fmtSpread,
  renderMarkdown,
  renderTables,
  scenarioRows,
  summarize,
  type BenchResult,
  type BenchRun,
} from './report.ts';
import { SCENARIOS, selectScenarios } from './scenarios.ts';
import { validateRuns } from './runner.ts';

function run(variant: string, round: number, totalMs: number | null, more: Partial<BenchRun> = {}): BenchRun {
  return {
    variant,
    round,
    from: 'h1',
    to: 'h2',
    migration: `m${round}`,
    state: 'completed',
    verified: true,
    bootIdKept: true,
    ok: true,
    totalMs,
    qemuTotalMs: totalMs === null ? null : totalMs / 2,
    downtimeMs: 10,
    guestDowntimeMs: 50,
    transferredBytes: 100 * 1024 * 1024,
    iterations: 3,
    escalations: 0,
    eta: null,
    phases: null,
    remaining: null,
    error: null,
    ...more,
  };
}

test('median: odd and even counts, unsorted input left alone, empty is null', () => {
  const xs = [3, 1, 2];
  assert.equal(median(xs), 2);
  assert.deepEqual(xs, [3, 1, 2]);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
  assert.equal(median([]), null);
});

test('spread skips runs without the figure; ratio refuses unknowns and a zero baseline', () => {
  assert.deepEqual(spread([30, null, 10, undefined, 20]), { n: 3, median: 20, min: 10, max: 30 });
  assert.deepEqual(spread([null]), { n: 0, median: null, min: null, max: null });
  assert.equal(ratio(50, 200), 0.25);
  assert.equal(ratio(null, 200), null);
  assert.equal(ratio(5, null), null);
  assert.equal(ratio(5, 0), null);
});

const scenario = {
  baseline: 'a',
  variants: [
    { name: 'a', label: 'A', body: { bandwidth: '128' } },
    { name: 'b', label: 'B', body: {} },
  ],
};

test('summarize: medians over ok runs only, ratios to the baseline, a failed run marks the variant', () => {
  const runs = [
    run('a', 1, 3000),
    run('b', 1, 1000),
    run('a', 2, 2000),
    // Lost memory: fast, but not a result.
    run('b', 2, 10, { verified: false, ok: false }),
    run('a', 3, 4000),
    run('b', 3, 3000),
  ];
  const [a, b] = summarize(scenario, runs);
  assert.equal(a!.baseline, true);
  assert.equal(a!.stats.totalMs.median, 3000);
  assert.equal(a!.allOk, true);
  assert.equal(a!.ratio.totalMs, 1);
  assert.equal(b!.runs, 3);
  assert.equal(b!.okRuns, 2);
  assert.equal(b!.allOk, false);
  assert.deepEqual(b!.stats.totalMs, { n: 2, median: 2000, min: 1000, max: 3000 });
  assert.equal(b!.ratio.totalMs, 2000 / 3000);
  assert.equal(b!.ratio.downtimeMs, 1);
});

test('a variant without runs is not ok and has no figures', () => {
  const [, b] = summarize(scenario, [run('a', 1, 1000)]);
  assert.equal(b!.allOk, false);
  assert.equal(b!.stats.totalMs.median, null);
  assert.equal(b!.ratio.totalMs, null);
});

test('formatting: ms below a second, seconds with two decimals, a range after the median', () => {
  assert.equal(fmtMs(7.4), '7 ms');
  assert.equal(fmtMs(1780), '1.78 s');
  assert.equal(fmtSpread('totalMs', { n: 3, median: 1780, min: 1700, max: 1910 }), '1.78 s (1.70–1.91)');
  assert.equal(fmtSpread('totalMs', { n: 3, median: 1130, min: 986, max: 1350 }), '1.13 s (986 ms–1.35)');
  assert.equal(fmtSpread('downtimeMs', { n: 1, median: 33, min: 33, max: 33 }), '33 ms');
  assert.equal(
    fmtSpread('transferredBytes', {
      n: 2,
      median: 160 * 1024 * 1024,
      min: 150 * 1024 * 1024,
      max: 170 * 1024 * 1024,
    }),
    '160.0 MiB (150.0–170.0)',
  );
  assert.equal(fmtSpread('totalMs', { n: 0, median: null, min: null, max: null }), '-');
});

function result(runs: BenchRun[]): BenchResult {
  return {
    version: 4,
    startedAt: '2026-01-02T03:04:05.000Z',
    finishedAt: '2026-01-02T03:09:05.000Z',
    runsPerVariant: 3,
    machine: { cpus: 2, cpuModel: 'test cpu', kernel: '6.1', node: 'v20', qemu: '10.0.2', accel: 'tcg', libvirt: null },
    scenarios: [
      {
        name: 'idle',
        title: 'idle guest',
        measures: 'm',
        memory: '256M',
        setup: [],
        baseline: 'a',
        lab: 'b123456',
        startedAt: '',
        finishedAt: '',
        variants: summarize(scenario, runs),
        runs,
        error: null,
      },
    ],
    ok: runs.every((r) => r.ok),
  };
}

test('table: a row per metric, a column per variant and one ratio column, aligned', () => {
  const r = result([run('a', 1, 2000), run('b', 1, 1000)]);
  const rows = scenarioRows(r.scenarios[0]!);
  assert.deepEqual(rows[0], ['METRIC (median, min–max)', 'A (baseline)', 'B', 'RATIO']);
  assert.deepEqual(rows[1], ['end to end', '2.00 s', '1.00 s', '×0.50']);
  assert.deepEqual(rows.at(-1), ['runs ok (completed + verified)', '1/1', '1/1', '']);
  const text = renderTables(r);
  const lines = text.split('\n');
  const header = lines.find((l) => l.startsWith('METRIC'))!;
  const total = lines.find((l) => l.startsWith('end to end'))!;
  assert.equal(total.indexOf('2.00 s'), header.indexOf('A (baseline)'));
  assert.equal(total.indexOf('×0.50'), header.indexOf('RATIO'));
  assert.match(text, /Every run completed/);
});

test('failed runs are listed and flagged, in the table and the Markdown', () => {
  const r = result([
    run('a', 1, 2000),
    run('b', 1, 900, {
      verified: false,
      ok: false,
      error: { code: 'FERRY_E_VERIFY_FAILED', message: 'pattern' },
    }),
  ]);
  const text = renderTables(r);
  assert.match(text, /0\/1 FAILED/);
  assert.match(
    text,
    /round 1 b h1→h2: completed, guest memory check FAILED \(FERRY_E_VERIFY_FAILED: pattern\)/,
  );
  const md = renderMarkdown(r);
  assert.match(md, /^### Results of 2026-01-02 03:04 UTC$/m);
  assert.match(md, /QEMU 10\.0\.2/);
  assert.match(md, /^\| METRIC \(median, min–max\) \| A \(baseline\) \| B \| RATIO \|$/m);
  assert.match(md, /^\|---\|---:\|---:\|---:\|$/m);
  assert.match(md, /^- round 1 b h1→h2: completed, guest memory check FAILED/m);
});

test('scenarios: names unique, baseline among the variants and first; selection and --runs checked', () => {
  assert.deepEqual(
    SCENARIOS.map((s) => s.name),
    ['baselines', 'idle', 'dirty', 'tls', 'eta', 'limited', 'large', 'features', 'storage'],
  );
  for (const s of SCENARIOS) {
    assert.equal(s.variants[0]!.name, s.baseline, s.name);
    assert.equal(new Set(s.variants.map((v) => v.name)).size, s.variants.length, s.name);
    // A variant that is not to finish needs the deadline that ends it, and is never what others are divided by.
    for (const v of s.variants.filter((x) => x.unfinished)) {
      assert.ok(v.body.deadline !== undefined && v.name !== s.baseline, `${s.name}/${v.name}`);
    }
  }
  assert.equal(selectScenarios().length, SCENARIOS.length);
  assert.equal(selectScenarios('all').length, SCENARIOS.length);
  assert.equal(selectScenarios('tls')[0]!.name, 'tls');
  assert.deepEqual(selectScenarios('baselines,eta').map((s) => s.name), ['baselines', 'eta']);
  const usage = (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_USAGE';
  assert.throws(() => selectScenarios('fast'), usage);
  assert.equal(validateRuns('3'), 3);
  for (const bad of ['0', '-1', '1.5', 'x', '51']) assert.throws(() => validateRuns(bad), usage, bad);
});

test('charts: ratio bars per non-baseline variant, the baseline as a line; nothing to draw, no chart', async () => {
  const { ratioBarsSvg } = await import('./charts.ts');
  const runs = [run('a', 1, 1000), run('b', 1, 500)];
  const variants = summarize(scenario, runs);
  const svg = ratioBarsSvg({ name: 'x', title: 't', baseline: 'a', variants })!;
  assert.match(svg, /^<svg /);
  assert.match(svg, /×0\.50/);
  assert.match(svg, /stroke-dasharray/);
  assert.equal(ratioBarsSvg({ name: 'x', title: 't', baseline: 'a', variants: variants.slice(0, 1) }), null);
});

test('charts: remaining memory over time, one line per sampled variant from its median run; nothing sampled, no chart', async () => {
  const { remainingSvg } = await import('./charts.ts');
  const MiB = 1024 * 1024;
  const line = (ms: number) => [
    { tMs: 0, bytes: 200 * MiB },
    { tMs: ms / 2, bytes: 40 * MiB },
    { tMs: ms, bytes: 0 },
  ];
  // Variant a: three runs, the median (2,000 ms) is the one drawn; b was not sampled (libvirt).
  const runs = [
    run('a', 1, 3000, { remaining: line(3000) }),
    run('a', 2, 2000, { remaining: line(2000) }),
    run('a', 3, 1000, { remaining: line(1000) }),
    run('b', 1, 500),
  ];
  const sc = { name: 'x', variants: summarize(scenario, runs), runs };
  const svg = remainingSvg(sc)!;
  assert.match(svg, /^<svg /);
  assert.equal((svg.match(/<polyline /g) ?? []).length, 1, 'only the sampled variant has a line');
  assert.match(svg, /2\.00 s end to end/, 'the median run');
  assert.match(svg, />200</, 'the axis reaches the most memory left');
  assert.equal(remainingSvg({ ...sc, runs: [run('b', 1, 500)] }), null);
});

test('thinned samples keep the first and the last, and at most the asked number', async () => {
  const { thinSamples } = await import('./report.ts');
  const many = Array.from({ length: 1001 }, (_, i) => ({ tMs: i, bytes: 1001 - i }));
  const thin = thinSamples(many, 200);
  assert.equal(thin.length, 200);
  assert.deepEqual([thin[0], thin.at(-1)], [many[0], many.at(-1)]);
  assert.equal(thinSamples(many.slice(0, 5)).length, 5);
});
