/**
 * Following a migration from the CLI. On a TTY: one status line redrawn in place — state, phase, percent and
 * ETA first so that they survive 80 columns, then a bar, rate, moved/total, dirty rate and pass — with the
 * news printed above it as it happens (phase changes, escalations, remaining memory that grew because the
 * guest re-dirtied it, a hint when the migration stalls at its budget). Without a TTY: the same news and one
 * plain line per change, no control characters. With --json: nothing until the final document.
 *
 * The ETA is Ferry's own (src/common/progress.ts, as the API reports it): `estimating…` while unknown,
 * `not converging` when the guest dirties memory faster than the link sends it.
 */
import { phaseDurations, type MigrationJson, type MigrationPrediction } from '../common/migration.ts';
import type { Escalation } from '../common/policy.ts';
import { formatBytes, formatDuration } from '../common/units.ts';
import { isFinal } from '../common/states.ts';

const MiB = 1024 * 1024;
const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
/** Back to the start of the line and erase it: the status line is redrawn in place. */
const CLEAR_LINE = '\r\x1b[2K';
/** The least room worth a bar; narrower, the bar is left out and the figures keep their place. */
const MIN_BAR = 8;
const MAX_BAR = 30;
/** Remaining memory that grows is explained again at most this often (it may grow every pass). */
const REDIRTY_NOTE_EVERY_MS = 10_000;

const mib = (n: number): string => (n / MiB).toFixed(0);
const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;

/** Ferry's ETA in words. */
export function etaText(p: NonNullable<MigrationJson['progress']>): string {
  if (p.etaMs !== null) return `ETA ${formatDuration(p.etaMs)}`;
  return p.converges === false ? 'not converging' : 'estimating…';
}

const clampPercent = (x: number): number => Math.max(0, Math.min(100, x));

/** The fields of the status line, most important first: `head` always, then `tail` as room allows. */
function statusParts(m: MigrationJson): { head: string; tail: string[]; percent: number | null } {
  const p = m.progress;
  const where = `${m.state} ${m.phase}`;
  if (!p) return { head: `${where} ${isFinal(m.state) ? '' : 'waiting for the first figures…'}`.trimEnd(), tail: [], percent: null };
  const percent = clampPercent(p.percent);
  const head = `${where} ${percent.toFixed(0).padStart(3)}% ${isFinal(m.state) ? '' : etaText(p)}`.trimEnd();
  const tail = [
    `${mib(p.rateBytesPerSec)} MiB/s`,
    `${mib(p.transferredBytes)}/${mib(p.totalBytes)} MiB`,
    `dirty ${mib(p.dirtyRateBytesPerSec)} MiB/s`,
    `pass ${p.pass}`,
    ...(p.disk ? [`disk ${mib(p.disk.transferredBytes)}/${mib(p.disk.totalBytes)} MiB${p.disk.ready ? ' ready' : ''}`] : []),
  ];
  return { head, tail, percent };
}

/** Rate and moved/total: what the bar may not push off the line. */
const ESSENTIAL_TAIL = 2;

const width = (s: string): number => [...s].length;

/** Cuts a line to `columns - 1` characters (the last column would make some terminals wrap). */
function fit(line: string, columns: number): string {
  const chars = [...line];
  const room = Math.max(1, columns - 1);
  return chars.length <= room ? line : chars.slice(0, room).join('');
}

/**
 * The TTY status line at a width: the head, a bar with rate and moved/total (and dirty rate, pass, disk as
 * room allows); too narrow for a bar, the fields alone; too narrow for those, the head cut to the width.
 */
export function statusLine(m: MigrationJson, columns: number): string {
  const { head, tail, percent } = statusParts(m);
  const room = columns - 1;
  if (percent !== null) {
    for (let k = tail.length; k >= ESSENTIAL_TAIL; k--) {
      const rest = tail.slice(0, k).join(' · ');
      const barWidth = Math.min(MAX_BAR, room - width(head) - width(rest) - 2);
      if (barWidth < MIN_BAR) continue;
      const full = Math.round((percent / 100) * barWidth);
      return `${head} ${'█'.repeat(full)}${'░'.repeat(barWidth - full)} ${rest}`;
    }
  }
  for (let k = tail.length; k > 0; k--) {
    const line = `${head} · ${tail.slice(0, k).join(' · ')}`;
    if (width(line) <= room) return line;
  }
  return fit(head, columns);
}

/** One plain line describing where a migration is: the non-TTY output (and what logs and tests read). */
export function progressLine(m: MigrationJson): string {
  const { head, tail } = statusParts(m);
  const qemu = m.qemuStatus ? `, QEMU ${m.qemuStatus}` : '';
  return `${head}${tail.length ? ` · ${tail.join(' · ')}` : ''} (${m.vm} ${m.source}→${m.destination}${qemu})`;
}

export function describeEscalation(s: Escalation): string {
  switch (s.kind) {
    case 'downtime-limit':
      return `downtime limit raised ${s.fromMs} ms → ${s.toMs} ms (${s.reason})`;
    case 'postcopy':
      return `switching to post-copy (${s.reason})`;
    case 'postcopy-recover':
      return `recovering post-copy (${s.reason})`;
    case 'abort':
      return `aborting, ${s.code} (${s.reason})`;
  }
}

/** The downtime limit QEMU works with now: the last raise, else the policy's starting limit. */
function downtimeLimit(m: MigrationJson): number {
  let limit = m.policy.initialDowntimeMs;
  for (const e of m.escalations) if (e.step.kind === 'downtime-limit') limit = e.step.toMs;
  return limit;
}

/** What the user can change when pre-copy cannot converge at the budget (options already on are left out). */
export function budgetHint(m: MigrationJson): string {
  const p = m.policy;
  const rate = m.progress ? `the guest dirties ${mib(m.progress.dirtyRateBytesPerSec)} MiB/s, the link moves ${mib(m.progress.rateBytesPerSec)} MiB/s` : '';
  const ways = [
    ...(p.bandwidthBytesPerSec > 0 ? [`--bandwidth above ${mib(p.bandwidthBytesPerSec)} MiB/s (or 0: no cap)`] : []),
    ...(p.autoConverge ? [] : ['--auto-converge (QEMU throttles the guest)']),
    ...(p.postcopy === 'never' ? ['--postcopy auto (pages pulled on demand after the switch)'] : []),
    `a larger --max-downtime than ${p.maxDowntimeMs} ms`,
  ];
  return `not converging at the downtime budget (${p.maxDowntimeMs} ms)${rate ? `: ${rate}` : ''}. It will end at its deadline (${formatDuration(p.deadlineMs)}); next time try ${ways.join(', ')}.`;
}

/**
 * The news between two documents of the same migration, as lines to print above the status line. Pure in
 * the documents, but remembers what it already said (so that a hint is given once).
 */
export class MigrationNews {
  private prev: MigrationJson | null = null;
  private redirtyNotedAt = -Infinity;
  private budgetHinted = false;

  next(m: MigrationJson): string[] {
    const prev = this.prev;
    this.prev = m;
    const out: string[] = [];
    const at = (iso: string): string => `+${seconds(Date.parse(iso) - Date.parse(m.startedAt))}`;
    const seen = prev?.timeline.length ?? 0;
    for (const t of m.timeline.slice(seen)) out.push(`${at(t.at)} ${t.state} · phase ${t.phase}`);
    for (const e of m.escalations.slice(prev?.escalations.length ?? 0)) out.push(`${at(e.at)} escalation: ${describeEscalation(e.step)}`);
    if (m.waiting && (!prev?.waiting || prev.waiting.host !== m.waiting.host)) {
      out.push(`${at(m.waiting.since)} waiting for ${m.waiting.role} ${m.waiting.host}: ${m.waiting.why}`);
    }
    const p = m.progress;
    const pp = prev?.progress;
    if (p && pp && m.state === 'transferring' && p.remainingBytes > pp.remainingBytes) {
      const when = Date.parse(p.sampledAt);
      if (when - this.redirtyNotedAt >= REDIRTY_NOTE_EVERY_MS) {
        this.redirtyNotedAt = when;
        out.push(
          `${at(p.sampledAt)} remaining memory grew ${mib(pp.remainingBytes)} → ${mib(p.remainingBytes)} MiB: the guest re-dirtied ` +
            `pages already sent (${mib(p.dirtyRateBytesPerSec)} MiB/s); pass ${p.pass} sends them again`,
        );
      }
    }
    const stuck = (x: MigrationJson | null): boolean =>
      x !== null && x.state === 'transferring' && x.progress?.converges === false && downtimeLimit(x) >= x.policy.maxDowntimeMs;
    // Two documents in a row, so that one unlucky sample does not give advice; with post-copy allowed the
    // ladder itself takes the next step.
    if (!this.budgetHinted && m.policy.postcopy === 'never' && stuck(m) && stuck(prev)) {
      this.budgetHinted = true;
      out.push(`hint: ${budgetHint(m)}`);
    }
    if (m.error && !prev?.error) out.push(`error ${m.error.code}: ${m.error.message}`);
    return out;
  }
}

/** Where the rendering goes; a fake one in tests. */
export interface ProgressTerminal {
  write(s: string): void;
  isTTY: boolean;
  /** Current width (a terminal can be resized while a migration runs). */
  columns(): number;
}

export function stderrTerminal(): ProgressTerminal {
  return {
    write: (s) => void process.stderr.write(s),
    isTTY: Boolean(process.stderr.isTTY),
    columns: () => process.stderr.columns || 80,
  };
}

/** Renders successive documents of one migration on a terminal. Call `close()` always (it shows the cursor). */
export class ProgressDisplay {
  private readonly news = new MigrationNews();
  private cursorHidden = false;
  private lineShown = false;
  private lastPlain = '';

  constructor(private readonly term: ProgressTerminal) {}

  show(m: MigrationJson): void {
    const notes = this.news.next(m);
    if (!this.term.isTTY) {
      for (const n of notes) this.term.write(n + '\n');
      const line = progressLine(m);
      if (line !== this.lastPlain) this.term.write(line + '\n');
      this.lastPlain = line;
      return;
    }
    let out = '';
    if (!this.cursorHidden) {
      out += HIDE_CURSOR;
      this.cursorHidden = true;
    }
    if (this.lineShown) out += CLEAR_LINE;
    for (const n of notes) out += n + '\n';
    out += statusLine(m, this.term.columns());
    this.lineShown = true;
    // The last status stays on screen as a line of its own.
    if (isFinal(m.state)) {
      out += '\n';
      this.lineShown = false;
    }
    this.term.write(out);
  }

  /** Ends the status line and makes the cursor visible again; safe to call twice. */
  close(): void {
    if (!this.term.isTTY) return;
    let out = this.lineShown ? '\n' : '';
    this.lineShown = false;
    if (this.cursorHidden) out += SHOW_CURSOR;
    this.cursorHidden = false;
    if (out) this.term.write(out);
  }
}

export interface FollowOptions {
  json?: boolean;
  terminal?: ProgressTerminal;
  /** Aborted (Ctrl-C): stop following, leave the migration running. */
  signal?: AbortSignal;
}

export interface FollowResult {
  /** The last document seen (the final one unless detached); null if none arrived. */
  last: MigrationJson | null;
  /** True when following stopped on the signal before the migration ended. */
  detached: boolean;
}

/** Renders a migration's documents until a final one, or until the signal says to detach. */
export async function followMigration(frames: AsyncIterable<MigrationJson>, opts: FollowOptions = {}): Promise<FollowResult> {
  const display = opts.json ? null : new ProgressDisplay(opts.terminal ?? stderrTerminal());
  let last: MigrationJson | null = null;
  try {
    for await (const m of frames) {
      if (opts.signal?.aborted) break;
      last = m;
      display?.show(m);
      if (isFinal(m.state)) return { last, detached: false };
    }
  } catch (err) {
    if (!opts.signal?.aborted) throw err;
  } finally {
    display?.close();
  }
  return { last, detached: true };
}

/** A migration's documents by polling (for callers without the event stream: the demo). */
export async function* pollFrames(fetchOnce: () => Promise<MigrationJson>, intervalMs = 250): AsyncGenerator<MigrationJson> {
  for (;;) {
    const m = await fetchOnce();
    yield m;
    if (isFinal(m.state)) return;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Polls a migration until it reaches a final state, rendering progress on stderr; returns the final document. */
export async function watchMigration(fetchOnce: () => Promise<MigrationJson>, opts: FollowOptions & { intervalMs?: number } = {}): Promise<MigrationJson> {
  const r = await followMigration(pollFrames(fetchOnce, opts.intervalMs), opts);
  return r.last!;
}

const STRATEGY_WORDS: Record<MigrationPrediction['strategy'], string> = {
  precopy: 'pre-copy as is',
  'auto-converge': 'pre-copy with --auto-converge',
  postcopy: 'post-copy (--postcopy always)',
  cold: 'cold',
  'cannot-converge': 'cannot converge: lower the dirty rate or raise the bandwidth',
};

/** A prediction in words (`ferry vm migrate --dry-run`, and beside what happened in `ferry migration show`). */
export function predictionLines(p: MigrationPrediction, indent = ''): string[] {
  const ms = (v: number | null): string => (v === null ? '-' : formatDuration(v));
  const dirty = p.dirtyRateBytesPerSec === null ? 'unknown' : `${formatBytes(p.dirtyRateBytesPerSec)}/s`;
  return [
    `${indent}recommended  ${STRATEGY_WORDS[p.strategy]}`,
    `${indent}predicted    total ${ms(p.totalMs)}, downtime ${ms(p.downtimeMs)} (budget ${formatDuration(p.maxDowntimeMs)}); pre-copy as is ${p.converges === null ? 'n/a (cold)' : p.converges ? 'converges' : 'does not converge'}`,
    `${indent}dirty rate   ${dirty} (measured now by QEMU), ${formatBytes(p.bytes)} to send`,
    `${indent}bandwidth    ${formatBytes(p.bandwidthBytesPerSec)}/s, ${p.bandwidthSource}: ${p.bandwidthDetail}`,
    `${indent}why          ${p.reason}`,
  ];
}

export function summaryLines(m: MigrationJson): string[] {
  const f = (v: number | null, unit: 'ms' | 'bytes'): string =>
    v === null ? '-' : unit === 'ms' ? formatDuration(v) : formatBytes(v);
  const lines = [
    `migration ${m.id}: ${m.vm} ${m.source} → ${m.destination} (${m.mode}) ${m.state.toUpperCase()}`,
    `  total ${f(m.totalMs, 'ms')} (QEMU ${f(m.qemuTotalMs, 'ms')}), downtime ${f(m.downtimeMs, 'ms')} (QEMU), ` +
      `${f(m.guestDowntimeMs, 'ms')} (seen from outside the guest${m.guestDowntimeProbe ? `, ${m.guestDowntimeProbe} probe` : ''})`,
    `  moved ${f(m.transferredBytes, 'bytes')} of ${f(m.memoryBytes, 'bytes')} memory in ${m.iterations ?? '-'} passes`,
  ];
  if (m.prediction !== null) {
    const p = m.prediction;
    const vs = (pred: number | null, real: number | null): string => `${pred === null ? '-' : formatDuration(pred)} predicted, ${real === null ? '-' : formatDuration(real)} real`;
    lines.push(`  prediction (${STRATEGY_WORDS[p.strategy]}): total ${vs(p.totalMs, m.totalMs)}; downtime ${vs(p.downtimeMs, m.downtimeMs)}`);
    lines.push(...predictionLines(p, '    ').slice(2));
  }
  if (m.images.length > 0) {
    const what = m.images.map((i) => `${i.name} ${i.action === 'fetched' ? `fetched first (${formatBytes(i.bytes)})` : 'present'}`);
    lines.push(`  base images on ${m.destination}: ${what.join(', ')}`);
  }
  if (m.queue !== null) lines.push(`  queued: #${m.queue.position} in line since ${m.queue.since}, waiting for the ${m.queue.reason}${m.priority !== 0 ? ` (priority ${m.priority})` : ''}`);
  const phases = phaseDurations(m);
  if (phases.length > 0) lines.push(`  phases: ${phases.map((p) => `${p.phase} ${formatDuration(p.ms)}`).join(' · ')}`);
  for (const e of m.escalations) lines.push(`  escalation at ${e.at}: ${describeEscalation(e.step)}`);
  for (const a of m.actions) lines.push(`  ${a.action} at ${a.at}: ${a.detail}`);
  if (m.error) lines.push(`  error ${m.error.code} in phase ${m.phase}: ${m.error.message}`);
  return lines;
}
