/**
 * What every Ferry process exposes to Prometheus besides its own figures: `ferry_build_info` (version,
 * Node, agent protocol) and the process metrics of prom-client (CPU, memory, event loop, file
 * descriptors). The controller's metrics are in src/controller/metrics.ts, the agent's in src/agent/metrics.ts.
 */
import { collectDefaultMetrics, Gauge, type Registry } from 'prom-client';
import { AGENT_PROTOCOL } from './protocol.ts';
import { ferryVersion } from './version.ts';

/** Seconds for a duration in milliseconds, for observations (Prometheus' base unit). */
export const seconds = (ms: number): number => ms / 1000;

/** Registers `ferry_build_info` and the process metrics of `component` (`controller`, `agent`) on `registry`. */
export function registerProcessMetrics(registry: Registry, component: string): void {
  collectDefaultMetrics({ register: registry });
  // prom-client names three gauges `…_total`, a counter's suffix (promtool refuses them); the same counts
  // remain, by type, in nodejs_active_handles / _requests / _resources.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  const info = new Gauge({
    name: 'ferry_build_info',
    help: 'Which Ferry this process runs: always 1, the facts are the labels.',
    labelNames: ['component', 'version', 'node', 'protocol'] as const,
    registers: [registry],
  });
  info.set({ component, version: ferryVersion(), node: process.version, protocol: String(AGENT_PROTOCOL) }, 1);
}
