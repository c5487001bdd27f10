/**
 * What an operator sees in a terminal (issue #10), in a real two-host lab: `ferry vm migrate --wait` runs in
 * a real pseudo-terminal (util-linux `script`) 80 columns wide while the guest dirties memory, so that the
 * migration lasts a few seconds. The screen shows no `{…}` placeholder, percents ≤ 100, the state first, and
 * a last moved/total equal to the job's own figures; `ferry events --follow` meanwhile prints the job's
 * events. Then Ctrl-C (SIGINT to the CLI's process): the cursor is visible again, the follow/cancel hint is
 * printed, the CLI exits 130 and the migration completes on the server; two Ctrl-C cancel it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { readLabState } from '../../src/lab/index.ts';
import { FERRY, LabHarness, cmdline, otherHost as other, waitFor, type VmView } from './helpers.ts';

const VM = 'pt1';
const h = new LabHarness('pt');
const measured: string[] = [];
const started: ChildProcess[] = [];

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
const SHOW = '\x1b[?25h';
const HIDE = '\x1b[?25l';
const mib = (n: number): string => (n / 2 ** 20).toFixed(0);

interface Pty {
  proc: ChildProcess;
  out: () => string;
  exit: Promise<number>;
}

/** `ferry ARGS` in a pseudo-terminal of 80 columns; what it draws, as the terminal received it. */
function inPty(args: string[]): Pty {
  const cmd = `stty cols 80 rows 24; exec ${process.execPath} ${FERRY} ${args.join(' ')}`;
  const proc = spawn('script', ['-qfec', cmd, '/dev/null'], { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(proc);
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString('utf8')));
  const exit = new Promise<number>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1))));
  return { proc, out: () => out, exit };
}

/** The CLI's own process: `script`'s child (the shell exec'd into it). */
function ferryPid(pty: Pty): number {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue;
    }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === pty.proc.pid && cmdline(e).some((a) => a.endsWith('ferry.js'))) return Number(e);
  }
  throw new Error(`no ferry process under script (pid ${pty.proc.pid})`);
}

/** Every version of every line drawn: redraws (`\r`) count, escape sequences stripped. */
const drawn = (raw: string): string[] =>
  raw
    .replace(ANSI, '')
    .split('\n')
    .flatMap((l) => l.split('\r'))
    .map((l) => l.trimEnd())
    .filter((l) => l.length > 0);

const STATUS = /^(queued|preparing|transferring|postcopy|switching|completed|awaiting_\w+) (begin|prepare|perform|finish|confirm) +(\d+)% /;

const idOf = (raw: string): string => {
  const m = /migration (m-[0-9a-f]+):/.exec(raw);
  assert.ok(m, `the job id is printed: ${raw.slice(0, 500)}`);
  return m[1]!;
};

async function untilTransferring(pty: Pty): Promise<void> {
  await waitFor('a transferring status line', () => drawn(pty.out()).some((l) => l.startsWith('transferring perform ') && STATUS.test(l)), 60_000, 50);
}

describe('progress in a terminal, Ctrl-C and events --follow', { timeout: 480_000 }, () => {
  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    const v = await h.ferryJson<VmView>(['vm', 'create', VM, '--memory', '128M', '--host', 'h1']);
    assert.equal(v.state, 'running');
    // Re-dirtied pages are sent again: a few passes, a few seconds, then it converges (16 MiB at 8 MiB/s < 40).
    await h.guest(VM, 'dirty', 'start', '--mib', '16', '--rate', '8');
  });

  after(async () => {
    for (const p of started) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await h.down(measured);
  });

  it('vm migrate --wait at 80 columns: state first, no placeholder, percent ≤ 100, moved/total as the job says', async () => {
    const to = other((await h.vmShow(VM)).host);
    // The event stream of the same job, read by `ferry events --follow` as a pipe (no TTY), from the newest
    // event before the job: however late the follower connects (a loaded machine), it misses nothing.
    const kept = await h.ferryJson<{ seq: number }[]>(['events']);
    const newest = String(Math.max(0, ...kept.map((e) => e.seq)));
    const events = spawn(process.execPath, [FERRY, 'events', '--follow', '--after', newest, '--type', 'migration', '--vm', VM], { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(events);
    let evOut = '';
    events.stdout.on('data', (b: Buffer) => (evOut += b.toString('utf8')));
    const evExit = new Promise<number | null>((resolve) => events.on('exit', (code) => resolve(code)));

    const pty = inPty(['vm', 'migrate', VM, '--to', to, '--bandwidth', '40M', '--wait']);
    const code = await pty.exit;
    const raw = pty.out();
    const lines = drawn(raw);
    const id = idOf(raw);
    assert.equal(code, 0, raw);
    assert.ok(!/\{[a-z]+\}/i.test(raw.replace(ANSI, '')), 'no {placeholder}');
    const status = lines.filter((l) => STATUS.test(l));
    assert.ok(status.length >= 2, lines.join('\n'));
    for (const l of status) {
      assert.ok([...l].length <= 79, `fits 80 columns: ${l}`);
      assert.ok(Number(STATUS.exec(l)![3]) <= 100, l);
    }
    const m = await h.migrationShow(id);
    assert.equal(m.state, 'completed');
    const last = status.at(-1)!;
    assert.match(last, /^completed confirm 100% /);
    assert.ok(last.includes(`${mib(m.progress!.transferredBytes)}/${mib(m.progress!.totalBytes)} MiB`), `${last} vs ${JSON.stringify(m.progress)}`);
    assert.ok(lines.some((l) => /^\+[\d.]+s transferring · phase perform$/.test(l)), 'the phase change is printed');
    assert.ok(raw.lastIndexOf(SHOW) > raw.lastIndexOf(HIDE), 'cursor visible at the end');
    measured.push(`tty migrate: ${m.totalMs} ms, ${m.iterations} passes, ${status.length} status lines, last: ${last}`);

    await waitFor('events --follow to print the completion', () => evOut.includes(`migration.completed ${id}`), 10_000);
    events.kill('SIGINT');
    assert.equal(await evExit, 130, 'Ctrl-C ends a follow with 130');
    const evLines = evOut.trim().split('\n');
    assert.ok(evLines.every((l) => / migration\.\w+ m-/.test(l)), evOut);
    assert.ok(evLines.some((l) => l.includes(`migration.transferring ${id}`)), evOut);
  });

  it('Ctrl-C detaches: cursor shown, hint printed, exit 130, and the migration completes', async () => {
    const from = (await h.vmShow(VM)).host;
    const to = other(from);
    const pty = inPty(['vm', 'migrate', VM, '--to', to, '--bandwidth', '40M', '--wait']);
    await untilTransferring(pty);
    process.kill(ferryPid(pty), 'SIGINT');
    const code = await pty.exit;
    const raw = pty.out();
    const id = idOf(raw);
    assert.equal(code, 130, raw);
    assert.ok(raw.lastIndexOf(SHOW) > raw.lastIndexOf(HIDE), `cursor visible after the last hide: ${JSON.stringify(raw.slice(-400))}`);
    const text = raw.replace(ANSI, '');
    assert.ok(text.includes(`ferry migration watch ${id}`), text);
    assert.ok(text.includes(`ferry migration cancel ${id}`), text);
    const m = await h.waitFinal(id, 120_000);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.equal((await h.vmShow(VM)).host, to);
    measured.push(`detached at ${drawn(raw).filter((l) => STATUS.test(l)).at(-1)}; job then ${m.state} in ${m.totalMs} ms`);
  });

  it('a second Ctrl-C within 2 s cancels the migration', async () => {
    const from = (await h.vmShow(VM)).host;
    // Slower than the guest dirties it, so that it is still cancellable when the second Ctrl-C comes.
    const pty = inPty(['vm', 'migrate', VM, '--to', other(from), '--bandwidth', '6M', '--wait']);
    await untilTransferring(pty);
    const pid = ferryPid(pty);
    process.kill(pid, 'SIGINT');
    await waitFor('the detach hint', () => pty.out().includes('detached: migration'), 5_000, 20);
    process.kill(pid, 'SIGINT');
    const code = await pty.exit;
    const raw = pty.out();
    const id = idOf(raw);
    assert.equal(code, 130, raw);
    assert.ok(raw.includes(`migration ${id}: cancel requested on the second Ctrl-C`), raw);
    const m = await h.waitFinal(id, 60_000);
    assert.equal(m.state, 'cancelled');
    const v = await waitFor('VM running on the source', async () => {
      const cur = await h.vmShow(VM);
      return cur.state === 'running' ? cur : null;
    }, 20_000);
    assert.equal(v.host, from);
  });
});
