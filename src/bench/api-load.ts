/**
 * The controller under load (`ferry bench api`): a fixed request rate against one route at a time of a
 * running controller, with autocannon, and the latency percentiles it saw. The fleet in the store is the
 * caller's (the CLI seeds a synthetic one: src/controller/fleet/synthetic.ts); this part only drives HTTP.
 * autocannon measures from the moment a request is due, so a server that falls behind shows it in p99.
 * Each route is first driven unmeasured for `warmupS` at the same rate: the first route after the server
 * started otherwise paid for compiling its code paths and warming SQLite's page cache in its p99 (the page
 * of VMs, measured first, had p99s of 26–64 ms in three quiet runs while the routes after it varied less).
 */
import autocannon from 'autocannon';
import { FerryError } from '../common/errors.ts';

export interface ApiLoadRoute {
  /** What it is, for the table. */
  label: string;
  path: string;
  /** Requests per second, all connections together. */
  rate: number;
}

export interface ApiLoadResult {
  label: string;
  path: string;
  rate: number;
  durationS: number;
  requests: number;
  /** Answers other than 2xx, and transport errors or timeouts. */
  non2xx: number;
  errors: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Mean size of an answer's body. */
  bytesPerAnswer: number;
}

export async function runApiLoad(opts: {
  url: string;
  token: string;
  routes: readonly ApiLoadRoute[];
  durationS: number;
  connections: number;
  /** Seconds each route runs, unmeasured, before its measured run (default 2). */
  warmupS?: number;
}): Promise<ApiLoadResult[]> {
  const out: ApiLoadResult[] = [];
  const warmupS = opts.warmupS ?? 2;
  for (const route of opts.routes) {
    const load = (duration: number) => autocannon({
      url: opts.url + route.path,
      method: 'GET',
      headers: { authorization: `Bearer ${opts.token}` },
      connections: opts.connections,
      overallRate: route.rate,
      duration,
      timeout: 10,
    });
    if (warmupS > 0) await load(warmupS);
    const r = await load(opts.durationS);
    const answers = r.requests.total;
    if (answers === 0) throw new FerryError('FERRY_E_INTERNAL', `No answer from ${route.path} in ${opts.durationS} s.`);
    out.push({
      label: route.label,
      path: route.path,
      rate: route.rate,
      durationS: opts.durationS,
      requests: answers,
      non2xx: r.non2xx,
      errors: r.errors + r.timeouts,
      p50Ms: r.latency.p50,
      p90Ms: r.latency.p90,
      p99Ms: r.latency.p99,
      maxMs: r.latency.max,
      bytesPerAnswer: Math.round(r.throughput.total / answers),
    });
  }
  return out;
}

export function renderApiLoad(results: readonly ApiLoadResult[], fleet: { hosts: number; vms: number }, goalMs: number): string {
  const head = `# controller API under load: ${fleet.hosts} hosts, ${fleet.vms} VMs in the store (goal p99 < ${goalMs} ms)`;
  const rows = results.map((r) =>
    [
      r.label.padEnd(34),
      `${r.rate}/s`.padStart(6),
      String(r.requests).padStart(6),
      `${r.p50Ms}`.padStart(7),
      `${r.p90Ms}`.padStart(7),
      `${r.p99Ms}`.padStart(7),
      `${r.maxMs}`.padStart(7),
      String(r.bytesPerAnswer).padStart(9),
      String(r.non2xx + r.errors).padStart(5),
      r.p99Ms < goalMs ? 'yes' : 'NO',
    ].join('  '),
  );
  const cols = ['route'.padEnd(34), 'rate'.padStart(6), 'reqs'.padStart(6), 'p50 ms'.padStart(7), 'p90 ms'.padStart(7), 'p99 ms'.padStart(7), 'max ms'.padStart(7), 'bytes'.padStart(9), 'bad'.padStart(5), 'goal'].join('  ');
  return [head, cols, ...rows].join('\n') + '\n';
}
