/**
 * The truth rule, in one place: given what each agent answers about a migration (or that it does not
 * answer), which copy of the guest is the one that must live. Every path that ends a job abnormally —
 * a failure, a cancel, a fault, a controller restart — asks `decide` and does what it says; nothing else
 * resumes a source or lets a destination run. A pure function, so every state and phase in which a
 * controller can find a job is a unit test (truth.test.ts).
 *
 * The rule:
 * 1. A destination that ran the guest (finished, or post-copy running there) is the truth: forward.
 * 2. A source that resumed, or a destination that discarded its copy: back.
 * 3. After post-copy began the destination is the truth; if its QEMU is gone the guest is lost.
 * 4. A source QEMU that reported `completed` gave the guest away: forward if the destination holds the
 *    complete guest, back (against its signed discard receipt) if it has none; wait while it is silent.
 * 5. A silent source: forward if the destination holds the complete guest, back if it has none, wait while
 *    the stream may still be arriving.
 * 6. A source still migrating: go on (recovery) or stop it (abort); it failed or was cancelled: back.
 */
import type { AgentMigrationView } from '../../common/agent-migration.ts';
import type { AwaitingState, MigrationState } from '../../common/states.ts';

/** What one agent says about the migration: `reachable: false` when it did not answer at all. */
export interface SideFacts {
  reachable: boolean;
  /** The agent's view; null when it answered that it knows no such migration. */
  view: AgentMigrationView | null;
}

export interface TruthInput {
  state: MigrationState;
  source: SideFacts;
  destination: SideFacts;
  /**
   * `abort`: the controller wants the migration to end without moving the guest (a failure, a cancel, a
   * deadline) — but it ends forward all the same when the destination already holds the guest and the
   * source no longer can. `recover`: it does not know how things stand (a restart, a silent agent) and
   * goes on with the migration when it still runs.
   */
  intent: 'abort' | 'recover';
}

export type Verdict =
  /** The destination holds the guest: let it run (finish), then let the source go (confirm). */
  | { kind: 'forward'; why: string }
  /** The source stays the truth: discard the destination, resume the source (needing a receipt or not). */
  | { kind: 'back'; receiptNeeded: boolean; why: string }
  /** The migration still runs on the source: keep following it. */
  | { kind: 'continue'; why: string }
  /** Nobody can say yet: park the job in `state` and ask again later. */
  | { kind: 'wait'; state: AwaitingState; why: string }
  /** Post-copy began and the destination's copy is gone: nothing holds the whole guest any more. */
  | { kind: 'lost'; why: string };

const RUNNING_SOURCE_STAGES = new Set(['mirroring', 'transferring', 'postcopy']);

export function decide(f: TruthInput): Verdict {
  const src = f.source.view;
  const dst = f.destination.view;
  const dstAnswered = f.destination.reachable;
  const dstQemu = dstAnswered && dst !== null && dst.runState !== null && dst.stage !== 'discarded';
  const dstComplete = dstQemu && dst.qemuStatus === 'completed';
  const postcopy =
    f.state === 'postcopy' ||
    src?.postcopyStarted === true ||
    dst?.postcopyStarted === true ||
    dst?.stage === 'postcopy' ||
    (dst?.qemuStatus ?? '').startsWith('postcopy');
  const srcCompleted = src !== null && (src.stage === 'completed' || src.stage === 'confirmed' || src.qemuStatus === 'completed');

  // 1 and 2: a side that already acted on its verdict decides.
  if (dst?.stage === 'finished' || dst?.stage === 'postcopy') return { kind: 'forward', why: `the destination runs the guest (${dst.stage})` };
  if (src?.stage === 'resumed') return { kind: 'back', receiptNeeded: false, why: 'the source resumed the guest' };
  if (dst?.stage === 'discarded') return { kind: 'back', receiptNeeded: srcCompleted, why: 'the destination discarded its copy' };

  // 3: post-copy.
  if (postcopy) {
    if (!dstAnswered) return { kind: 'wait', state: 'awaiting_destination', why: 'post-copy began and the destination does not answer' };
    if (dstQemu) return { kind: 'forward', why: 'post-copy began: the destination is the truth' };
    return { kind: 'lost', why: 'post-copy began and the destination QEMU is gone' };
  }

  // 4: the source handed the guest over.
  if (srcCompleted) {
    if (!dstAnswered) return { kind: 'wait', state: 'awaiting_destination', why: 'the source QEMU completed and the destination does not answer' };
    if (dstComplete && f.intent === 'recover') return { kind: 'forward', why: 'the source QEMU completed and the destination holds the complete guest' };
    if (dstComplete) {
      // Aborting still works here: the destination has not run the guest, so discarding it loses nothing.
      return { kind: 'back', receiptNeeded: true, why: 'aborted after the source QEMU completed: the destination discards its complete copy' };
    }
    return { kind: 'back', receiptNeeded: true, why: 'the source QEMU completed but the destination holds no complete guest' };
  }

  // 5: a silent source.
  if (!f.source.reachable) {
    if (!dstAnswered) return { kind: 'wait', state: 'awaiting_destination', why: 'neither agent answers' };
    if (dstComplete) return { kind: 'forward', why: 'the source does not answer and the destination holds the complete guest' };
    const incoming = dst?.qemuStatus ?? 'none';
    if (dstQemu && (incoming === 'active' || incoming === 'setup' || incoming === 'device' || incoming === 'none')) {
      return { kind: 'wait', state: 'awaiting_source', why: `the source does not answer and the stream to the destination is ${incoming}` };
    }
    // The destination has no guest (its QEMU died or the stream failed): whatever the source QEMU did, the
    // signed discard lets it resume once its agent answers.
    return { kind: 'back', receiptNeeded: true, why: 'the source does not answer and the destination holds no guest' };
  }

  // 6: the source answers and has not completed.
  if (src !== null && RUNNING_SOURCE_STAGES.has(src.stage)) {
    if (f.intent === 'recover') return { kind: 'continue', why: `the source is still ${src.stage}` };
    return { kind: 'back', receiptNeeded: false, why: `stopped while the source was ${src.stage}` };
  }
  return { kind: 'back', receiptNeeded: false, why: src === null ? 'the source never started sending' : `the source is ${src.stage}` };
}
