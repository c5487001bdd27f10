/** `ferry host list | show H`: the cluster's hosts as the controller sees them. */
import type { Command } from 'commander';
import type { HostJson } from '../../controller/hosts.ts';
import { formatBytes } from '../../common/units.ts';
import { clusterOptions, enc, formatTable, withClient, type ClusterFlags } from '../client.ts';
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
      return { json: hosts, human: () => (hosts.length === 0 ? 'no hosts (an agent joins with `ferry agent --join-token`)' : hostTable(hosts)) };
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
}
