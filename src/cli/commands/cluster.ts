/** `ferry cluster rebalance`: even out memory use across hosts (POST /api/v1/cluster/rebalance). */
import type { Command } from 'commander';
import type { RebalanceJson, RebalanceMoveJson } from '../../common/api.ts';
import { FerryError } from '../../common/errors.ts';
import { formatBytes } from '../../common/units.ts';
import { withClient } from '../../client/api.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, intFlag, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

const COLUMNS: readonly Column<RebalanceMoveJson>[] = [
  { header: 'VM', cell: (m) => m.vm },
  { header: 'FROM', cell: (m) => m.from },
  { header: 'TO', cell: (m) => m.to },
  { header: 'MODE', cell: (m) => m.mode },
  { header: 'SENDS', cell: (m) => formatBytes(m.costBytes) },
  { header: 'MIGRATION', cell: (m) => m.migration ?? (m.error ? m.error.code : '-') },
  { header: 'WHY', cell: (m) => m.reason },
];

const pct = (x: number): string => `${Math.round(x * 100)}%`;

export function registerCluster(program: Command): void {
  const cluster = program.command('cluster').description('The cluster as a whole');
  clusterOptions(
    cluster
      .command('rebalance')
      .option('--dry-run', 'print the moves only: nothing changes')
      .option('--max-moves <n>', 'at most this many moves (default 10)')
      .option('--threshold <percent>', 'stop once the most and least used hosts differ by at most this (default 10%)')
      .description('Even out memory use across hosts with the moves that cost least, each explained'),
  ).action(
    action(async (f: ClusterFlags & { dryRun?: boolean; maxMoves?: string; threshold?: string }) => {
      if (f.threshold !== undefined && !/^\s*\d+(\.\d+)?\s*%\s*$/.test(f.threshold)) {
        throw new FerryError('FERRY_E_BAD_INPUT', `Bad --threshold ${JSON.stringify(f.threshold)}: a percentage such as 10%.`);
      }
      const body = {
        ...(f.dryRun ? { dryRun: true } : {}),
        ...(f.maxMoves === undefined ? {} : { maxMoves: intFlag('--max-moves', f.maxMoves, 0, 1000) }),
        ...(f.threshold === undefined ? {} : { threshold: f.threshold }),
      };
      const r = await withClient(f, (c) => c.post<RebalanceJson>('/api/v1/cluster/rebalance', body));
      return {
        json: r,
        exitCode: r.moves.some((m) => m.error) ? 1 : 0,
        human: () =>
          [`spread ${pct(r.spreadBefore)} → ${pct(r.spreadAfter)} (threshold ${pct(r.threshold)})${r.dryRun ? ', dry run' : ''}`, r.moves.length === 0 ? 'balanced: no move' : renderTable(COLUMNS, r.moves)].join('\n'),
      };
    }),
  );
}
