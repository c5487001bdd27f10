/**
 * `npm run test:faults -- --reps N [--cells point×fault,…] [--out docs/reliability.md]`: runs the fault
 * matrix N times in a lab of its own and writes the reliability report. Exit 1 when any case broke an
 * invariant (the report is written either way).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { TestCluster } from './cluster.ts';
import { MATRIX, cellName } from './faults.ts';
import { reliabilityReport, runMatrix } from './matrix.ts';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '1' },
    cells: { type: 'string' },
    out: { type: 'string', default: join(PACKAGE_ROOT, 'docs', 'reliability.md') },
  },
});
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) {
  console.error(`--reps ${values.reps}: a whole number ≥ 1`);
  process.exit(2);
}
const wanted = values.cells?.split(',').map((s) => s.trim().replace('x', '×'));
const cells = wanted ? MATRIX.filter((c) => wanted.includes(cellName(c))) : MATRIX;
if (wanted && cells.length !== wanted.length) {
  console.error(`unknown cells in --cells; known: ${MATRIX.map(cellName).join(', ')}`);
  process.exit(2);
}
const cluster = new TestCluster('fm');
const t0 = Date.now();
let code = 0;
try {
  await cluster.up(2);
  const outcomes = await runMatrix({ cluster, reps, cells, log: (l) => console.error(`[${Math.round((Date.now() - t0) / 1000)}s] ${l}`) });
  writeFileSync(values.out, reliabilityReport(outcomes, { reps, totalMs: Date.now() - t0 }));
  console.error(`wrote ${values.out}`);
  code = outcomes.some((o) => o.violations.length > 0 || o.missed) ? 1 : 0;
} finally {
  await cluster.down();
}
process.exit(code);
