/**
 * SVG charts of a benchmark's results, written next to its Markdown: per scenario, horizontal bars of each
 * variant's median ratio to the baseline for end to end, time around QEMU and the guest-seen gap, with the
 * baseline's 1.0 drawn as a line; and the memory still to send over time, one line per variant (its run of
 * median end-to-end time). Pure functions of the result; plain SVG text, no library.
 */
import type { BenchRun, Metric, ScenarioResult } from './report.ts';

const CHART_METRICS: { metric: Metric; label: string; color: string }[] = [
  { metric: 'totalMs', label: 'end to end', color: '#3b6ea5' },
  { metric: 'aroundQemuMs', label: 'around QEMU', color: '#d08c2b' },
  { metric: 'guestDowntimeMs', label: 'guest gap', color: '#5b9a57' },
];

const esc = (t: string): string => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Ratio bars of one scenario; null when no variant has a ratio to draw. */
export function ratioBarsSvg(s: Pick<ScenarioResult, 'name' | 'title' | 'variants' | 'baseline'>): string | null {
  const base = s.variants.find((v) => v.baseline);
  const others = s.variants.filter((v) => !v.baseline);
  const values = others.flatMap((v) => CHART_METRICS.map((c) => v.ratio[c.metric])).filter((r): r is number => r !== null);
  if (values.length === 0) return null;
  const max = Math.max(1, ...values) * 1.1;
  const labelW = 200;
  const plotW = 460;
  const barH = 12;
  const groupH = CHART_METRICS.length * barH + 14;
  const top = 40;
  const height = top + others.length * groupH + 40;
  const x = (r: number): number => labelW + (r / max) * plotW;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelW + plotW + 60}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${esc(`${s.name}: median ratio to ${base?.label ?? s.baseline}`)}</text>`,
    `<text x="4" y="30" fill="#555">${esc('below 1: less time than the baseline (better)')}</text>`,
  ];
  others.forEach((v, i) => {
    const y0 = top + i * groupH;
    out.push(`<text x="4" y="${y0 + groupH / 2}">${esc(v.label)}</text>`);
    CHART_METRICS.forEach((c, j) => {
      const r = v.ratio[c.metric];
      const y = y0 + j * barH;
      if (r === null) return;
      out.push(
        `<rect x="${labelW}" y="${y}" width="${(x(r) - labelW).toFixed(1)}" height="${barH - 2}" fill="${c.color}"/>`,
        `<text x="${(x(r) + 4).toFixed(1)}" y="${y + barH - 3}">×${r.toFixed(2)}</text>`,
      );
    });
  });
  const y1 = top + others.length * groupH;
  out.push(`<line x1="${x(1).toFixed(1)}" y1="${top - 4}" x2="${x(1).toFixed(1)}" y2="${y1}" stroke="#000" stroke-dasharray="3,3"/>`);
  CHART_METRICS.forEach((c, j) => {
    const lx = labelW + j * 130;
    out.push(
      `<rect x="${lx}" y="${y1 + 14}" width="10" height="10" fill="${c.color}"/>`,
      `<text x="${lx + 14}" y="${y1 + 23}">${esc(c.label)}</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

const LINE_COLORS = ['#3b6ea5', '#d08c2b', '#5b9a57', '#a5473b', '#7a5aa5', '#3ba59a', '#555555'];

/** The ok run of median end-to-end time among those with samples: the one a variant's line shows. */
function medianRun(runs: readonly BenchRun[]): BenchRun | null {
  const sampled = runs.filter((r) => r.ok && r.remaining !== null && r.remaining.length > 1 && r.totalMs !== null);
  if (sampled.length === 0) return null;
  const sorted = [...sampled].sort((a, b) => a.totalMs! - b.totalMs!);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

/** Remaining memory (MiB) over time (s) per variant; null when no variant was sampled. */
export function remainingSvg(s: Pick<ScenarioResult, 'name' | 'variants' | 'runs'>): string | null {
  const lines = s.variants
    .map((v) => ({ label: v.label, run: medianRun(s.runs.filter((r) => r.variant === v.name)) }))
    .filter((l): l is { label: string; run: BenchRun } => l.run !== null);
  if (lines.length === 0) return null;
  const MiB = 1024 * 1024;
  const maxT = Math.max(1, ...lines.flatMap((l) => l.run.remaining!.map((p) => p.tMs)));
  const maxB = Math.max(MiB, ...lines.flatMap((l) => l.run.remaining!.map((p) => p.bytes)));
  const left = 60;
  const top = 40;
  const plotW = 560;
  const plotH = 240;
  const legendTop = top + plotH + 36;
  const height = legendTop + lines.length * 16 + 10;
  const x = (t: number): number => left + (t / maxT) * plotW;
  const y = (b: number): number => top + plotH - (b / maxB) * plotH;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${left + plotW + 40}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${esc(`${s.name}: memory still to send`)}</text>`,
    `<text x="4" y="30" fill="#555">${esc('each variant’s run of median end-to-end time, from the moment it was asked for')}</text>`,
    `<line x1="${left}" y1="${top + plotH}" x2="${left + plotW}" y2="${top + plotH}" stroke="#000"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotH}" stroke="#000"/>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const b = (maxB * i) / 4;
    const t = (maxT * i) / 4;
    out.push(
      `<text x="${left - 6}" y="${(y(b) + 4).toFixed(1)}" text-anchor="end">${(b / MiB).toFixed(0)}</text>`,
      `<text x="${x(t).toFixed(1)}" y="${top + plotH + 14}" text-anchor="middle">${(t / 1000).toFixed(1)}</text>`,
    );
  }
  out.push(
    `<text x="${left - 6}" y="${top - 6}" text-anchor="end" fill="#555">MiB</text>`,
    `<text x="${left + plotW}" y="${top + plotH + 28}" text-anchor="end" fill="#555">seconds</text>`,
  );
  lines.forEach((l, i) => {
    const color = LINE_COLORS[i % LINE_COLORS.length]!;
    const pts = l.run.remaining!.map((p) => `${x(p.tMs).toFixed(1)},${y(p.bytes).toFixed(1)}`).join(' ');
    const ly = legendTop + i * 16;
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts}"/>`,
      `<rect x="${left}" y="${ly - 9}" width="10" height="10" fill="${color}"/>`,
      `<text x="${left + 14}" y="${ly}">${esc(`${l.label} (${(l.run.totalMs! / 1000).toFixed(2)} s end to end)`)}</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
