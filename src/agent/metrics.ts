/**
 * The agent's Prometheus metrics, served at GET /agent/v1/metrics (a route of the table, so only the
 * controller reads it; the controller proxies it at /metrics/hosts/:name): the QEMU processes this agent
 * runs, each VM's state, the duration of every migration phase it ran (agent/log.ts times them), build info
 * and the process.
 */
import { Gauge, Histogram, Registry } from 'prom-client';
import { registerProcessMetrics, seconds } from '../common/metrics.ts';
import { VM_STATES, type VmStatus } from '../common/protocol.ts';

/** A phase is a fraction of a second (finish, confirm) to many minutes (perform of a large busy VM). */
const PHASE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800];

export interface AgentMetrics {
  readonly registry: Registry;
  /** Records one migration phase this agent ran; `result` is `ok` or the error code. */
  phaseDone(phase: string, result: string, ms: number): void;
}

export function createAgentMetrics(listVms: () => Promise<VmStatus[]>): AgentMetrics {
  const registry = new Registry();
  registerProcessMetrics(registry, 'agent');
  // One listing per scrape, shared by the gauges below: the registry collects them all at once.
  let listing: Promise<VmStatus[]> | null = null;
  const snapshot = (): Promise<VmStatus[]> =>
    (listing ??= listVms()
      .catch(() => [] as VmStatus[])
      .finally(() => setImmediate(() => (listing = null))));
  new Gauge({
    name: 'ferry_agent_qemu_processes',
    help: 'QEMU processes this agent runs (one per VM that has one).',
    registers: [registry],
    async collect() {
      this.set((await snapshot()).filter((v) => v.pid !== null).length);
    },
  });
  new Gauge({
    name: 'ferry_agent_vm_state',
    help: 'Each VM on this host: 1 for its state (running, paused, stopped, migrating), with its QEMU run state.',
    labelNames: ['vm', 'state', 'qemu_status'] as const,
    registers: [registry],
    async collect() {
      const list = await snapshot();
      this.reset();
      for (const v of list) this.set({ vm: v.name, state: v.state, qemu_status: v.qemuStatus ?? 'none' }, 1);
    },
  });
  new Gauge({
    name: 'ferry_agent_vm_memory_bytes',
    help: 'Guest memory of each VM on this host, as its spec says.',
    labelNames: ['vm'] as const,
    registers: [registry],
    async collect() {
      const list = await snapshot();
      this.reset();
      for (const v of list) this.set({ vm: v.name }, v.spec.memoryBytes);
    },
  });
  new Gauge({
    name: 'ferry_agent_vms',
    help: 'VMs on this host, by state.',
    labelNames: ['state'] as const,
    registers: [registry],
    async collect() {
      const by = new Map<string, number>();
      for (const v of await snapshot()) by.set(v.state, (by.get(v.state) ?? 0) + 1);
      for (const s of new Set<string>([...VM_STATES, ...by.keys()])) this.set({ state: s }, by.get(s) ?? 0);
    },
  });
  const phases = new Histogram({
    name: 'ferry_agent_migration_phase_duration_seconds',
    help: 'Time this agent spent in each migration phase it ran, by phase and result (ok or the error code).',
    labelNames: ['phase', 'result'] as const,
    buckets: PHASE_BUCKETS,
    registers: [registry],
  });
  return {
    registry,
    phaseDone: (phase, result, ms) => phases.observe({ phase, result }, seconds(ms)),
  };
}
