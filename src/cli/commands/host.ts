/** `ferry host list | show H | drain H | undrain H`: the cluster's hosts as the controller sees them. */
import type { Command } from 'commander';
import type { DrainItem, DrainJson, HostJson } from '../../common/api.ts';
import { formatBytes } from '../../common/units.ts';
import { enc, withClient } from '../../client/api.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, durationFlag, type ClusterFlags } from '../flags.ts';
import { action, formatOf } from '../output.ts';

const ago = (iso: string | null): string => {
  if (iso === null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
};

const HOST_COLUMNS: readonly Column<HostJson>[] = [
  { header: 'NAME', cell: (h) => h.name },
  { header: 'STATE', cell: (h) => h.state },
  { header: 'URL', cell: (h) => h.url },
  { header: 'VMS', cell: (h) => String(h.vms.length) },
  { header: 'FREE', cell: (h) => formatBytes(h.freeMemoryBytes) },
  { header: 'MEMORY', cell: (h) => (h.inventory ? formatBytes(h.inventory.memoryBytes) : '-') },
  { header: 'CORES', cell: (h) => (h.inventory ? String(h.inventory.cpu.cores) : '-') },
  { header: 'ACCEL', cell: (h) => h.inventory?.accel ?? '-' },
  { header: 'QEMU', cell: (h) => h.inventory?.qemu.version ?? '-' },
  { header: 'SEEN', cell: (h) => ago(h.lastSeenAt) },
  { header: 'MAINTENANCE', cell: (h) => (h.maintenance ? 'yes' : 'no'), wide: true },
  { header: 'AGENT', cell: (h) => h.agent?.agentVersion ?? '-', wide: true },
  { header: 'PROTOCOL', cell: (h) => (h.agent ? `${h.agent.protocol.min}-${h.agent.protocol.current}` : '-'), wide: true },
  { header: 'CPU', cell: (h) => h.inventory?.cpu.model ?? '-', wide: true },
];

const DRAIN_COLUMNS: readonly Column<DrainItem>[] = [
  { header: 'VM', cell: (i) => i.vm },
  { header: 'STATUS', cell: (i) => i.status },
  { header: 'TO', cell: (i) => i.destination ?? '-' },
  { header: 'MIGRATION', cell: (i) => i.migration ?? '-' },
  { header: 'ERROR', cell: (i) => i.error?.code ?? '' },
];

export function registerHost(program: Command): void {
  const host = program.command('host').description('Hosts of the cluster');
  clusterOptions(host.command('list').description('List hosts'), 'view').action(
    action(async (flags: ClusterFlags) => {
      const hosts = await withClient(flags, (c) => c.get<HostJson[]>('/api/v1/hosts'));
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
          if (inv) {
            rows.push(
              ['memory', formatBytes(inv.memoryBytes)],
              ['cpu', `${inv.cpu.cores} × ${inv.cpu.model}`],
              ['accel', inv.accel],
              ['qemu', inv.qemu.version],
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
      .option('--deadline <duration>', 'stop starting migrations after this long (default 10m)')
      .option('--wait', 'follow the drain to its end')
      .description('Put a host in maintenance and move its VMs to other hosts'),
  ).action(
    action(async (name: string, f: ClusterFlags & { deadline?: string; wait?: boolean }) => {
      const body = f.deadline === undefined ? {} : { deadline: durationFlag('--deadline', f.deadline) };
      return withClient(f, async (c) => {
        let d = await c.post<DrainJson>(`/api/v1/hosts/${enc(name)}/drain`, body);
        const seen = new Map<string, string>();
        while (f.wait && d.state === 'draining') {
          for (const i of d.items) {
            const line = `${i.vm}: ${i.status}${i.destination ? ` → ${i.destination}` : ''}${i.migration ? ` (${i.migration})` : ''}`;
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
