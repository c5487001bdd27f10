/**
 * A migration as the API and the CLI show it (`GET /api/v1/migrations/:id`, `ferry migration show --json`).
 * Field names are a contract for scripts and the web console: add fields, never rename them.
 */
import Type, { type Static } from 'typebox';
import type { MigrationMode, MigrationPhase, MigrationState } from './states.ts';
import type { MigrationPolicy, Escalation } from './policy.ts';

/** A migration's progress; also what an agent reports in its view (agent-migration.ts), so a schema. */
export const MigrationProgress = Type.Object({
  /** 0–100, over memory and (when copied) disks. */
  percent: Type.Number(),
  transferredBytes: Type.Number(),
  totalBytes: Type.Number(),
  remainingBytes: Type.Number(),
  /** Smoothed transfer rate. */
  rateBytesPerSec: Type.Number(),
  /** How fast the guest dirties memory (QEMU's dirty-pages-rate × page size). */
  dirtyRateBytesPerSec: Type.Number(),
  /** Pre-copy pass (QEMU's dirty-sync-count). */
  pass: Type.Number(),
  /** Honest remaining time; null while unknown or when not converging. */
  etaMs: Type.Union([Type.Number(), Type.Null()]),
  converges: Type.Union([Type.Boolean(), Type.Null()]),
  /** Disk mirror progress when storage is copied. */
  disk: Type.Union([Type.Object({ transferredBytes: Type.Number(), totalBytes: Type.Number(), ready: Type.Boolean() }), Type.Null()]),
  sampledAt: Type.String(),
});
export type MigrationProgress = Static<typeof MigrationProgress>;

/** What a prediction recommends (src/controller/fleet/predict.ts says when each one is chosen). */
export const PREDICTED_STRATEGIES = ['precopy', 'auto-converge', 'postcopy', 'cold', 'cannot-converge'] as const;
/** Where the bandwidth a prediction used came from. */
export const BANDWIDTH_SOURCES = ['measured', 'configured', 'default'] as const;

const NullableNum = Type.Union([Type.Number(), Type.Null()]);

/**
 * A prediction made before a migration starts (`ferry vm migrate --dry-run`, and kept in the record of a
 * real one as `prediction`, so a user sees predicted against real): the dirty rate measured now, the link
 * bandwidth between the two hosts and where it came from, the fleet model's times, and a strategy.
 */
export const MigrationPrediction = Type.Object({
  /** When it was made. */
  at: Type.String(),
  /** End to end with the recommended strategy; null when it cannot converge. */
  totalMs: NullableNum,
  /** The guest's pause with the recommended strategy (at most the budget); null when it cannot converge. */
  downtimeMs: NullableNum,
  /** Whether pre-copy as requested (no throttle, no post-copy) converges within the downtime budget. */
  converges: Type.Union([Type.Boolean(), Type.Null()]),
  strategy: Type.Enum(PREDICTED_STRATEGIES),
  /** Why, in words, with the figures. */
  reason: Type.String(),
  /** Memory plus copied disks: what must be sent at least once. */
  bytes: Type.Number(),
  /** Measured now by QEMU (calc-dirty-rate); null when the VM's agent could not say (planned as idle). */
  dirtyRateBytesPerSec: NullableNum,
  /** The rate the model sends at: the link's, capped by the request's --bandwidth. */
  bandwidthBytesPerSec: Type.Number(),
  bandwidthSource: Type.Enum(BANDWIDTH_SOURCES),
  /** Where the bandwidth came from, in words (which migrations, which setting). */
  bandwidthDetail: Type.String(),
  /** The guest's downtime budget the prediction judged against (--max-downtime). */
  maxDowntimeMs: Type.Number(),
});
export type MigrationPrediction = Static<typeof MigrationPrediction>;

/** A dry run's answer (`ferry vm migrate --dry-run`): where the VM would go and the prediction; nothing started. */
export interface MigrationPlanJson {
  vm: string;
  source: string;
  destination: string;
  mode: MigrationMode;
  why: { host: string; accepted: boolean; reason: string; freeMemoryBytes?: number }[] | null;
  prediction: MigrationPrediction;
}

/**
 * How a guest's downtime was seen from outside it (src/guest/probe.ts): `udp`, Ferry's tiny guest answering
 * its ferry-guest probe; `icmp`, ICMP echo to any guest with an address on the VM network.
 */
export const GUEST_PROBES = ['udp', 'icmp'] as const;
export type GuestProbe = (typeof GUEST_PROBES)[number];

export interface EscalationRecord {
  at: string;
  step: Escalation;
}

/**
 * What a host had to do about one base image of the VM before it could run it (issue #9): `present` it had
 * its copy, `fetched` the controller streamed the image to it first (`bytes` moved; 0 when present).
 */
export interface ImageTransfer {
  name: string;
  sha256: string;
  action: 'present' | 'fetched';
  bytes: number;
}

/**
 * A change made to a running job from outside its policy: the user's (`ferry migration set | postcopy |
 * complete`) or the queue's, when a link's share changes as jobs start and end.
 */
export interface SteeringRecord {
  at: string;
  action: 'set' | 'postcopy' | 'complete' | 'share';
  /** What changed, in words (`bandwidth 8.0 MiB/s, max downtime 300 ms`). */
  detail: string;
  bandwidthBytesPerSec?: number;
  maxDowntimeMs?: number;
}

export interface MigrationJson {
  id: string;
  vm: string;
  source: string;
  destination: string;
  mode: MigrationMode;
  state: MigrationState;
  phase: MigrationPhase;
  /** QEMU's own migration status string, verbatim (`active`, `device`, `completed`, ...). */
  qemuStatus: string | null;
  policy: MigrationPolicy;
  /** The prediction made when it was requested (measured just after), null while it is being made or when none could be. */
  prediction: MigrationPrediction | null;
  startedAt: string;
  finishedAt: string | null;
  /** End to end, from the request to the end of confirm, as Ferry measured it. */
  totalMs: number | null;
  /** QEMU's own total-time of the transfer. */
  qemuTotalMs: number | null;
  /** QEMU-reported downtime (live); for a cold move the whole pause, save to restore, as Ferry measured it. */
  downtimeMs: number | null;
  /**
   * Longest time the guest did not answer a probe sent every ~10 ms from outside it (the VM network's side);
   * null when no probe ran or the guest never answered.
   */
  guestDowntimeMs: number | null;
  /** Which probe measured `guestDowntimeMs`; null when none ran. */
  guestDowntimeProbe: GuestProbe | null;
  memoryBytes: number | null;
  transferredBytes: number | null;
  iterations: number | null;
  escalations: EscalationRecord[];
  progress: MigrationProgress | null;
  /** Why the destination was chosen (when the scheduler chose it). */
  why: { host: string; accepted: boolean; reason: string; freeMemoryBytes?: number }[] | null;
  error: { code: string; message: string } | null;
  /** Every state and phase the job entered, with the time: where the end-to-end time went. */
  timeline: { at: string; state: MigrationState; phase: MigrationPhase }[];
  /** In `awaiting_destination` / `awaiting_source`: whom the job waits for, since when, and why. */
  waiting: { host: string; role: 'source' | 'destination'; since: string; attempts: number; why: string } | null;
  /** The store images the VM's disks sit on, and whether the destination had them or fetched them first. */
  images: ImageTransfer[];
  /** Agent calls still owed after the verdict (a discard, confirm or resume whose agent did not answer yet). */
  pending: { host: string; action: string; attempts: number; nextAt: string; lastError: string | null }[];
  /** Higher starts first in the queue; 0 by default (`--priority`). */
  priority: number;
  /** While `queued`: its place (1 = next) and the limit it waits for, e.g. "outbound limit of h1 (2/2)". */
  queue: { position: number; reason: string; since: string } | null;
  /** Steering applied to it, in order (src/controller/migrations/steering.ts). */
  actions: SteeringRecord[];
  /** What QEMU runs it with now: max-bandwidth (0 = unlimited) and the downtime limit, as the source reports them. */
  tuning: { bandwidthBytesPerSec: number | null; downtimeLimitMs: number | null } | null;
}

/** The figures of a migration that reports and benchmarks quote (one place, so they agree). */
export type MigrationFigures = Pick<
  MigrationJson,
  'totalMs' | 'qemuTotalMs' | 'downtimeMs' | 'guestDowntimeMs' | 'transferredBytes' | 'iterations'
>;

export function migrationFigures(m: MigrationJson): MigrationFigures {
  return {
    totalMs: m.totalMs,
    qemuTotalMs: m.qemuTotalMs,
    downtimeMs: m.downtimeMs,
    guestDowntimeMs: m.guestDowntimeMs,
    transferredBytes: m.transferredBytes,
    iterations: m.iterations,
  };
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
