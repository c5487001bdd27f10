/**
 * The prediction before a live migration, in a real two-host lab through the real CLI: `ferry vm migrate
 * --dry-run` measures the busy guest's dirty rate and prints a prediction while starting nothing; the real
 * migration then keeps the prediction in its record beside what happened, and the next dry run between the
 * pair takes the link's bandwidth from that migration. Structure and sanity only, never timing tightness.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { MigrationJson, MigrationPlanJson } from '../../src/common/migration.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, type VmView } from './helpers.ts';

const h = new LabHarness('pr');
const { lab, dataRoot } = h;
/** Predicted and real may differ by this factor either way: a loose sanity bound, not a speed claim. */
const FACTOR = 20;

describe('the prediction before a live migration', { timeout: 300_000 }, () => {
  before(async () => {
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', lab, '--json'], 180_000);
    h.state = readLabState({ name: lab, dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    await h.ferryJson<VmView>(['vm', 'create', 'busy', '--memory', '128M', '--host', 'h1']);
    await h.guest('busy', ...'dirty start --mib 32 --rate 10'.split(' '));
  });

  after(() => h.down());

  it('a dry run predicts and starts nothing; the migration keeps its prediction beside what happened', async () => {
    const plan = await h.ferryJson<MigrationPlanJson>(['vm', 'migrate', 'busy', '--to', 'h2', '--dry-run']);
    assert.deepEqual([plan.vm, plan.source, plan.destination, plan.mode], ['busy', 'h1', 'h2', 'live']);
    const p = plan.prediction;
    assert.equal(typeof p.dirtyRateBytesPerSec, 'number', 'the dirty rate was measured');
    assert.equal(p.bandwidthSource, 'configured', 'no migration between the pair yet: the link capacity');
    assert.equal(p.strategy, 'precopy', p.reason);
    assert.equal(p.converges, true);
    assert.ok(p.totalMs !== null && p.totalMs > 0 && p.downtimeMs !== null && p.downtimeMs <= p.maxDowntimeMs);
    assert.equal(p.bytes, 128 * 2 ** 20);

    const human = await h.ferry(['vm', 'migrate', 'busy', '--to', 'h2', '--dry-run']);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /nothing started/);
    assert.match(human.stdout, /recommended +pre-copy as is/);

    assert.deepEqual(await h.ferryJson<MigrationJson[]>(['migration', 'list']), [], 'no job');
    const still = await h.vmShow('busy');
    assert.deepEqual([still.host, still.state], ['h1', 'running']);
    assert.equal(h.qemuPids('h2', 'busy').length, 0, 'nothing on the destination');

    const done = await h.ferryJson<MigrationJson>(['vm', 'migrate', 'busy', '--to', 'h2', '--wait']);
    assert.equal(done.state, 'completed', JSON.stringify(done.error));
    assert.equal((await h.guest<{ ok: boolean }>('busy', 'dirty', 'verify')).ok, true, 'memory pattern intact');
    // Made alongside the start: it may land a moment after the end.
    let m = done;
    for (let i = 0; i < 50 && m.prediction === null; i++) {
      await new Promise((r) => setTimeout(r, 200));
      m = await h.ferryJson<MigrationJson>(['migration', 'show', done.id]);
    }
    assert.ok(m.prediction, 'the record keeps the prediction');
    assert.equal(m.prediction.bandwidthSource, 'configured');
    assert.ok(m.prediction.totalMs !== null && m.totalMs !== null);
    const ratio = m.totalMs / m.prediction.totalMs;
    assert.ok(ratio > 1 / FACTOR && ratio < FACTOR, `real ${m.totalMs} ms against predicted ${m.prediction.totalMs} ms`);
    const shown = await h.ferry(['migration', 'show', done.id]);
    assert.match(shown.stdout, /prediction \(pre-copy as is\): total .* predicted, .* real; downtime .* predicted, .* real/);

    const back = await h.ferryJson<MigrationPlanJson>(['vm', 'migrate', 'busy', '--to', 'h1', '--dry-run']);
    assert.equal(back.prediction.bandwidthSource, 'measured', 'remembered from the migration between the pair');
    assert.match(back.prediction.bandwidthDetail, new RegExp(done.id));
    assert.ok(back.prediction.bandwidthBytesPerSec > 0);
    assert.equal((await h.ferryJson<MigrationJson[]>(['migration', 'list'])).length, 1, 'still the one job');
  });
});
