/**
 * Prometheus metrics of the controller, on a registry of its own (several controllers can live in one
 * process in tests): hosts, VMs and jobs by state (read from the store when scraped); histograms of the
 * duration and downtimes of migrations and counters of their outcomes, observed when a job ends; the
 * migrations in flight with their remaining bytes and rates; API latency; build info and the process.
 * The agents' own metrics are proxied at /metrics/hosts/:name (api/system.ts).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { HOST_STATES, VM_STATES } from '../common/protocol.ts';
import { registerProcessMetrics, seconds } from '../common/metrics.ts';
import type { MigrationJson } from '../common/migration.ts';
import { isFinal, MIGRATION_STATES } from '../common/states.ts';
import type { Store } from './store/db.ts';

/** Migration durations span a small VM on a LAN (seconds) to a large busy one (tens of minutes). */
const DURATION_BUCKETS = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600];
/** Downtimes: QEMU's budget is 300 ms by default; a cold move's pause is seconds to minutes. */
const DOWNTIME_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60, 300];
const API_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Where the metrics read jobs from (the orchestrator's JobStore). */
export interface MigrationSource {
  listActive(): MigrationJson[];
  listFinished(): MigrationJson[];
}

export interface ControllerMetrics {
  readonly registry: Registry;
  readonly apiRequests: Counter<'method' | 'route' | 'status'>;
  readonly apiLatency: Histogram<'method' | 'route' | 'status'>;
  /** Told of every change of a job (the orchestrator's onJob); a job that ended is observed once. */
  migrationChanged(type: string, job: MigrationJson): void;
  /** Reads the in-flight jobs from `jobs` from now on, and observes the jobs that ended before this start. */
  watch(jobs: MigrationSource): void;
}

export function createMetrics(store: Store): ControllerMetrics {
  const registry = new Registry();
  registerProcessMetrics(registry, 'controller');
  const count = (sql: string): Map<string, number> =>
    new Map((store.sql.prepare(sql).all() as { k: string; n: number }[]).map((r) => [r.k, r.n]));
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

  const mode = ['mode'] as const;
  const duration = new Histogram({
    name: 'ferry_migration_duration_seconds',
    help: 'End-to-end time of completed migrations, from the request to the end of the job.',
    labelNames: mode,
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const downtime = new Histogram({
    name: 'ferry_migration_downtime_seconds',
    help: "Downtime of completed migrations as QEMU reports it (a cold move: the pause from save to restore).",
    labelNames: mode,
    buckets: DOWNTIME_BUCKETS,
    registers: [registry],
  });
  const guestDowntime = new Histogram({
    name: 'ferry_migration_guest_downtime_seconds',
    help: "Longest gap in the guest's replies to the controller's UDP probes during completed migrations.",
    labelNames: mode,
    buckets: DOWNTIME_BUCKETS,
    registers: [registry],
  });
  const outcomes = new Counter({
    name: 'ferry_migrations_total',
    help: 'Migrations that ended, by result (completed, failed, cancelled) and error code ("none" when completed).',
    labelNames: ['result', 'code'] as const,
    registers: [registry],
  });
  const transferred = new Counter({
    name: 'ferry_migration_transferred_bytes_total',
    help: 'Bytes QEMU sent for migrations that ended, whatever their result.',
    registers: [registry],
  });

  let jobs: MigrationSource | null = null;
  const flight = ['migration', 'vm', 'source', 'destination', 'mode'] as const;
  const inFlight = (j: MigrationJson): Record<(typeof flight)[number], string> => ({
    migration: j.id,
    vm: j.vm,
    source: j.source,
    destination: j.destination,
    mode: j.mode,
  });
  // First: its collect sets the per-job series below (read after it), which exist while the job runs.
  new Gauge({
    name: 'ferry_migrations_in_flight',
    help: 'Migrations that have not ended, by state.',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const active = jobs?.listActive() ?? [];
      this.reset();
      remaining.reset();
      rate.reset();
      dirtyRate.reset();
      const byState = new Map<string, number>();
      for (const j of active) {
        byState.set(j.state, (byState.get(j.state) ?? 0) + 1);
        if (j.progress === null) continue;
        remaining.set(inFlight(j), j.progress.remainingBytes);
        rate.set(inFlight(j), j.progress.rateBytesPerSec);
        dirtyRate.set(inFlight(j), j.progress.dirtyRateBytesPerSec);
      }
      for (const s of MIGRATION_STATES.filter((s) => !isFinal(s))) this.set({ state: s }, byState.get(s) ?? 0);
    },
  });

  const remaining = new Gauge({
    name: 'ferry_migration_remaining_bytes',
    help: 'Bytes still to send of each migration in flight (memory and copied disks).',
    labelNames: flight,
    registers: [registry],
  });
  const rate = new Gauge({
    name: 'ferry_migration_transfer_rate_bytes_per_second',
    help: 'Smoothed transfer rate of each migration in flight.',
    labelNames: flight,
    registers: [registry],
  });
  const dirtyRate = new Gauge({
    name: 'ferry_migration_dirty_rate_bytes_per_second',
    help: 'How fast the guest of each migration in flight dirties its memory.',
    labelNames: flight,
    registers: [registry],
  });
  const apiRequests = new Counter({
    name: 'ferry_api_requests_total',
    help: 'API requests answered, by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const apiLatency = new Histogram({
    name: 'ferry_api_request_duration_seconds',
    help: 'Time the API took to answer, by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: API_BUCKETS,
    registers: [registry],
  });

  const observed = new Set<string>();
  const observe = (j: MigrationJson): void => {
    if (!isFinal(j.state) || observed.has(j.id)) return;
    observed.add(j.id);
    outcomes.inc({ result: j.state, code: j.error?.code ?? 'none' });
    if (j.transferredBytes !== null && j.transferredBytes > 0) transferred.inc(j.transferredBytes);
    if (j.state !== 'completed') return;
    const m = { mode: j.mode };
    if (j.totalMs !== null) duration.observe(m, seconds(j.totalMs));
    if (j.downtimeMs !== null) downtime.observe(m, seconds(j.downtimeMs));
    if (j.guestDowntimeMs !== null) guestDowntime.observe(m, seconds(j.guestDowntimeMs));
  };

  return {
    registry,
    apiRequests,
    apiLatency,
    migrationChanged: (_type, job) => observe(job),
    watch(source) {
      jobs = source;
      // A restarted controller keeps its history: the histograms start from what the store holds.
      for (const j of source.listFinished()) observe(j);
    },
  };
}
