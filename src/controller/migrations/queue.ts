/**
 * The migration queue's one decision, "may this job start now?", as a pure function of plain data: the
 * jobs (queued and started), the limits, the hosts' links. The orchestrator applies what it answers (start
 * these, these wait and why, each started job's bandwidth); a simulator can run the same function over
 * simulated hosts.
 *
 * The order is priority (higher first), then first come first served. A job that cannot start does not hold
 * back one behind it that can (a job from h2 starts while jobs from a full h1 wait). The limits, each
 * counted over started jobs (every active state but `queued`: a job waiting for an agent still holds its
 * hosts):
 * - outbound: jobs leaving one source host;
 * - inbound: jobs arriving at one destination host;
 * - cluster-wide: jobs anywhere;
 * - bandwidth: each host's migration link has a capacity, shared evenly by the jobs that use it (as source
 *   or destination); a job gets the smaller of its two links' shares as its QEMU max-bandwidth, or less when
 *   its request asks for less. A job waits when starting it would push a share below the minimum.
 */
import { formatBytes } from '../../common/units.ts';

export interface QueueLimits {
  /** Started jobs leaving one host. */
  maxOutbound: number;
  /** Started jobs arriving at one host. */
  maxInbound: number;
  /** Started jobs in the whole cluster. */
  maxConcurrent: number;
  /** A host's migration link, bytes per second, unless the host says otherwise; 0 = not limited. */
  linkCapacityBytesPerSec: number;
  /** No job's share of a link below this (bytes per second): one more waits instead. */
  minShareBytesPerSec: number;
}

/**
 * Defaults a user would pick: 2 out and 2 in per host and 5 in the cluster (KubeVirt's), a 1 GiB/s link
 * (about 10 GbE), and no share below 64 MiB/s (so at most 16 jobs on one such link).
 */
export const DEFAULT_LIMITS: QueueLimits = {
  maxOutbound: 2,
  maxInbound: 2,
  maxConcurrent: 5,
  linkCapacityBytesPerSec: 1024 ** 3,
  minShareBytesPerSec: 64 * 1024 ** 2,
};

export interface QueueJob {
  id: string;
  source: string;
  destination: string;
  /** Queued jobs wait; started ones hold their hosts and links. */
  started: boolean;
  /** Higher first. */
  priority: number;
  /** When it was requested (ISO time or ms): first come first served within a priority. */
  requestedAt: string | number;
  /** The request's own cap, bytes per second; 0 = none. */
  bandwidthBytesPerSec: number;
}

/** A host's own link capacity, when it differs from the limits' default. */
export interface QueueHost {
  name: string;
  linkCapacityBytesPerSec?: number;
}

export interface QueueDecision {
  /** Queued jobs to start now, in order. */
  start: string[];
  /** Queued jobs that go on waiting: their place in the queue (1 = next) and why. */
  waiting: { id: string; position: number; reason: string }[];
  /** Every started job after the starts (old and new): the max-bandwidth it should run with; 0 = unlimited. */
  bandwidth: Map<string, number>;
}

const time = (t: string | number): number => (typeof t === 'number' ? t : Date.parse(t));

/** Priority, then first come first served, then id (a stable order for jobs requested in the same ms). */
export function queueOrder(a: QueueJob, b: QueueJob): number {
  return b.priority - a.priority || time(a.requestedAt) - time(b.requestedAt) || a.id.localeCompare(b.id);
}

export function decideQueue(jobs: readonly QueueJob[], limits: QueueLimits, hosts: readonly QueueHost[] = []): QueueDecision {
  const capacity = (host: string): number =>
    hosts.find((h) => h.name === host)?.linkCapacityBytesPerSec ?? limits.linkCapacityBytesPerSec;
  const out = new Map<string, number>();
  const inb = new Map<string, number>();
  const onLink = new Map<string, number>();
  const bump = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
  const started = jobs.filter((j) => j.started);
  for (const j of started) {
    bump(out, j.source);
    bump(inb, j.destination);
    bump(onLink, j.source);
    bump(onLink, j.destination);
  }
  let total = started.length;
  const start: string[] = [];
  const waiting: QueueDecision['waiting'] = [];
  for (const j of jobs.filter((q) => !q.started).sort(queueOrder)) {
    const reason = blocked(j);
    if (reason === null) {
      start.push(j.id);
      total++;
      bump(out, j.source);
      bump(inb, j.destination);
      bump(onLink, j.source);
      bump(onLink, j.destination);
    } else waiting.push({ id: j.id, position: waiting.length + 1, reason });
  }
  const bandwidth = new Map<string, number>();
  for (const j of jobs.filter((q) => q.started || start.includes(q.id))) {
    const share = Math.min(linkShare(j.source), linkShare(j.destination));
    const cap = j.bandwidthBytesPerSec > 0 ? j.bandwidthBytesPerSec : Number.POSITIVE_INFINITY;
    const bw = Math.min(share, cap);
    bandwidth.set(j.id, Number.isFinite(bw) ? Math.floor(bw) : 0);
  }
  return { start, waiting, bandwidth };

  function linkShare(host: string): number {
    const c = capacity(host);
    return c > 0 ? c / Math.max(1, onLink.get(host) ?? 0) : Number.POSITIVE_INFINITY;
  }

  function blocked(j: QueueJob): string | null {
    if (total >= limits.maxConcurrent) return `cluster-wide limit (${total}/${limits.maxConcurrent})`;
    const o = out.get(j.source) ?? 0;
    if (o >= limits.maxOutbound) return `outbound limit of ${j.source} (${o}/${limits.maxOutbound})`;
    const i = inb.get(j.destination) ?? 0;
    if (i >= limits.maxInbound) return `inbound limit of ${j.destination} (${i}/${limits.maxInbound})`;
    for (const host of [j.source, j.destination]) {
      const c = capacity(host);
      const n = (onLink.get(host) ?? 0) + 1;
      if (c > 0 && limits.minShareBytesPerSec > 0 && c / n < limits.minShareBytesPerSec) {
        return `link of ${host} (${formatBytes(c)}/s shared by ${n} would leave less than ${formatBytes(limits.minShareBytesPerSec)}/s each)`;
      }
    }
    return null;
  }
}
