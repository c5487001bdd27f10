/**
 * The downtime probe for any guest with an address (probe.ts): ICMP echo every ~10 ms, sent by iputils
 * `ping` as a child process, because Node has no raw sockets. `ping -D` stamps each reply with the time it
 * arrived (microseconds, the wall clock), and those stamps — not the moment Node reads the pipe — are the
 * reply times, so a busy event loop does not blur the gaps. Its output is parsed line by line and robustly:
 * replies from other addresses, errors (`From … Destination Host Unreachable`), duplicates (`(DUP!)` or a
 * sequence number seen before, 16-bit numbers unwrapped), replies out of order and a cut last line are each
 * handled; no reply at all is `null`, never 0 (probe.ts).
 *
 * The child never outlives its probe: stop() sends SIGINT (ping prints its summary) and SIGKILL after 1 s;
 * ping is started under `setpriv --pdeathsig KILL`, so a controller that dies takes it along (a root
 * controller: for a non-root one the kernel clears that signal when it executes ping's file capability),
 * and `-w` bounds it in any case.
 *
 * Resolution (docs/qemu.md): a gap is known to within one interval plus the jitter of ping's own timer.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { FerryError } from '../common/errors.ts';
import {
  DEFAULT_PROBE_INTERVAL_MS,
  gapReport,
  gapThresholdFor,
  type DowntimeProbe,
  type ProbeOptions,
  type ProbeReport,
} from './probe.ts';

/** One reply line of `ping -n -D`. */
export interface PingReply {
  /** When it arrived (ms since the epoch, ping's own stamp). */
  atMs: number;
  /** ICMP sequence number as printed (16 bits, wraps). */
  seq: number;
  rttMs: number | null;
  /** ping marked it `(DUP!)`. */
  dup: boolean;
}

const REPLY_RE =
  /^\[(\d+(?:\.\d+)?)\]\s+\d+ bytes from (?:\S+ \()?([0-9a-fA-F.:]+)\)?:\s.*?\bicmp_seq=(\d+)\b(.*)$/;

/** A reply of `target` in one line of `ping -n -D` output, or null (header, errors, other senders, junk). */
export function parsePingLine(line: string, target: string): PingReply | null {
  const m = REPLY_RE.exec(line.trim());
  if (!m || m[2] !== target) return null;
  const rest = m[4]!;
  // A reply whose checksum is wrong is not a clean answer from the guest's stack.
  if (rest.includes('BAD CHECKSUM')) return null;
  const time = /\btime=([\d.]+) ms/.exec(rest);
  return {
    atMs: Number(m[1]) * 1000,
    seq: Number(m[3]),
    rttMs: time ? Number(time[1]) : null,
    dup: rest.includes('(DUP!)'),
  };
}

/** What a run of ping said, line by line: distinct replies, duplicates, what its summary says it sent. */
export class PingTally {
  readonly replyAtMs: number[] = [];
  readonly rtts: number[] = [];
  duplicates = 0;
  /** From the summary line (`N packets transmitted`); null until ping printed it. */
  transmitted: number | null = null;
  #seen = new Set<number>();
  #high = -1;

  constructor(readonly target: string) {}

  line(line: string): void {
    const sent = /^(\d+) packets transmitted\b/.exec(line.trim());
    if (sent) {
      this.transmitted = Number(sent[1]);
      return;
    }
    const r = parsePingLine(line, this.target);
    if (r === null) return;
    const seq = this.#unwrap(r.seq);
    if (r.dup || this.#seen.has(seq)) {
      this.duplicates++;
      return;
    }
    this.#seen.add(seq);
    this.replyAtMs.push(r.atMs);
    if (r.rttMs !== null) this.rtts.push(r.rttMs);
  }

  /** Sent probes: the summary's figure, else the highest sequence number answered (a lower bound). */
  get sent(): number {
    return this.transmitted ?? Math.max(0, this.#high);
  }

  /** The 16-bit sequence number as a count since the start: the candidate nearest the highest so far. */
  #unwrap(seq16: number): number {
    if (this.#high < 0) {
      this.#high = seq16;
      return seq16;
    }
    const base = this.#high - (this.#high % 65536) + seq16;
    const best = [base - 65536, base, base + 65536]
      .filter((c) => c >= 0)
      .reduce((a, b) => (Math.abs(b - this.#high) < Math.abs(a - this.#high) ? b : a));
    if (best > this.#high) this.#high = best;
    return best;
  }
}

export interface IcmpProbeOptions extends ProbeOptions {
  /** ping exits by itself after this long, whatever happens to its parent (default 15 min). */
  maxDurationMs?: number;
}

/**
 * iputils keeps the interval in whole milliseconds and, asked for exactly 10 ms on the machines here, sent
 * every ~16 ms (its timer wakes a hair early and waits a whole tick more); asked for 9 ms it sent every
 * ~9.1 ms (measured, docs/qemu.md). So it is asked for 1 ms less than the interval wanted.
 */
export const pingIntervalArg = (intervalMs: number): string =>
  (Math.max(1, intervalMs - 1) / 1000).toFixed(3);

export function pingArgv(ip: string, intervalMs: number, maxDurationMs: number): string[] {
  return [
    'setpriv',
    '--pdeathsig',
    'KILL',
    '--',
    'ping',
    '-n',
    '-D',
    '-i',
    pingIntervalArg(intervalMs),
    '-w',
    String(Math.ceil(maxDurationMs / 1000)),
    ip,
  ];
}

const START_TIMEOUT_MS = 3000;

export class IcmpProbe implements DowntimeProbe {
  readonly kind = 'icmp' as const;
  readonly ip: string;
  readonly intervalMs: number;
  readonly gapThresholdMs: number;
  readonly #maxDurationMs: number;
  #child: ChildProcess | null = null;
  #closed: Promise<void> = Promise.resolve();
  #exited = false;
  #report: Promise<ProbeReport> | null = null;
  #tally: PingTally;
  #t0 = 0;
  #stderr = '';

  constructor(opts: IcmpProbeOptions) {
    this.ip = opts.ip;
    this.intervalMs = opts.intervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.gapThresholdMs = opts.gapThresholdMs ?? gapThresholdFor(this.intervalMs);
    this.#maxDurationMs = opts.maxDurationMs ?? 15 * 60_000;
    this.#tally = new PingTally(opts.ip);
  }

  get running(): boolean {
    return this.#child !== null && !this.#exited && this.#report === null;
  }

  /** The child's pid while it runs (tests check it is gone after stop). */
  get pid(): number | null {
    return this.#child?.pid ?? null;
  }

  /** Resolves once ping runs and printed its header; rejects (FERRY_E_PROBE_UNAVAILABLE) when it cannot. */
  async start(): Promise<void> {
    if (this.#child) throw new FerryError('FERRY_E_INTERNAL', 'Probe already started.');
    const [cmd, ...args] = pingArgv(this.ip, this.intervalMs, this.#maxDurationMs);
    // The wall clock, as ping's -D stamps are.
    this.#t0 = Date.now();
    const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    let partial = '';
    let header!: () => void;
    const started = new Promise<void>((resolve) => (header = resolve));
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      // The last piece has no newline yet: it waits for the next chunk (a line cut by a kill is dropped).
      partial = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith('PING ')) header();
        this.#tally.line(l);
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => (this.#stderr = (this.#stderr + chunk).slice(-2000)));
    this.#closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const failed = new Promise<never>((_, reject) => {
      child.once('error', (err) => reject(err));
      child.once('exit', (code, signal) => {
        this.#exited = true;
        reject(
          new Error(
            `ping exited (${signal ?? code}) before it started: ${this.#stderr.trim() || 'no message'}`,
          ),
        );
      });
    });
    failed.catch(() => undefined); // an exit after the start is normal (stop, -w): not an unhandled rejection
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`ping printed nothing within ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([started, failed, late]);
    } catch (err) {
      this.#kill();
      await this.#closed;
      throw new FerryError(
        'FERRY_E_PROBE_UNAVAILABLE',
        `The ICMP probe of ${this.ip} could not start: ${String(err instanceof Error ? err.message : err)}`,
        { cause: err },
      );
    } finally {
      clearTimeout(timer);
    }
  }

  stop(): Promise<ProbeReport> {
    if (!this.#child) return Promise.reject(new FerryError('FERRY_E_INTERNAL', 'Probe not started.'));
    this.#report ??= (async () => {
      const stoppedAt = Date.now() - this.#t0;
      // Replies in flight are still counted, as the UDP probe does.
      await new Promise((r) => setTimeout(r, Math.max(20, 2 * this.intervalMs)));
      if (!this.#exited) this.#child!.kill('SIGINT');
      let timer: NodeJS.Timeout | undefined;
      const closedInTime = await Promise.race([
        this.#closed.then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 1000))),
      ]);
      clearTimeout(timer);
      if (!closedInTime) {
        this.#kill();
        await this.#closed;
      }
      const t = this.#tally;
      const seen = {
        sent: t.sent,
        replyMs: t.replyAtMs.map((at) => at - this.#t0),
        duplicates: t.duplicates,
        rtts: t.rtts,
        durationMs: stoppedAt,
      };
      return gapReport('icmp', seen, this.gapThresholdMs);
    })();
    return this.#report;
  }

  #kill(): void {
    if (this.#exited) return;
    try {
      this.#child?.kill('SIGKILL');
    } catch {
      /* gone already */
    }
  }
}
