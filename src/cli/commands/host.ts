/** `ferry host list | show H | drain H | undrain H`: the cluster's hosts as the controller sees them. */
import type { Command } from 'commander';
import type { DrainItem, DrainJson, DrainPlanEntry, DrainPlanJson, HostJson, HostSummaryJson } from '../../common/api.ts';
import { formatBytes } from '../../common/units.ts';
import { enc, withClient } from '../../client/api.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, durationFlag, rateFlag, type ClusterFlags } from '../flags.ts';
import { action, formatOf } from '../output.ts';

const ago = (iso: string | null): string => {
  if (iso === null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
};

// A summary is all a table shows (a full HostJson is one too).
const HOST_COLUMNS: readonly Column<HostSummaryJson>[] = [
  { header: 'NAME', cell: (h) => h.name },
  { header: 'STATE', cell: (h) => h.state },
  { header: 'URL', cell: (h) => h.url },
  { header: 'VMS', cell: (h) => String(h.vms.length) },
  { header: 'FREE', cell: (h) => formatBytes(h.freeMemoryBytes) },
  { header: 'MEMORY', cell: (h) => (h.inventory ? formatBytes(h.inventory.memoryBytes) : '-') },
  { header: 'CORES', cell: (h) => (h.inventory ? String(h.inventory.cpu.cores) : '-') },
  { header: 'ACCEL', cell: (h) => h.inventory?.accel ?? '-' },
  { header: 'QEMU', cell: (h) => h.inventory?.qemu.version ?? '-' },
  { header: 'PROTOCOL', cell: (h) => (h.agent ? String(h.agent.protocol.current) : '-') },
  { header: 'SEEN', cell: (h) => ago(h.lastSeenAt) },
  { header: 'MAINTENANCE', cell: (h) => (h.maintenance ? 'yes' : 'no'), wide: true },
  { header: 'AGENT', cell: (h) => h.agent?.agentVersion ?? '-', wide: true },
  { header: 'SERVES', cell: (h) => (h.agent ? `${h.agent.protocol.min}-${h.agent.protocol.current}` : '-'), wide: true },
  { header: 'CERT-EXPIRES', cell: (h) => h.certificate?.notAfter ?? '-', wide: true },
  { header: 'CPU', cell: (h) => h.inventory?.cpu.model ?? '-', wide: true },
];

const PLAN_COLUMNS: readonly Column<DrainPlanEntry>[] = [
  { header: 'VM', cell: (i) => i.vm },
  { header: 'STRATEGY', cell: (i) => i.strategy },
  { header: 'TO', cell: (i) => i.destination ?? '-' },
  { header: 'PREDICTED', cell: (i) => (i.predictedMs === null ? '-' : `${(i.predictedMs / 1000).toFixed(1)}s`) },
  { header: 'WHY', cell: (i) => (i.code ? `${i.code}: ${i.reason}` : i.reason) },
];

function renderPlan(p: DrainPlanJson): string {
  const end = p.predictedMs === null ? 'not every VM can move' : `all moved in ~${(p.predictedMs / 1000).toFixed(1)}s`;
  return [`plan for ${p.host}: ${end}, deadline ${(p.deadlineMs / 1000).toFixed(0)}s: ${p.feasible ? 'feasible' : 'NOT feasible'}`, renderTable(PLAN_COLUMNS, p.plan)].join('\n');
}

const DRAIN_COLUMNS: readonly Column<DrainItem>[] = [
  { header: 'VM', cell: (i) => i.vm },
  { header: 'STATUS', cell: (i) => i.status },
  { header: 'STRATEGY', cell: (i) => i.strategy ?? '-' },
  { header: 'TO', cell: (i) => i.destination ?? '-' },
  { header: 'MIGRATION', cell: (i) => i.migration ?? '-' },
  { header: 'ERROR', cell: (i) => i.error?.code ?? '' },
];

export function registerHost(program: Command): void {
  const host = program.command('host').description('Hosts of the cluster');
  clusterOptions(host.command('list').description('List hosts'), 'view').action(
    action(async (flags: ClusterFlags) => {
      // JSON and YAML keep the whole inventory (scripts read it); a table needs only the summary, less than half the bytes.
      const format = formatOf(flags);
      const full = format === 'json' || format === 'yaml';
      const hosts = await withClient(flags, (c) => c.get<HostSummaryJson[]>(full ? '/api/v1/hosts' : '/api/v1/hosts?view=summary'));
      // An incompatible host's error under the table: which versions the two sides speak, and what to do.
      const errors = hosts.filter((h) => h.error).map((h) => `${h.name}: ${h.error!.code}: ${h.error!.message}`);
      return {
        json: hosts,
        names: hosts.map((h) => h.name),
        table: (o) => (hosts.length === 0 ? 'no hosts (an agent joins with `ferry agent --join-token`)' : [renderTable(HOST_COLUMNS, hosts, o), ...errors].join('\n')),
      };
    }),
  );
  clusterOptions(host.command('show').argument('<host>', 'host name').description('Show one host: inventory, state, VMs'), 'view').action(
    action(async (name: string, flags: ClusterFlags) => {
      const h = await withClient(flags, (c) => c.get<HostJson>(`/api/v1/hosts/${enc(name)}`));
      return {
        json: h,
        names: [h.name],
        human: () => {
          const inv = h.inventory;
          const rows: [string, string][] = [
            ['name', h.name],
            ['state', h.state + (h.maintenance ? ' (maintenance)' : '')],
            ['url', h.url],
            ['last seen', ago(h.lastSeenAt)],
            ['joined', h.joinedAt],
            ['free memory', formatBytes(h.freeMemoryBytes)],
            ['vms', h.vms.join(', ') || '-'],
          ];
          if (h.error) rows.push(['error', `${h.error.code}: ${h.error.message}`]);
          if (h.agent) rows.push(['protocol', `${h.agent.protocol.current} (serves ${h.agent.protocol.min}–${h.agent.protocol.current})`]);
          if (h.certificate) {
            const c = h.certificate;
            rows.push(['certificate', `valid ${c.notBefore} – ${c.notAfter}, renews after ${c.renewAfter}`], ['renewed', c.renewedAt ?? 'never']);
          }
          if (inv) {
            rows.push(
              ['memory', formatBytes(inv.memoryBytes)],
              ['cpu', `${inv.cpu.cores} × ${inv.cpu.model}`],
              ['accel', inv.accel],
              ['qemu', inv.qemu.version],
              ['machine types', inv.qemu.machineTypes.join(' ')],
              ['migration address', inv.migrationAddress],
              ['agent', inv.agentVersion],
            );
          }
          const width = Math.max(...rows.map(([k]) => k.length));
          return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
        },
      };
    }),
  );

  clusterOptions(
    host
      .command('drain')
      .argument('<host>', 'host name')
      .option('--deadline <duration>', 'every VM moved within this (default 10m); the plan escalates per VM to meet it')
      .option('--dry-run', 'print the plan only: nothing changes')
      .option('--bandwidth <rate>', "each migration's cap, e.g. 100M (a size per second); the plan predicts with it")
      .option('--wait', 'follow the drain to its end')
      .description('Plan, then put a host in maintenance and move its VMs to other hosts (in parallel, biggest risks first)'),
  ).action(
    action(async (name: string, f: ClusterFlags & { deadline?: string; wait?: boolean; dryRun?: boolean; bandwidth?: string }) => {
      const body = {
        ...(f.deadline === undefined ? {} : { deadline: durationFlag('--deadline', f.deadline) }),
        ...(f.bandwidth === undefined ? {} : { bandwidth: rateFlag('--bandwidth', f.bandwidth) }),
        ...(f.dryRun ? { dryRun: true } : {}),
      };
      return withClient(f, async (c) => {
        const first = await c.post<DrainJson | DrainPlanJson>(`/api/v1/hosts/${enc(name)}/drain`, body);
        if (!('state' in first)) {
          return { json: first, human: () => renderPlan(first) };
        }
        let d = first;
        if (formatOf(f) === 'human' && d.plan) process.stderr.write(`${renderPlan({ host: d.host, deadlineMs: d.deadlineMs, feasible: d.feasible ?? false, predictedMs: d.predictedMs ?? null, plan: d.plan })}\n`);
        const seen = new Map<string, string>();
        while (f.wait && d.state === 'draining') {
          for (const i of d.items) {
            const line = `${i.vm}: ${i.status}${i.strategy ? ` (${i.strategy})` : ''}${i.destination ? ` → ${i.destination}` : ''}${i.migration ? ` (${i.migration})` : ''}`;
            if (formatOf(f) === 'human' && seen.get(i.vm) !== line) process.stderr.write(`drain ${name}: ${line}\n`);
            seen.set(i.vm, line);
          }
          await new Promise((r) => setTimeout(r, 300));
          d = await c.get<DrainJson>(`/api/v1/hosts/${enc(name)}/drain`);
        }
        return {
          json: d,
          exitCode: d.state === 'incomplete' ? 1 : 0,
          human: () =>
            [
              `host ${d.host}: ${d.state}${d.state === 'draining' ? ` (follow it: ferry host drain ${d.host} --wait)` : ''}`,
              renderTable(DRAIN_COLUMNS, d.items),
            ].join('\n'),
        };
      });
    }),
  );
  clusterOptions(host.command('undrain').argument('<host>', 'host name').description('Lift maintenance: VMs may be placed on the host again')).action(
    action(async (name: string, f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.post<{ host: string; maintenance: boolean }>(`/api/v1/hosts/${enc(name)}/undrain`, {}));
      return { json: r, human: `host ${r.host}: maintenance lifted` };
    }),
  );
}
