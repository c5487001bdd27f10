/** `ferry host list | show H | drain H | undrain H`: the cluster's hosts as the controller sees them. */
import type { Command } from 'commander';
import type { DrainJson, HostJson } from '../../common/api.ts';
import { formatBytes } from '../../common/units.ts';
import { enc, withClient } from '../../client/api.ts';
import { formatTable } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action } from '../output.ts';

const ago = (iso: string | null): string => {
  if (iso === null) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
};

export function hostTable(hosts: HostJson[]): string {
  return formatTable(
    ['NAME', 'STATE', 'URL', 'VMS', 'FREE', 'MEMORY', 'CORES', 'ACCEL', 'QEMU', 'SEEN'],
    hosts.map((h) => [
      h.name,
      h.state,
      h.url,
      String(h.vms.length),
      formatBytes(h.freeMemoryBytes),
      h.inventory ? formatBytes(h.inventory.memoryBytes) : '-',
      h.inventory ? String(h.inventory.cpu.cores) : '-',
      h.inventory?.accel ?? '-',
      h.inventory?.qemu.version ?? '-',
      ago(h.lastSeenAt),
    ]),
  );
}

export function registerHost(program: Command): void {
  const host = program.command('host').description('Hosts of the cluster');
  clusterOptions(host.command('list').description('List hosts')).action(
    action(async (flags: ClusterFlags) => {
      const hosts = await withClient(flags, (c) => c.get<HostJson[]>('/api/v1/hosts'));
      // An incompatible host's error under the table: which versions the two sides speak, and what to do.
      const errors = hosts.filter((h) => h.error).map((h) => `${h.name}: ${h.error!.code}: ${h.error!.message}`);
      return {
        json: hosts,
        human: () => (hosts.length === 0 ? 'no hosts (an agent joins with `ferry agent --join-token`)' : [hostTable(hosts), ...errors].join('\n')),
      };
    }),
  );
  clusterOptions(host.command('show').argument('<host>', 'host name').description('Show one host: inventory, state, VMs')).action(
    action(async (name: string, flags: ClusterFlags) => {
      const h = await withClient(flags, (c) => c.get<HostJson>(`/api/v1/hosts/${enc(name)}`));
      return {
        json: h,
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
          return formatTable(['FIELD', 'VALUE'], rows).split('\n').slice(1).join('\n');
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
    action(async (name: string, f: ClusterFlags & { deadline?: string; wait?: boolean }) =>
      withClient(f, async (c) => {
        let d = await c.post<DrainJson>(`/api/v1/hosts/${enc(name)}/drain`, f.deadline === undefined ? {} : { deadline: f.deadline });
        const seen = new Map<string, string>();
        while (f.wait && d.state === 'draining') {
          for (const i of d.items) {
            const line = `${i.vm}: ${i.status}${i.destination ? ` → ${i.destination}` : ''}${i.migration ? ` (${i.migration})` : ''}`;
            if (!f.json && seen.get(i.vm) !== line) process.stderr.write(`drain ${name}: ${line}\n`);
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
              formatTable(
                ['VM', 'STATUS', 'TO', 'MIGRATION', 'ERROR'],
                d.items.map((i) => [i.vm, i.status, i.destination ?? '-', i.migration ?? '-', i.error?.code ?? '']),
              ),
            ].join('\n'),
        };
      }),
    ),
  );
  clusterOptions(host.command('undrain').argument('<host>', 'host name').description('Lift maintenance: VMs may be placed on the host again')).action(
    action(async (name: string, f: ClusterFlags) => {
      const r = await withClient(f, (c) => c.post<{ host: string; maintenance: boolean }>(`/api/v1/hosts/${enc(name)}/undrain`, {}));
      return { json: r, human: `host ${r.host}: maintenance lifted` };
    }),
  );
}
