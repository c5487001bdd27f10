/**
 * Following a migration from the CLI: a live bar on a TTY (percent, MiB moved / total, rate, dirty rate, pass,
 * ETA), one plain line per change otherwise, nothing but the final document with --json.
 */
import cliProgress from 'cli-progress';
import type { MigrationJson } from '../common/migration.ts';
import { formatBytes, formatDuration } from '../common/units.ts';
import { isFinal } from '../common/states.ts';

const MiB = 1024 * 1024;

/** One line describing where a migration is; used by the plain (non-TTY) output and by tests. */
export function progressLine(m: MigrationJson): string {
  const p = m.progress;
  const head = `${m.vm} ${m.source}→${m.destination} ${m.state}/${m.phase}${m.qemuStatus ? ` (${m.qemuStatus})` : ''}`;
  if (!p) return head;
  const eta = p.etaMs === null ? (p.converges === false ? 'not converging' : 'ETA ?') : `ETA ${formatDuration(p.etaMs)}`;
  const disk = p.disk ? ` disk ${formatBytes(p.disk.transferredBytes)}/${formatBytes(p.disk.totalBytes)}${p.disk.ready ? ' ready' : ''}` : '';
  return (
    `${head} ${p.percent.toFixed(0)}% ${(p.transferredBytes / MiB).toFixed(0)}/${(p.totalBytes / MiB).toFixed(0)} MiB` +
    ` ${(p.rateBytesPerSec / MiB).toFixed(0)} MiB/s dirty ${(p.dirtyRateBytesPerSec / MiB).toFixed(0)} MiB/s pass ${p.pass} ${eta}${disk}`
  );
}

/** Milliseconds spent in each phase, from the job's timeline (a phase entered twice adds up). */
export function phaseDurations(m: Pick<MigrationJson, 'timeline' | 'finishedAt'>): { phase: string; ms: number }[] {
  const out: { phase: string; ms: number }[] = [];
  const t = m.timeline ?? [];
  for (let i = 0; i < t.length; i++) {
    const end = i + 1 < t.length ? t[i + 1]!.at : m.finishedAt;
    if (end === null || end === undefined) continue;
    const ms = Date.parse(end) - Date.parse(t[i]!.at);
    const last = out.at(-1);
    if (last && last.phase === t[i]!.phase) last.ms += ms;
    else out.push({ phase: t[i]!.phase, ms });
  }
  return out;
}

export function summaryLines(m: MigrationJson): string[] {
  const f = (v: number | null, unit: 'ms' | 'bytes'): string =>
    v === null ? '-' : unit === 'ms' ? formatDuration(v) : formatBytes(v);
  const lines = [
    `migration ${m.id}: ${m.vm} ${m.source} → ${m.destination} (${m.mode}) ${m.state.toUpperCase()}`,
    `  total ${f(m.totalMs, 'ms')} (QEMU ${f(m.qemuTotalMs, 'ms')}), downtime ${f(m.downtimeMs, 'ms')} (QEMU), ` +
      `${f(m.guestDowntimeMs, 'ms')} (seen from outside the guest)`,
    `  moved ${f(m.transferredBytes, 'bytes')} of ${f(m.memoryBytes, 'bytes')} memory in ${m.iterations ?? '-'} passes`,
  ];
  if (m.images.length > 0) {
    const what = m.images.map((i) => `${i.name} ${i.action === 'fetched' ? `fetched first (${formatBytes(i.bytes)})` : 'present'}`);
    lines.push(`  base images on ${m.destination}: ${what.join(', ')}`);
  }
  const phases = phaseDurations(m);
  if (phases.length > 0) lines.push(`  phases: ${phases.map((p) => `${p.phase} ${formatDuration(p.ms)}`).join(' · ')}`);
  for (const e of m.escalations) lines.push(`  escalation at ${e.at}: ${JSON.stringify(e.step)}`);
  if (m.error) lines.push(`  error ${m.error.code} in phase ${m.phase}: ${m.error.message}`);
  return lines;
}

export interface WatchOptions {
  json?: boolean;
  intervalMs?: number;
  /** Forces the TTY or plain rendering (tests); default: stderr's isTTY. */
  tty?: boolean;
  write?: (s: string) => void;
}

/** Polls a migration until it reaches a final state, rendering progress on stderr; returns the final document. */
export async function watchMigration(
  fetchOnce: () => Promise<MigrationJson>,
  opts: WatchOptions = {},
): Promise<MigrationJson> {
  const write = opts.write ?? ((s: string) => void process.stderr.write(s));
  const tty = opts.tty ?? Boolean(process.stderr.isTTY);
  const interval = opts.intervalMs ?? 250;
  let bar: cliProgress.SingleBar | null = null;
  let lastLine = '';
  try {
    for (;;) {
      const m = await fetchOnce();
      if (!opts.json) {
        if (tty) {
          if (!bar && m.progress) {
            bar = new cliProgress.SingleBar(
              { format: '{bar} {percent}% | {moved}/{total} MiB | {rate} MiB/s | dirty {dirty} MiB/s | pass {pass} | {eta} | {state}', hideCursor: true, clearOnComplete: false, stream: process.stderr },
              cliProgress.Presets.shades_classic,
            );
            bar.start(100, 0);
          }
          if (bar && m.progress) {
            const p = m.progress;
            bar.update(Math.round(p.percent), {
              moved: (p.transferredBytes / MiB).toFixed(0),
              total: (p.totalBytes / MiB).toFixed(0),
              rate: (p.rateBytesPerSec / MiB).toFixed(0),
              dirty: (p.dirtyRateBytesPerSec / MiB).toFixed(0),
              pass: p.pass,
              eta: p.etaMs === null ? (p.converges === false ? 'not converging' : 'ETA ?') : `ETA ${formatDuration(p.etaMs)}`,
              state: `${m.state}${m.qemuStatus ? `/${m.qemuStatus}` : ''}`,
            });
          }
        } else {
          const line = progressLine(m);
          if (line !== lastLine) write(line + '\n');
          lastLine = line;
        }
      }
      if (isFinal(m.state)) {
        if (bar) {
          if (m.state === 'completed') bar.update(100);
          bar.stop();
          bar = null;
        }
        return m;
      }
      await new Promise((r) => setTimeout(r, interval));
    }
  } finally {
    bar?.stop();
  }
}
