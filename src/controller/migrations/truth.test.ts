import { test } from 'node:test';
import assert from 'node:assert/strict';
import { emptyView } from '../../common/agent-migration.ts';
import { ACTIVE_STATES, type MigrationState } from '../../common/states.ts';
import type { AgentMigrationView, AgentStage } from '../../common/agent-migration.ts';
import { decide, type SideFacts, type Verdict } from './truth.ts';

function view(role: 'source' | 'destination', stage: AgentStage, more: Partial<AgentMigrationView> = {}): AgentMigrationView {
  return { ...emptyView({ id: 'm-1', role, vm: 'a1', stage, storage: 'shared', tls: true, uri: null }), ...more };
}
const silent: SideFacts = { reachable: false, view: null };
const unknown: SideFacts = { reachable: true, view: null };
const src = (stage: AgentStage, more: Partial<AgentMigrationView> = {}): SideFacts => ({ reachable: true, view: view('source', stage, more) });
const dst = (stage: AgentStage, more: Partial<AgentMigrationView> = {}): SideFacts => ({ reachable: true, view: view('destination', stage, more) });
/** A destination QEMU waiting paused (-S) with the incoming stream in `status`. */
const waiting = (status: string): SideFacts => dst('prepared', { qemuStatus: status, runState: status === 'completed' ? 'paused' : 'inmigrate' });
const gone: SideFacts = dst('prepared', { qemuStatus: null, runState: null });

const kind = (v: Verdict): string => (v.kind === 'wait' ? `wait:${v.state}` : v.kind === 'back' ? `back${v.receiptNeeded ? '+receipt' : ''}` : v.kind);

// Every active state a controller can find a job in, against the facts the agents can report. The
// expectation is the same in every state but post-copy: the agents' answers decide, not the job's row.
const cases: Array<[string, SideFacts, SideFacts, 'abort' | 'recover', string]> = [
  ['the destination runs the guest', src('completed', { qemuStatus: 'completed' }), dst('finished'), 'abort', 'forward'],
  ['the destination runs the guest, the source silent', silent, dst('finished'), 'recover', 'forward'],
  ['the source resumed already', src('resumed'), waiting('completed'), 'recover', 'back'],
  ['the destination discarded, the source had completed', src('completed', { qemuStatus: 'completed' }), dst('discarded'), 'recover', 'back+receipt'],
  ['the destination discarded, the source still sending', src('transferring', { qemuStatus: 'active' }), dst('discarded'), 'recover', 'back'],
  ['post-copy, the destination silent', src('postcopy', { postcopyStarted: true }), silent, 'abort', 'wait:awaiting_destination'],
  ['post-copy, the destination alive', src('postcopy', { postcopyStarted: true }), waiting('postcopy-active'), 'abort', 'forward'],
  ['post-copy, the destination QEMU gone', src('postcopy', { postcopyStarted: true }), gone, 'abort', 'lost'],
  ['completed, the destination silent (its agent killed)', src('completed', { qemuStatus: 'completed' }), silent, 'abort', 'wait:awaiting_destination'],
  ['completed, the destination holds the guest', src('completed', { qemuStatus: 'completed' }), waiting('completed'), 'recover', 'forward'],
  ['completed, aborting', src('completed', { qemuStatus: 'completed' }), waiting('completed'), 'abort', 'back+receipt'],
  ['completed, the destination QEMU killed', src('completed', { qemuStatus: 'completed' }), gone, 'recover', 'back+receipt'],
  ['completed, the destination never heard of it', src('completed', { qemuStatus: 'completed' }), unknown, 'recover', 'back+receipt'],
  ['the source silent, the destination complete', silent, waiting('completed'), 'recover', 'forward'],
  ['the source silent, the stream still arriving', silent, waiting('active'), 'recover', 'wait:awaiting_source'],
  ['the source silent, the destination QEMU gone', silent, gone, 'recover', 'back+receipt'],
  ['neither answers', silent, silent, 'recover', 'wait:awaiting_destination'],
  ['the source still sending, recovering', src('transferring', { qemuStatus: 'active' }), waiting('active'), 'recover', 'continue'],
  ['the source still mirroring, recovering', src('mirroring'), waiting('none'), 'recover', 'continue'],
  ['the source still sending, aborting', src('transferring', { qemuStatus: 'active' }), waiting('active'), 'abort', 'back'],
  ['the source failed (broken pipe)', src('failed', { qemuStatus: 'failed' }), gone, 'abort', 'back'],
  ['the source cancelled, the destination silent', src('cancelled', { qemuStatus: 'cancelled' }), silent, 'abort', 'back'],
  ['prepared, never performed', unknown, waiting('none'), 'recover', 'back'],
  ['never prepared', unknown, unknown, 'recover', 'back'],
];

for (const state of ACTIVE_STATES.filter((s) => s !== 'postcopy')) {
  test(`truth rule in state ${state}`, () => {
    for (const [what, source, destination, intent, want] of cases) {
      const got = kind(decide({ state, source, destination, intent }));
      assert.equal(got, want, `${state}: ${what} (${intent})`);
    }
  });
}

test('a job in post-copy never goes back to the source, whatever the source says', () => {
  const state: MigrationState = 'postcopy';
  for (const source of [silent, src('transferring'), src('failed'), src('completed', { qemuStatus: 'completed' })]) {
    for (const destination of [silent, waiting('postcopy-active'), waiting('postcopy-paused'), gone]) {
      const v = decide({ state, source, destination, intent: 'abort' });
      assert.notEqual(v.kind, 'back', JSON.stringify({ source, destination }));
      assert.notEqual(v.kind, 'continue');
    }
  }
});

test('a source that completed is never resumed without a receipt', () => {
  for (const state of ACTIVE_STATES.filter((s) => s !== 'postcopy')) {
    for (const destination of [silent, unknown, gone, waiting('completed'), waiting('active'), dst('discarded')]) {
      for (const intent of ['abort', 'recover'] as const) {
        const v = decide({ state, source: src('completed', { qemuStatus: 'completed' }), destination, intent });
        if (v.kind === 'back') assert.equal(v.receiptNeeded, true, `${state} ${intent} ${JSON.stringify(destination)}`);
        assert.notEqual(v.kind, 'continue');
      }
    }
  }
});
