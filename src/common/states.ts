/**
 * The migration job's states and phases: data, not code. The controller changes a job's state only through
 * its guarded transition (an SQL compare-and-set on `state`), and only along the edges listed here.
 *
 * ```mermaid
 * stateDiagram-v2
 *   [*] --> queued
 *   queued --> preparing
 *   queued --> cancelled
 *   queued --> failed
 *   preparing --> transferring
 *   transferring --> postcopy
 *   transferring --> switching
 *   postcopy --> switching
 *   switching --> completed
 *   preparing --> failed
 *   transferring --> failed
 *   postcopy --> failed
 *   switching --> failed
 *   preparing --> cancelled
 *   transferring --> cancelled
 *   preparing --> awaiting_source
 *   preparing --> awaiting_destination
 *   transferring --> awaiting_source
 *   transferring --> awaiting_destination
 *   postcopy --> awaiting_destination
 *   switching --> awaiting_destination
 *   switching --> awaiting_source
 *   awaiting_source --> awaiting_destination
 *   awaiting_destination --> awaiting_source
 *   awaiting_source --> transferring
 *   awaiting_source --> postcopy
 *   awaiting_source --> switching
 *   awaiting_destination --> postcopy
 *   awaiting_destination --> switching
 *   awaiting_source --> failed
 *   awaiting_destination --> failed
 *   awaiting_source --> cancelled
 *   awaiting_destination --> cancelled
 *   completed --> [*]
 *   failed --> [*]
 *   cancelled --> [*]
 * ```
 *
 * Who is the truth (src/controller/migrations/truth.ts decides, from what both agents answer):
 * - `queued`, `preparing`, `transferring` (pre-copy, the source QEMU not `completed`): the source. A
 *   failure resumes it; the destination (started paused, `-S`) is discarded.
 * - From the moment the source QEMU reports `completed`, or post-copy began: no longer the source alone.
 *   The source resumes only against the destination's signed discard receipt; the destination runs the
 *   guest only when finish says so; `postcopy` and `switching` cannot be cancelled.
 * - `awaiting_destination` / `awaiting_source`: the outcome depends on an agent that does not answer. The
 *   job waits (retrying with backoff) and rolls forward if the destination holds the complete guest,
 *   back if it discarded its copy or never had one. Nothing runs the guest twice meanwhile: the
 *   destination waits paused, the source waits for a receipt.
 * - After post-copy began the destination is the truth; if it dies the guest is lost (FERRY_E_POSTCOPY_LOST).
 */

export const MIGRATION_STATES = [
  'queued',
  'preparing',
  'transferring',
  'postcopy',
  'switching',
  'awaiting_destination',
  'awaiting_source',
  'completed',
  'failed',
  'cancelled',
] as const;
export type MigrationState = (typeof MIGRATION_STATES)[number];

export const FINAL_STATES: readonly MigrationState[] = ['completed', 'failed', 'cancelled'];
export const ACTIVE_STATES: readonly MigrationState[] = [
  'queued',
  'preparing',
  'transferring',
  'postcopy',
  'switching',
  'awaiting_destination',
  'awaiting_source',
];
/** The states in which a job waits for an agent that does not answer. */
export const AWAITING_STATES = ['awaiting_destination', 'awaiting_source'] as const;
export type AwaitingState = (typeof AWAITING_STATES)[number];

export const TRANSITIONS: Readonly<Record<MigrationState, readonly MigrationState[]>> = {
  queued: ['preparing', 'cancelled', 'failed'],
  preparing: ['transferring', 'failed', 'cancelled', 'awaiting_source', 'awaiting_destination'],
  transferring: ['postcopy', 'switching', 'failed', 'cancelled', 'awaiting_source', 'awaiting_destination'],
  postcopy: ['switching', 'failed', 'awaiting_destination'],
  switching: ['completed', 'failed', 'awaiting_destination', 'awaiting_source'],
  awaiting_source: ['awaiting_destination', 'transferring', 'postcopy', 'switching', 'failed', 'cancelled'],
  awaiting_destination: ['awaiting_source', 'postcopy', 'switching', 'failed', 'cancelled'],
  completed: [],
  failed: [],
  cancelled: [],
};

export function isFinal(s: MigrationState): boolean {
  return FINAL_STATES.includes(s);
}

export function canTransition(from: MigrationState, to: MigrationState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** libvirt's v3 protocol, in order; a job records the phase it is in (and failed in). */
export const PHASES = ['begin', 'prepare', 'perform', 'finish', 'confirm'] as const;
export type MigrationPhase = (typeof PHASES)[number];

export const MIGRATION_MODES = ['live', 'cold'] as const;
export type MigrationMode = (typeof MIGRATION_MODES)[number];
