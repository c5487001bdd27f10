/**
 * The progress rendering, in-process, on a fake terminal with a TTY and without, at 80 and 200 columns.
 * The frames are what `ferry migration watch` received in a real lab (src/cli/fixtures/migration-frames.json:
 * a 256 MiB tiny guest dirtying 16 MiB at 8 MiB/s, `--bandwidth 40`, h2 → h1); the edge cases (escalations,
 * re-dirtied memory, a migration stuck at its budget) are those frames with the figures changed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { MigrationJson } from '../common/migration.ts';
import { MigrationNews, ProgressDisplay, followMigration, progressLine, statusLine, type ProgressTerminal } from './progress.ts';

const FRAMES = JSON.parse(readFileSync(new URL('./fixtures/migration-frames.json', import.meta.url), 'utf8')) as MigrationJson[];
const clone = (m: MigrationJson): MigrationJson => structuredClone(m);
const running = (): MigrationJson => clone(FRAMES.find((m) => m.state === 'transferring' && m.progress !== null)!);

function fakeTerminal(isTTY: boolean, columns: number): ProgressTerminal & { out: string } {
  const t = { out: '', isTTY, columns: () => columns, write: (s: string) => void (t.out += s) };
  return t;
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

/**
 * What a person saw: every line ever drawn (each redraw of the status line counts), ANSI stripped. A redraw
 * is `\r` + erase-line, so the pieces between carriage returns are the successive versions of a line.
 */
function drawnLines(raw: string): string[] {
  return raw
    .replace(ANSI, '')
    .split('\n')
    .flatMap((l) => l.split('\r'))
    .filter((l) => l.length > 0);
}

function render(frames: MigrationJson[], isTTY: boolean, columns: number): string {
  const term = fakeTerminal(isTTY, columns);
  const d = new ProgressDisplay(term);
  for (const m of frames) d.show(m);
  d.close();
  return term.out;
}

const statusLines = (lines: string[]): string[] => lines.filter((l) => /^(queued|preparing|transferring|postcopy|switching|completed|failed|cancelled|awaiting_\w+) \w+ /.test(l));

test('TTY at 80 columns: state, phase, percent and ETA first; no placeholder; percent ≤ 100; moved/total as the API says', () => {
  const raw = render(FRAMES, true, 80);
  const lines = drawnLines(raw);
  assert.ok(!/[{}]/.test(lines.join('\n')), `no {placeholder}: ${lines.join('\n')}`);
  for (const l of lines) assert.ok([...l].length <= 79, `fits 80 columns: ${JSON.stringify(l)}`);
  const status = statusLines(lines);
  assert.ok(status.length >= FRAMES.length - 1, status.join('\n'));
  for (const l of status) {
    const pct = /^\S+ \S+ +(\d+)% (ETA \S+ \S+|estimating…|not converging)?/.exec(l);
    assert.ok(pct, `state, phase, percent, ETA lead: ${l}`);
    assert.ok(Number(pct[1]) <= 100, l);
  }
  const last = FRAMES.at(-1)!;
  const p = last.progress!;
  const mib = (n: number): string => (n / 2 ** 20).toFixed(0);
  assert.match(status.at(-1)!, /^completed confirm 100% █+ \d+ MiB\/s · \d+\/\d+ MiB( · |$)/, 'a bar, rate and moved/total fit (dirty rate and pass give way first)');
  assert.ok(status.at(-1)!.includes(`${mib(p.transferredBytes)}/${mib(p.totalBytes)} MiB`), status.at(-1));
  // Phase changes above the bar, with the time since the start.
  assert.ok(lines.some((l) => /^\+\d+\.\ds transferring · phase perform$/.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => /^\+\d+\.\ds switching · phase finish$/.test(l)));
  // The cursor is hidden while drawing and visible again at the end.
  assert.ok(raw.lastIndexOf('\x1b[?25h') > raw.lastIndexOf('\x1b[?25l'));
  assert.ok(raw.includes('\x1b[?25l'));
});

test('TTY at 200 columns: a bar, then rate, moved/total, dirty rate and pass', () => {
  const lines = statusLines(drawnLines(render(FRAMES, true, 200)));
  const mid = lines.find((l) => l.startsWith('transferring perform') && l.includes('█'));
  assert.ok(mid, lines.join('\n'));
  assert.match(mid, /^transferring perform +\d+% ETA [\d.]+ m?s [█░]{30} \d+ MiB\/s · \d+\/\d+ MiB · dirty \d+ MiB\/s · pass \d+$/);
  const m = running();
  const pct = Math.round((m.progress!.percent / 100) * 30);
  assert.equal((statusLine(m, 200).match(/█/g) ?? []).length, pct, 'the bar is the percent');
});

test('without a TTY: plain lines, no control characters, the same news', () => {
  const raw = render(FRAMES, false, 80);
  // eslint-disable-next-line no-control-regex
  assert.ok(!/[\x00-\x09\x0b-\x1f\x7f]/.test(raw), JSON.stringify(raw.slice(0, 300)));
  const lines = raw.trimEnd().split('\n');
  assert.ok(lines.some((l) => l.startsWith('+') && l.includes('phase perform')));
  assert.match(lines.at(-1)!, /^completed confirm 100% · .* \(p1 h2→h1, QEMU completed\)$/);
  assert.equal(new Set(lines).size, lines.length, 'a line is printed when it changes, not on every frame');
});

test("the ETA is Ferry's: estimating… while unknown, not converging when the API says so", () => {
  const m = running();
  m.progress!.etaMs = null;
  m.progress!.converges = null;
  assert.match(statusLine(m, 80), /^transferring perform +\d+% estimating… /);
  m.progress!.converges = false;
  assert.match(statusLine(m, 80), /^transferring perform +\d+% not converging /);
  m.progress!.etaMs = 2500;
  m.progress!.converges = true;
  assert.match(statusLine(m, 80), /% ETA 2\.5 s /);
  m.progress!.percent = 130; // a model that overshoots is still drawn as at most 100 %
  assert.match(statusLine(m, 80), / 100% /);
  assert.ok(!progressLine(m).includes('130'));
});

test('escalations, re-dirtied memory and a migration stuck at its budget are told above the bar', () => {
  const news = new MigrationNews();
  const a = running();
  a.progress!.remainingBytes = 20 * 2 ** 20;
  news.next(a);
  const b = clone(a);
  b.progress!.remainingBytes = 60 * 2 ** 20;
  b.progress!.dirtyRateBytesPerSec = 30 * 2 ** 20;
  b.progress!.pass = 3;
  b.progress!.sampledAt = new Date(Date.parse(a.progress!.sampledAt) + 1000).toISOString();
  const grew = news.next(b);
  assert.ok(grew.some((l) => /remaining memory grew 20 → 60 MiB: the guest re-dirtied pages already sent \(30 MiB\/s\); pass 3 sends them again/.test(l)), grew.join('\n'));
  // At the budget and not converging, twice in a row: one hint naming what would help.
  const c = clone(b);
  c.escalations = [{ at: b.progress!.sampledAt, step: { kind: 'downtime-limit', fromMs: 150, toMs: 300, reason: 'pass 9: not shrinking' } }];
  c.progress!.converges = false;
  c.progress!.etaMs = null;
  const raised = news.next(c);
  assert.ok(raised.some((l) => l.includes('escalation: downtime limit raised 150 ms → 300 ms (pass 9: not shrinking)')), raised.join('\n'));
  assert.ok(!raised.some((l) => l.startsWith('hint:')), 'not on one sample');
  const d = clone(c);
  const hint = news.next(d).find((l) => l.startsWith('hint:'));
  assert.ok(hint, 'hint on the second');
  for (const way of ['--bandwidth above 40 MiB/s', '--auto-converge', '--postcopy auto', '--max-downtime']) assert.ok(hint.includes(way), `${way} in ${hint}`);
  assert.deepEqual(news.next(clone(d)).filter((l) => l.startsWith('hint:')), [], 'once');
  // Options already in effect are not suggested.
  const n2 = new MigrationNews();
  const e = clone(d);
  e.policy = { ...e.policy, autoConverge: true, bandwidthBytesPerSec: 0 };
  n2.next(e);
  const h2 = n2.next(clone(e)).find((l) => l.startsWith('hint:'))!;
  assert.ok(!h2.includes('--auto-converge') && !h2.includes('--bandwidth'), h2);
});

test('detaching (Ctrl-C) stops drawing and shows the cursor; --json draws nothing', async () => {
  const stop = new AbortController();
  const term = fakeTerminal(true, 80);
  async function* frames(): AsyncGenerator<MigrationJson> {
    yield running();
    stop.abort();
    await new Promise((r) => setTimeout(r, 10));
    yield running();
  }
  const r = await followMigration(frames(), { terminal: term, signal: stop.signal });
  assert.equal(r.detached, true);
  assert.equal(r.last?.state, 'transferring');
  assert.ok(term.out.endsWith('\n\x1b[?25h'), JSON.stringify(term.out.slice(-20)));

  const quiet = fakeTerminal(true, 80);
  async function* all(): AsyncGenerator<MigrationJson> {
    yield* FRAMES;
  }
  const done = await followMigration(all(), { json: true, terminal: quiet });
  assert.equal(done.detached, false);
  assert.equal(done.last?.state, 'completed');
  assert.equal(quiet.out, '');
});
