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
  prediction: { totalMs: number | null; downtimeMs: number | null; converges: boolean | null } | null;
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
