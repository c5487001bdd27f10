import { test } from 'node:test';
import assert from 'node:assert/strict';
import BetterSqlite3 from 'better-sqlite3';
import { migrate } from '../store/db.ts';
import { MIGRATIONS } from '../store/migrations.ts';
import { sqliteSync } from '../store/sync.ts';
import { JobStore } from './jobs.ts';
import { DEFAULT_POLICY } from '../../common/policy.ts';
import { FerryError } from '../../common/errors.ts';

function store(): { jobs: JobStore; events: string[] } {
  const sqlite = new BetterSqlite3(':memory:');
  const all = MIGRATIONS;
  migrate(sqlite, all);
  const events: string[] = [];
  return { jobs: new JobStore(sqliteSync(sqlite), (t) => events.push(t)), events };
}
const job = { vm: 'a1', source: 'h1', destination: 'h2', mode: 'live' as const, policy: DEFAULT_POLICY, why: null };
const code = (c: string) => (e: unknown) => e instanceof FerryError && e.code === c;

test('a transition is a compare-and-set: a stale `from` is refused and changes nothing', () => {
  const { jobs, events } = store();
  const j = jobs.create(job);
  jobs.transition(j.id, 'queued', 'preparing', { phase: 'prepare' });
  assert.throws(() => jobs.transition(j.id, 'queued', 'preparing'), code('FERRY_E_VM_STATE'));
  assert.equal(jobs.mustGet(j.id).state, 'preparing');
  assert.equal(jobs.mustGet(j.id).phase, 'prepare');
  assert.deepEqual(events, ['migration.created', 'migration.preparing']);
  jobs.update(j.id, { progress: null });
  jobs.update(j.id, { phase: 'perform' });
  assert.deepEqual(
    jobs.mustGet(j.id).timeline.map((e) => `${e.state}/${e.phase}`),
    ['queued/begin', 'preparing/prepare', 'preparing/perform'],
    'states and phases entered are on the timeline; progress samples are not',
  );
});

test('illegal edges are refused before touching the store', () => {
  const { jobs } = store();
  const j = jobs.create(job);
  assert.throws(() => jobs.transition(j.id, 'queued', 'completed'), code('FERRY_E_INTERNAL'));
  assert.equal(jobs.mustGet(j.id).state, 'queued');
});

test('at most one active migration per VM, enforced by the store; a finished one frees the VM', () => {
  const { jobs } = store();
  const j = jobs.create(job);
  assert.throws(() => jobs.create(job), code('FERRY_E_MIGRATION_ACTIVE'));
  jobs.create({ ...job, vm: 'other' });
  const done = jobs.transition(j.id, 'queued', 'failed', { error: { code: 'FERRY_E_MIGRATION_FAILED', message: 'x' } });
  assert.ok(done.finishedAt, 'a final state records when it ended');
  assert.deepEqual(done.error, { code: 'FERRY_E_MIGRATION_FAILED', message: 'x' });
  assert.equal(jobs.create(job).state, 'queued');
  assert.throws(() => jobs.requestCancel(j.id), code('FERRY_E_MIGRATION_FINISHED'), 'cancelling a job that ended is an error');
});

test('cancel is refused once post-copy has started; escalations accumulate', () => {
  const { jobs } = store();
  const j = jobs.create(job);
  jobs.transition(j.id, 'queued', 'preparing');
  jobs.transition(j.id, 'preparing', 'transferring');
  jobs.addEscalation(j.id, { at: 'now', step: { kind: 'postcopy', reason: 'stuck' } });
  jobs.transition(j.id, 'transferring', 'postcopy');
  assert.throws(() => jobs.requestCancel(j.id), code('FERRY_E_VM_STATE'));
  assert.equal(jobs.mustGet(j.id).escalations.length, 1);
});

test('with controllers sharing the store, a transition holds only in the term the lease row is in', () => {
  const sqlite = new BetterSqlite3(':memory:');
  migrate(sqlite, MIGRATIONS);
  sqlite.prepare("UPDATE controller_lease SET holder = 'c1', term = 1").run();
  let mine: number | undefined = 1;
  const jobs = new JobStore(sqliteSync(sqlite), () => {}, () => mine);
  const j = jobs.create(job);
  jobs.transition(j.id, 'queued', 'preparing');
  // c2 took the lease: c1, deposed but not knowing it yet, moves nothing.
  sqlite.prepare("UPDATE controller_lease SET holder = 'c2', term = 2").run();
  assert.throws(() => jobs.transition(j.id, 'preparing', 'failed'), code('FERRY_E_STALE_TERM'));
  mine = undefined;
  assert.throws(() => jobs.transition(j.id, 'preparing', 'failed'), code('FERRY_E_STALE_TERM'));
  assert.equal(jobs.mustGet(j.id).state, 'preparing');
  mine = 2;
  assert.throws(() => jobs.transition(j.id, 'queued', 'preparing'), code('FERRY_E_VM_STATE'), 'in its term, a stale `from` is still a state error');
  jobs.transition(j.id, 'preparing', 'failed');
});
