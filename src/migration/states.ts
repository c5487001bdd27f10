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
 *   completed --> [*]
 *   failed --> [*]
 *   cancelled --> [*]
 * ```
 * Before post-copy starts the source is the truth; from `postcopy` on, the destination is, and a cancel is no
 * longer possible (a failure then loses the guest: post-copy is used only when the policy allows it).
 */

export const MIGRATION_STATES = [
  'queued',
  'preparing',
  'transferring',
  'postcopy',
  'switching',
  'completed',
  'failed',
  'cancelled',
] as const;
export type MigrationState = (typeof MIGRATION_STATES)[number];

export const FINAL_STATES: readonly MigrationState[] = ['completed', 'failed', 'cancelled'];
export const ACTIVE_STATES: readonly MigrationState[] = ['queued', 'preparing', 'transferring', 'postcopy', 'switching'];

export const TRANSITIONS: Readonly<Record<MigrationState, readonly MigrationState[]>> = {
  queued: ['preparing', 'cancelled', 'failed'],
  preparing: ['transferring', 'failed', 'cancelled'],
  transferring: ['postcopy', 'switching', 'failed', 'cancelled'],
  postcopy: ['switching', 'failed'],
  switching: ['completed', 'failed'],
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
