/**
 * Prometheus metrics of the controller, on a registry of its own (several controllers can live in one
 * process in tests). Gauges read the store when scraped; other parts add their metrics to `registry`.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { HOST_STATES, VM_STATES } from '../common/protocol.ts';
import type { Store } from './store/db.ts';

export interface ControllerMetrics {
  readonly registry: Registry;
  readonly apiRequests: Counter<'method' | 'route' | 'status'>;
}

export function createMetrics(store: Store): ControllerMetrics {
  const registry = new Registry();
  const count = (sql: string): Map<string, number> =>
    new Map((store.sqlite.prepare(sql).all() as { k: string; n: number }[]).map((r) => [r.k, r.n]));
  new Gauge({
    name: 'ferry_hosts',
    help: 'Hosts known to the controller, by state.',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const m = count(
        "SELECT CASE WHEN state = 'unreachable' THEN 'unreachable' WHEN maintenance = 1 THEN 'maintenance' ELSE state END AS k, COUNT(*) AS n FROM hosts GROUP BY k",
      );
      // Every state is reported, zeros included, so that a dashboard sees the series disappear to 0.
      for (const s of new Set<string>([...HOST_STATES, ...m.keys()])) this.set({ state: s }, m.get(s) ?? 0);
    },
  });
  new Gauge({
    name: 'ferry_vms',
    help: 'VMs known to the controller, by state.',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const m = count('SELECT state AS k, COUNT(*) AS n FROM vms GROUP BY state');
      for (const s of new Set<string>([...VM_STATES, 'creating', ...m.keys()])) this.set({ state: s }, m.get(s) ?? 0);
    },
  });
  const apiRequests = new Counter({
    name: 'ferry_api_requests_total',
    help: 'API requests answered, by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  return { registry, apiRequests };
}
