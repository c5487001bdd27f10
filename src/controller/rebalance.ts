/**
 * `POST /api/v1/cluster/rebalance`: the rebalancer's moves (src/controller/fleet/rebalance.ts) over the
 * store's hosts and VMs, each started through the same path as `ferry vm migrate` unless a dry run.
 */
import type { RebalanceJson } from '../common/api.ts';
import { FerryError } from '../common/errors.ts';
import { fleetHosts, fleetVms, measureDirtyRates } from './fleet/inputs.ts';
import { planRebalance } from './fleet/rebalance.ts';
import type { AgentPool } from './agent-client.ts';
import type { MigrationOrchestrator } from './migrations/orchestrator.ts';
import type { Store } from './store/db.ts';

export interface RebalanceOptions {
  dryRun?: boolean;
  maxMoves?: number;
  /** `10%` or a fraction (0.1). */
  threshold?: string | number;
}

export function parseThreshold(t: string | number | undefined): number {
  if (t === undefined) return 0.1;
  const m = typeof t === 'number' ? null : /^\s*(\d+(\.\d+)?)\s*%\s*$/.exec(t);
  const v = typeof t === 'number' ? t : m ? Number(m[1]) / 100 : NaN;
  if (!Number.isFinite(v) || v < 0 || v > 1) throw new FerryError('FERRY_E_BAD_INPUT', `Bad threshold ${JSON.stringify(t)}: a percentage such as 10%.`);
  return v;
}

export async function rebalance(o: { store: Store; migrations: MigrationOrchestrator; pool?: AgentPool }, opts: RebalanceOptions): Promise<RebalanceJson> {
  const threshold = parseThreshold(opts.threshold);
  const vms = fleetVms(o.store);
  if (o.pool) await measureDirtyRates(o.store, o.pool, vms);
  const p = planRebalance({ hosts: fleetHosts(o.store), vms, threshold, maxMoves: opts.maxMoves ?? 10 });
  const moves: RebalanceJson['moves'] = [];
  for (const m of p.moves) {
    if (opts.dryRun) {
      moves.push({ ...m, migration: null, error: null });
      continue;
    }
    try {
      const job = await o.migrations.migrate(m.vm, { to: m.to, mode: m.mode });
      moves.push({ ...m, migration: job.id, error: null });
    } catch (err) {
      const fe = err instanceof FerryError ? err : new FerryError('FERRY_E_INTERNAL', String(err));
      moves.push({ ...m, migration: null, error: { code: fe.code, message: fe.message } });
    }
  }
  return { dryRun: opts.dryRun === true, threshold, spreadBefore: p.spreadBefore, spreadAfter: p.spreadAfter, moves };
}
