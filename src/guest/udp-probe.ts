/**
 * The tiny guest's downtime probe (probe.ts): sends `probe <seq>` to ferry-guest over UDP every 10 ms and
 * records when replies come back. Plain dgram: to measure from inside a network namespace, run it in a
 * process that lives there.
 */
import { createSocket, type Socket } from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { FerryError } from '../common/errors.ts';
import { GUEST_UDP_PORT } from './client.ts';
import {
  DEFAULT_PROBE_INTERVAL_MS,
  gapReport,
  gapThresholdFor,
  type DowntimeProbe,
  type ProbeOptions,
  type ProbeReport,
} from './probe.ts';

export interface UdpProbeOptions extends ProbeOptions {
  port?: number;
  /** Local address to send from (default: any). */
  bindAddress?: string;
}

export class UdpProbe implements DowntimeProbe {
  readonly kind = 'udp' as const;
  readonly ip: string;
  readonly port: number;
  readonly intervalMs: number;
  readonly gapThresholdMs: number;
  readonly #bindAddress: string | undefined;
  #sock: Socket | null = null;
  #timer: NodeJS.Timeout | null = null;
  #report: Promise<ProbeReport> | null = null;
  #t0 = 0;
  #seq = 0;
  #sentAt = new Map<number, number>();
  #replies: number[] = [];
  #rtts: number[] = [];
  #duplicates = 0;

  constructor(opts: UdpProbeOptions) {
    this.ip = opts.ip;
    this.port = opts.port ?? GUEST_UDP_PORT;
    this.intervalMs = opts.intervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.gapThresholdMs = opts.gapThresholdMs ?? gapThresholdFor(this.intervalMs);
    this.#bindAddress = opts.bindAddress;
  }

  get running(): boolean {
    return this.#sock !== null && this.#report === null;
  }

  async start(): Promise<void> {
    if (this.#sock) throw new FerryError('FERRY_E_INTERNAL', 'Probe already started.');
    const sock = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(
        { port: 0, ...(this.#bindAddress === undefined ? {} : { address: this.#bindAddress }) },
        () => {
          sock.off('error', reject);
          resolve();
        },
      );
    });
    // An unreachable guest answers with ICMP errors: they are lost probes, not a reason to stop.
    sock.on('error', () => undefined);
    sock.on('message', (msg, rinfo) => {
      if (rinfo.address !== this.ip || rinfo.port !== this.port) return;
      const m = /"probe":(\d+)/.exec(msg.toString('utf8'));
      if (!m) return;
      const seq = Number(m[1]);
      const sentAt = this.#sentAt.get(seq);
      if (sentAt === undefined) {
        if (seq < this.#seq) this.#duplicates++;
        return;
      }
      this.#sentAt.delete(seq);
      const now = performance.now();
      this.#replies.push(now - this.#t0);
      this.#rtts.push(now - sentAt);
    });
    this.#sock = sock;
    this.#t0 = performance.now();
    this.#send();
    this.#timer = setInterval(() => this.#send(), this.intervalMs);
  }

  #send(): void {
    const seq = this.#seq++;
    this.#sentAt.set(seq, performance.now());
    this.#sock?.send(`probe ${seq}`, this.port, this.ip);
  }

  stop(): Promise<ProbeReport> {
    const sock = this.#sock;
    if (!sock) return Promise.reject(new FerryError('FERRY_E_INTERNAL', 'Probe not started.'));
    this.#report ??= (async () => {
      if (this.#timer) clearInterval(this.#timer);
      this.#timer = null;
      const stoppedAt = performance.now() - this.#t0;
      await new Promise((r) => setTimeout(r, Math.max(20, 2 * this.intervalMs)));
      await new Promise<void>((resolve) => sock.close(() => resolve()));
      const seen = {
        sent: this.#seq,
        replyMs: this.#replies,
        duplicates: this.#duplicates,
        rtts: this.#rtts,
        durationMs: stoppedAt,
      };
      return gapReport('udp', seen, this.gapThresholdMs);
    })();
    return this.#report;
  }
}
