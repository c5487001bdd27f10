/**
 * The guest-downtime probe: one contract, two ways of asking a guest "are you there?" every ~10 ms from the
 * VM network's side while it migrates — UDP to the tiny guest's ferry-guest (udp-probe.ts) and ICMP echo to
 * any guest with an address (icmp-probe.ts). The longest time without an answer is the outage the guest's
 * clients saw (QEMU's own `downtime` counts only the stop-and-copy, not the network catching up). Which one
 * a VM gets is decided here, from its spec; the gap arithmetic is here too, so both report alike.
 */
import type { GuestProbe } from '../common/migration.ts';
import type { VmSpec } from '../common/spec.ts';

export interface ProbeGap {
  /** Milliseconds since start() of the last reply before the gap and the first after it. */
  fromMs: number;
  toMs: number;
  ms: number;
}

export interface ProbeReport {
  probe: GuestProbe;
  sent: number;
  /** Distinct replies (a duplicate answer to the same probe counts once, in `duplicates`). */
  received: number;
  duplicates: number;
  durationMs: number;
  /**
   * The longest time without a reply once the guest had answered: between two replies, or from the last
   * reply to stop() when the guest had not come back by then. Null when fewer than two replies came and
   * nothing can be said (never 0 for a guest that did not answer).
   */
  longestGapMs: number | null;
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

export interface DowntimeProbe {
  readonly kind: GuestProbe;
  /** The guest's address. */
  readonly ip: string;
  readonly running: boolean;
  start(): Promise<void>;
  /** Stops probing (waiting a moment for replies in flight) and reports; again, the same report. */
  stop(): Promise<ProbeReport>;
}

export interface ProbeOptions {
  ip: string;
  /** Default 10 ms. */
  intervalMs?: number;
  /** Intervals between replies longer than this are listed in `gaps` (default max(50, 5 × interval)). */
  gapThresholdMs?: number;
}

export const DEFAULT_PROBE_INTERVAL_MS = 10;

export const gapThresholdFor = (intervalMs: number): number => Math.max(50, 5 * intervalMs);

/**
 * The probe for a VM: its tiny guest's ferry-guest (it has the guest channel) answers UDP; any other guest
 * is asked with ICMP echo, which every IP stack answers unless a firewall drops it (then: null, not 0).
 */
export function probeKindFor(spec: Pick<VmSpec, 'guestChannel'>): GuestProbe {
  return spec.guestChannel ? 'udp' : 'icmp';
}

/** The address to probe: the one the controller reserved for the VM, else one its spec gives a NIC. */
export function probeAddress(reservedIp: string | null, spec: Pick<VmSpec, 'nics'>): string | null {
  const cidr = reservedIp ?? spec.nics.find((n) => n.ip !== undefined)?.ip ?? null;
  return cidr === null ? null : cidr.split('/')[0]!;
}

const round = (n: number): number => Math.round(n * 10) / 10;

/**
 * The report from what a probe saw: `replyMs` are the arrival times of distinct replies in ms since start
 * (any order: sorted here), `durationMs` when probing stopped, `rtts` the replies' round trips.
 */
export function gapReport(
  probe: GuestProbe,
  seen: {
    sent: number;
    replyMs: readonly number[];
    duplicates: number;
    rtts: readonly number[];
    durationMs: number;
  },
  gapThresholdMs: number,
): ProbeReport {
  const t = [...seen.replyMs].sort((a, b) => a - b);
  let longest: number | null = t.length >= 2 ? 0 : null;
  const gaps: ProbeGap[] = [];
  for (let i = 1; i < t.length; i++) {
    const d = t[i]! - t[i - 1]!;
    if (d > longest!) longest = d;
    if (d > gapThresholdMs) gaps.push({ fromMs: round(t[i - 1]!), toMs: round(t[i]!), ms: round(d) });
  }
  const tail = t.length > 0 ? Math.max(0, seen.durationMs - t[t.length - 1]!) : null;
  if (longest !== null && tail! > longest) longest = tail;
  const rtts = [...seen.rtts].sort((a, b) => a - b);
  const q = (p: number): number => round(rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))]!);
  return {
    probe,
    sent: seen.sent,
    received: t.length,
    duplicates: seen.duplicates,
    durationMs: round(seen.durationMs),
    longestGapMs: longest === null ? null : round(longest),
    gaps,
    gapThresholdMs,
    firstReplyMs: t.length > 0 ? round(t[0]!) : null,
    tailGapMs: tail === null ? null : round(tail),
    rttMs: rtts.length > 0 ? { p50: q(0.5), p99: q(0.99), max: round(rtts[rtts.length - 1]!) } : null,
  };
}
