/**
 * The fault matrix (issue #7), one repetition of every cell: points of a live migration × faults
 * (src/testing/faults.ts), each followed by the invariants checked on the hosts (src/testing/invariants.ts):
 * the guest runs on exactly one host, same boot id, memory intact, job final with its error code, nothing
 * left behind, the store agrees, and it migrates again. One lab, one VM reused across cells (a fresh one
 * only after a cell broke it). `npm run test:faults -- --reps N` runs it N times and writes
 * docs/reliability.md.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TestCluster } from '../../src/testing/cluster.ts';
import { MATRIX, cellName } from '../../src/testing/faults.ts';
import { writeFileSync } from 'node:fs';
import { createVm, reliabilityReport, runCell, type CellOutcome, type VmUnderTest } from '../../src/testing/matrix.ts';

const cluster = new TestCluster('fx');
const outcomes: CellOutcome[] = [];
const t0 = Date.now();
let vm: VmUnderTest | null = null;

describe('fault matrix: one repetition of every cell', { timeout: 40 * 60_000 }, () => {
  before(async () => {
    await cluster.up(2);
    vm = await createVm(cluster, 1);
  });

  after(async () => {
    try {
      await cluster.down();
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
      assert.ok(vm, 'the VM under test was created');
      const r = await runCell({ cluster, vm, cell, rep: 1, log: (l) => console.log(`# ${l}`) });
      vm = r.vm;
      outcomes.push(r.outcome);
      assert.equal(r.outcome.missed, null, `${cellName(cell)}: point not reached: ${r.outcome.missed}`);
      assert.deepEqual(
        r.outcome.violations.map((v) => v.message),
        [],
        `${cellName(cell)}: ${r.outcome.violations.length} invariant(s) broken`,
      );
    });
  }
});
