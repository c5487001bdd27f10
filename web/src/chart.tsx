/**
 * A time chart of one migration (uPlot): one or more series over the same time axis, and the escalations
 * as vertical markers. `data-points` on the figure says how many points it draws (the browser tests read it).
 */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';

export interface ChartSeries {
  label: string;
  values: (number | null)[];
  format: (v: number) => string;
}

export interface ChartProps {
  title: string;
  times: number[];
  series: ChartSeries[];
  marks: { t: number; label: string }[];
}

const COLORS = ['#2f7de1', '#d9822b', '#3aa655', '#c23b8f'];

function markers(marks: ChartProps['marks']): uPlot.Plugin {
  return {
    hooks: {
      draw: (u) => {
        const { ctx } = u;
        ctx.save();
        ctx.strokeStyle = '#d33';
        ctx.fillStyle = '#d33';
        ctx.setLineDash([4, 3]);
        ctx.font = `${11 * devicePixelRatio}px sans-serif`;
        for (const m of marks) {
          const x = u.valToPos(m.t, 'x', true);
          if (!Number.isFinite(x)) continue;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.fillText(m.label, x + 3, u.bbox.top + 12 * devicePixelRatio);
        }
        ctx.restore();
      },
    },
  };
}

export function Chart({ title, times, series, marks }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const data = [times, ...series.map((s) => s.values)] as uPlot.AlignedData;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const width = Math.max(260, el.clientWidth);
    plot.current?.destroy();
    plot.current = new uPlot(
      {
        width,
        height: 180,
        plugins: [markers(marks)],
        legend: { show: true },
        scales: { x: { time: true } },
        axes: [{ stroke: 'currentColor', grid: { stroke: 'rgba(128,128,128,0.2)' } }, { stroke: 'currentColor', size: 70, values: (_u, vals) => vals.map((v) => series[0]!.format(v)), grid: { stroke: 'rgba(128,128,128,0.2)' } }],
        series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 5 }, value: (_u: uPlot, v: number | null) => (v === null ? '—' : s.format(v)) }))],
      },
      data,
      el,
    );
    return () => {
      plot.current?.destroy();
      plot.current = null;
    };
    // The chart is rebuilt when its points or markers change; a migration has a few dozen at most.
  }, [times.length, marks.length, series.length, times.at(-1)]);

  return (
    <figure class="chart" aria-label={title} data-points={times.length}>
      <figcaption>{title}</figcaption>
      <div ref={box} />
      {times.length === 0 && <p class="muted">No samples yet.</p>}
    </figure>
  );
}
