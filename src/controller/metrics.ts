/**
 * Prometheus metrics of the controller, on a registry of its own (several controllers can live in one
 * process in tests). Gauges read the store when scraped; other parts add their metrics to `registry`.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import { HOST_STATES, VM_STATES } from '../common/protocol.ts';
import { MIGRATION_STATES } from '../common/states.ts';
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
  new Gauge({
    name: 'ferry_migrations',
    help: 'Migration jobs in the store, by state.',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const m = count('SELECT state AS k, COUNT(*) AS n FROM migrations GROUP BY state');
      for (const s of new Set<string>([...MIGRATION_STATES, ...m.keys()])) this.set({ state: s }, m.get(s) ?? 0);
    },
  });
  // Figures of finished migrations, read from the store at scrape time (so a restarted controller keeps them).
  const figure = (name: string, help: string, column: string, scale: number): void => {
    new Gauge({
      name,
      help,
      labelNames: ['stat'],
      registers: [registry],
      collect() {
        const r = store.sqlite
          .prepare(`SELECT COUNT(${column}) AS n, AVG(${column}) AS avg, MAX(${column}) AS max FROM migrations WHERE state = 'completed'`)
          .get() as { n: number; avg: number | null; max: number | null };
        this.set({ stat: 'count' }, r.n);
        this.set({ stat: 'avg' }, (r.avg ?? 0) * scale);
        this.set({ stat: 'max' }, (r.max ?? 0) * scale);
      },
    });
  };
  figure('ferry_migration_total_seconds', 'End-to-end time of completed migrations.', 'total_ms', 1e-3);
  figure('ferry_migration_downtime_seconds', 'QEMU-reported downtime of completed migrations.', 'downtime_ms', 1e-3);
  figure('ferry_migration_guest_downtime_seconds', 'Longest gap in guest probe replies during completed migrations.', 'guest_downtime_ms', 1e-3);
  figure('ferry_migration_transferred_bytes', 'Bytes QEMU sent for completed migrations.', 'transferred_bytes', 1);
  const apiRequests = new Counter({
    name: 'ferry_api_requests_total',
    help: 'API requests answered, by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  return { registry, apiRequests };
}
