/**
 * The fluid model of migrations on a fleet: each move holds a slot at its source (outbound) and its
 * destination (inbound) within the concurrency limits, and gets an equal share of both hosts' links
 * (capped by the move's own bandwidth); a live move progresses at its share less the guest's dirty rate,
 * a post-copy or cold one at its whole share. Pure and deterministic: the drain planner predicts with it,
 * `ferry sim` runs it over thousands of hosts, and the one-at-a-time baseline is the same model with
 * limits of 1.
 */

export const STRATEGIES = ['live', 'postcopy', 'cold', 'none'] as const;
/** `none`: the VM cannot move (no host takes it, or it cannot converge and may not pause or go cold). */
export type Strategy = (typeof STRATEGIES)[number];

/** Concurrency limits as plain data (the controller's queue enforces the same numbers once it has them). */
export interface Limits {
  outPerHost: number;
  inPerHost: number;
  cluster: number;
}

export const DEFAULT_LIMITS: Limits = { outPerHost: 2, inPerHost: 2, cluster: 5 };

/** Time a move spends before bytes flow (prepare, QEMU start, TLS), as measured in the lab. */
export const SETUP_MS = 1000;

export interface Move {
  vm: string;
  from: string;
  to: string;
  strategy: Exclude<Strategy, 'none'>;
  /** Memory plus local disks: what the move must send at least once. */
  bytes: number;
  dirtyBytesPerSec: number;
  /** The move's own cap in bytes/s; 0 = none. */
  capBytesPerSec: number;
}

export interface FluidResult {
  /** When each move ends, from the start, in ms (Infinity: it never converges under its share). */
  finishMs: Map<string, number>;
  makespanMs: number;
  /** The most moves that ran at once. */
  peakConcurrency: number;
}

interface Active {
  m: Move;
  remaining: number;
  setupLeftMs: number;
}

/** Bytes a move sends beyond its first pass: what post-copy pulls of the pages dirtied meanwhile. */
export function bytesToSend(m: Pick<Move, 'strategy' | 'bytes' | 'dirtyBytesPerSec'>, shareBytesPerSec: number): number {
  if (m.strategy !== 'postcopy') return m.bytes;
  return m.bytes + Math.min(m.bytes, (m.dirtyBytesPerSec * m.bytes) / Math.max(1, shareBytesPerSec));
}

/** A move's time alone on its links at this share (ms; Infinity when pre-copy cannot converge). */
export function isolatedMs(m: Pick<Move, 'strategy' | 'bytes' | 'dirtyBytesPerSec'>, shareBytesPerSec: number): number {
  const progress = m.strategy === 'live' ? shareBytesPerSec - m.dirtyBytesPerSec : shareBytesPerSec;
  if (progress <= 0) return Infinity;
  return SETUP_MS + (bytesToSend(m, shareBytesPerSec) / progress) * 1000;
}

/**
 * Runs the moves in the order given, each starting as soon as the limits allow (a later move whose hosts
 * are free may pass one that waits), until all ended. `linkOf` is a host's link capacity in bytes/s.
 */
export function simulate(moves: readonly Move[], linkOf: (host: string) => number, limits: Limits): FluidResult {
  const pending = [...moves];
  const active: Active[] = [];
  const out = new Map<string, number>();
  const inn = new Map<string, number>();
  const finishMs = new Map<string, number>();
  let now = 0;
  let peak = 0;
  const inc = (m: Map<string, number>, k: string, d: number): void => {
    m.set(k, (m.get(k) ?? 0) + d);
  };
  for (;;) {
    for (let i = 0; i < pending.length && active.length < limits.cluster; ) {
      const m = pending[i]!;
      if ((out.get(m.from) ?? 0) < limits.outPerHost && (inn.get(m.to) ?? 0) < limits.inPerHost) {
        pending.splice(i, 1);
        inc(out, m.from, 1);
        inc(inn, m.to, 1);
        active.push({ m, remaining: -1, setupLeftMs: SETUP_MS });
      } else i++;
    }
    peak = Math.max(peak, active.length);
    if (active.length === 0) break;
    const shareOf = (a: Active): number => {
      const s = Math.min(linkOf(a.m.from) / (out.get(a.m.from) ?? 1), linkOf(a.m.to) / (inn.get(a.m.to) ?? 1));
      return a.m.capBytesPerSec > 0 ? Math.min(s, a.m.capBytesPerSec) : s;
    };
    const progressOf = (a: Active): number => {
      const share = shareOf(a);
      return a.m.strategy === 'live' ? share - a.m.dirtyBytesPerSec : share;
    };
    // The next event: a setup ends, or a move sends its last byte.
    let dt = Infinity;
    for (const a of active) {
      if (a.setupLeftMs > 0) dt = Math.min(dt, a.setupLeftMs);
      else {
        if (a.remaining < 0) a.remaining = bytesToSend(a.m, shareOf(a));
        const p = progressOf(a);
        if (p > 0) dt = Math.min(dt, (a.remaining / p) * 1000);
      }
    }
    if (dt === Infinity) {
      // Every running move is a pre-copy that cannot converge at its share: they never end.
      for (const a of active) finishMs.set(a.m.vm, Infinity);
      for (const m of pending) finishMs.set(m.vm, Infinity);
      return { finishMs, makespanMs: Infinity, peakConcurrency: peak };
    }
    now += dt;
    for (let i = active.length - 1; i >= 0; i--) {
      const a = active[i]!;
      if (a.setupLeftMs > 0) {
        a.setupLeftMs -= dt;
        if (a.setupLeftMs <= 1e-6) a.setupLeftMs = 0;
        continue;
      }
      a.remaining -= (Math.max(0, progressOf(a)) * dt) / 1000;
      if (a.remaining <= 1) {
        finishMs.set(a.m.vm, now);
        active.splice(i, 1);
        inc(out, a.m.from, -1);
        inc(inn, a.m.to, -1);
      }
    }
  }
  return { finishMs, makespanMs: now, peakConcurrency: peak };
}

/** The floor no schedule beats: each source host must push its bytes through its own link. */
export function lowerBoundMs(moves: readonly Move[], linkOf: (host: string) => number): number {
  const perHost = new Map<string, number>();
  for (const m of moves) perHost.set(m.from, (perHost.get(m.from) ?? 0) + m.bytes);
  let worst = 0;
  for (const [h, bytes] of perHost) worst = Math.max(worst, (bytes / linkOf(h)) * 1000);
  return worst;
}
