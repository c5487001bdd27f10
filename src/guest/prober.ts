/**
 * The downtime a guest's clients see: sends `probe <seq>` to ferry-guest over UDP every 10 ms and records
 * when replies come back. The longest interval between two consecutive replies is the outage measured from
 * outside the guest (QEMU's own `downtime` counts only the stop-and-copy, not the network catching up).
 * Plain dgram: to measure from inside a network namespace, run it in a process that lives there.
 */
import { createSocket, type Socket } from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { FerryError } from '../common/errors.ts';
import { GUEST_UDP_PORT } from './client.ts';

export interface ProberOptions {
  /** The guest's address. */
  ip: string;
  port?: number;
  /** Default 10 ms. */
  intervalMs?: number;
  /** Local address to send from (default: any). */
  bindAddress?: string;
  /** Intervals between replies longer than this are listed in `gaps` (default max(50, 5 × interval)). */
  gapThresholdMs?: number;
}

export interface ProbeGap {
  /** Milliseconds since start() of the last reply before the gap and the first after it. */
  fromMs: number;
  toMs: number;
  ms: number;
}

export interface ProbeReport {
  sent: number;
  received: number;
  durationMs: number;
  /** Longest interval between consecutive replies: the downtime seen from outside. 0 with < 2 replies. */
  longestGapMs: number;
  /** Every interval longer than the threshold, in time order. */
  gaps: ProbeGap[];
  gapThresholdMs: number;
  /** From start() to the first reply; null when none came. */
  firstReplyMs: number | null;
  /** From the last reply to stop(): large when the guest never came back. Null when no reply came. */
  tailGapMs: number | null;
  /** Round-trip times of the replies. */
  rttMs: { p50: number; p99: number; max: number } | null;
}

const round = (n: number): number => Math.round(n * 10) / 10;

export class Prober {
  readonly ip: string;
  readonly port: number;
  readonly intervalMs: number;
  readonly gapThresholdMs: number;
  readonly #bindAddress: string | undefined;
  #sock: Socket | null = null;
  #timer: NodeJS.Timeout | null = null;
  #t0 = 0;
  #seq = 0;
  #sentAt = new Map<number, number>();
  #replies: number[] = [];
  #rtts: number[] = [];

  constructor(opts: ProberOptions) {
    this.ip = opts.ip;
    this.port = opts.port ?? GUEST_UDP_PORT;
    this.intervalMs = opts.intervalMs ?? 10;
    this.gapThresholdMs = opts.gapThresholdMs ?? Math.max(50, 5 * this.intervalMs);
    this.#bindAddress = opts.bindAddress;
  }

  get running(): boolean {
    return this.#sock !== null;
  }

  async start(): Promise<void> {
    if (this.#sock) throw new FerryError('FERRY_E_INTERNAL', 'Prober already started.');
    const sock = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind({ port: 0, ...(this.#bindAddress === undefined ? {} : { address: this.#bindAddress }) }, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    // An unreachable guest answers with ICMP errors: they are lost probes, not a reason to stop.
    sock.on('error', () => undefined);
    sock.on('message', (msg, rinfo) => {
      if (rinfo.address !== this.ip || rinfo.port !== this.port) return;
      const m = /"probe":(\d+)/.exec(msg.toString('utf8'));
      const sentAt = m ? this.#sentAt.get(Number(m[1])) : undefined;
      if (sentAt === undefined) return; // unknown or duplicate
      this.#sentAt.delete(Number(m![1]));
      const now = performance.now();
      this.#replies.push(now - this.#t0);
      this.#rtts.push(now - sentAt);
    });
    this.#sock = sock;
    this.#t0 = performance.now();
    this.#seq = 0;
    this.#sentAt.clear();
    this.#replies = [];
    this.#rtts = [];
    this.#send();
    this.#timer = setInterval(() => this.#send(), this.intervalMs);
  }

  #send(): void {
    const seq = this.#seq++;
    this.#sentAt.set(seq, performance.now());
    this.#sock?.send(`probe ${seq}`, this.port, this.ip);
  }

  /** Stops probing; waits one more moment for replies in flight, then reports. */
  async stop(): Promise<ProbeReport> {
    const sock = this.#sock;
    if (!sock) throw new FerryError('FERRY_E_INTERNAL', 'Prober not started.');
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const stoppedAt = performance.now() - this.#t0;
    await new Promise((r) => setTimeout(r, Math.max(20, 2 * this.intervalMs)));
    await new Promise<void>((resolve) => sock.close(() => resolve()));
    this.#sock = null;
    return this.#report(stoppedAt);
  }

  #report(durationMs: number): ProbeReport {
    const t = this.#replies;
    let longest = 0;
    const gaps: ProbeGap[] = [];
    for (let i = 1; i < t.length; i++) {
      const d = t[i]! - t[i - 1]!;
      if (d > longest) longest = d;
      if (d > this.gapThresholdMs) gaps.push({ fromMs: round(t[i - 1]!), toMs: round(t[i]!), ms: round(d) });
    }
    const rtts = [...this.#rtts].sort((a, b) => a - b);
    const q = (p: number): number => round(rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))]!);
    return {
      sent: this.#seq,
      received: t.length,
      durationMs: round(durationMs),
      longestGapMs: round(longest),
      gaps,
      gapThresholdMs: this.gapThresholdMs,
      firstReplyMs: t.length > 0 ? round(t[0]!) : null,
      tailGapMs: t.length > 0 ? round(Math.max(0, durationMs - t[t.length - 1]!)) : null,
      rttMs: rtts.length > 0 ? { p50: q(0.5), p99: q(0.99), max: round(rtts[rtts.length - 1]!) } : null,
    };
  }
}
