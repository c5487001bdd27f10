/**
 * The fault matrix (issue #7), one repetition of every cell: points of a live migration × faults
 * (src/testing/faults.ts), each followed by the invariants checked on the hosts (src/testing/invariants.ts):
 * the guest runs on exactly one host, same boot id, memory intact, job final with its error code, nothing
 * left behind, the store agrees. Two labs run the cells side by side (two cells at a time, each in a lab of
 * its own, one VM per lab reused across its cells): every cell starts with a migration of the VM the
 * previous cell of that lab left, so "it migrates again" is checked by the next cell, and once more at the
 * end of each lab. `npm run test:faults -- --reps N` runs the matrix N times (checking the extra migration
 * after every cell) and writes docs/reliability.md.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { TestCluster } from '../../src/testing/cluster.ts';
import { MATRIX, cellName } from '../../src/testing/faults.ts';
import { checkMigratesAgain } from '../../src/testing/invariants.ts';
import { createVm, reliabilityReport, runCell, type CellOutcome, type VmUnderTest } from '../../src/testing/matrix.ts';

/** A lab and the VM its cells move, lent to one cell at a time. */
interface Lane {
  cluster: TestCluster;
  vm: VmUnderTest | null;
  busy: boolean;
}

const lanes: Lane[] = [new TestCluster('fa'), new TestCluster('fb')].map((cluster) => ({ cluster, vm: null, busy: false }));
const outcomes: CellOutcome[] = [];
const t0 = Date.now();

async function borrow(): Promise<Lane> {
  for (;;) {
    const free = lanes.find((l) => !l.busy);
    if (free) {
      free.busy = true;
      return free;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('fault matrix: one repetition of every cell', { timeout: 40 * 60_000, concurrency: lanes.length }, () => {
  before(async () => {
    for (const lane of lanes) {
      await lane.cluster.up(2);
      lane.vm = await createVm(lane.cluster, 1);
    }
  });

  after(async () => {
    try {
      for (const lane of lanes) await lane.cluster.down();
    } finally {
      // The same report `npm run test:faults` writes, from this one repetition, when asked for.
      const out = process.env.FERRY_RELIABILITY_OUT;
      if (out) writeFileSync(out, reliabilityReport(outcomes, { reps: 1, totalMs: Date.now() - t0, source: 'test/integration/faults.test.ts (FERRY_RELIABILITY_OUT)' }));
      console.log(
        `# cells:\n${outcomes.map((o) => `#   ${o.cell}: ${o.state ?? 'not final'}${o.errorCode ? ` ${o.errorCode}` : ''} on ${o.endedOn ?? '-'} in ${Math.round(o.durationMs / 100) / 10} s${o.violations.length ? ` — ${o.violations.length} broken` : ''}`).join('\n')}`,
      );
    }
  });

  for (const cell of MATRIX) {
    it(cellName(cell), { timeout: 6 * 60_000 }, async () => {
      const lane = await borrow();
      try {
        assert.ok(lane.vm, 'the VM under test was created');
        const r = await runCell({ cluster: lane.cluster, vm: lane.vm, cell, rep: 1, remigrate: false, log: (l) => console.log(`# ${l}`) });
        lane.vm = r.vm;
        outcomes.push(r.outcome);
        assert.equal(r.outcome.missed, null, `${cellName(cell)}: point not reached: ${r.outcome.missed}`);
        assert.deepEqual(
          r.outcome.violations.map((v) => v.message),
          [],
          `${cellName(cell)}: ${r.outcome.violations.length} invariant(s) broken`,
        );
      } finally {
        lane.busy = false;
      }
    });
  }

  it('each lab\'s VM migrates again after its last cell', async () => {
    // Queued last: wait for the cells still running (each lane is taken once it is free).
    const all: Lane[] = [];
    for (let i = 0; i < lanes.length; i++) all.push(await borrow());
    for (const lane of all) {
      assert.ok(lane.vm);
      const again = await checkMigratesAgain(lane.cluster, 'after the matrix', lane.vm.name, lane.vm.bootId);
      assert.deepEqual(again.violations.map((v) => v.message), []);
    }
  });
});
