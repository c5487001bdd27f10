/** `ferry lab up|down|status`: a local cluster on this machine (see src/lab/). */
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { action } from '../output.ts';

function parseHosts(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isInteger(n)) {
    throw new FerryError('FERRY_E_USAGE', `Bad --hosts ${JSON.stringify(text)}: a whole number, e.g. 3.`);
  }
  return n;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function registerLab(program: Command): void {
  const lab = program
    .command('lab')
    .description('A local cluster on this machine: hosts as network namespaces');

  lab
    .command('up')
    .description('Build the lab (network, controller, one agent per host) and write the CLI config')
    .option('--hosts <n>', 'number of hosts', '3')
    .option('--name <name>', 'lab name (1-8 of [a-z0-9])', 'lab')
    .option('--json', 'print one JSON document')
    .action(
      action(async (opts: { hosts: string; name: string; json?: boolean }) => {
        const { labUp } = await import('../../lab/index.ts');
        const hosts = parseHosts(opts.hosts);
        const state = await labUp({
          name: opts.name,
          hosts,
          log: opts.json ? undefined : (l) => process.stderr.write(`lab: ${l}\n`),
        });
        const { adminToken: _token, caCertPem: _ca, ...server } = state.server;
        return {
          json: { ...state, server },
          human: () =>
            [
              `lab ${state.name} ${state.reused ? 'was up already' : 'is up'}: controller ${state.server.url} (pid ${state.server.pid})`,
              `networks: management/migration ${state.network.mgmtCidr}, VM LAN vm0 ${state.network.vmCidr}`,
              '',
              table([
                ['HOST', 'NAMESPACE', 'ADDRESS', 'AGENT', 'PID'],
                ...state.hosts.map((h) => [h.name, h.namespace, h.address, h.url, String(h.pid)]),
              ]),
              '',
              state.configPath ? `CLI config written to ${state.configPath}. Try:` : 'Try:',
              '  ferry host list',
              `  ferry vm create a1 --memory 256M --host ${state.hosts[0]?.name ?? 'h1'}`,
              `  ferry vm migrate a1 --to ${state.hosts[1]?.name ?? 'h2'} --wait`,
              `  ferry lab status${state.name === 'lab' ? '' : ` --name ${state.name}`}`,
              `  ferry lab down${state.name === 'lab' ? '' : ` --name ${state.name}`}`,
            ].join('\n'),
        };
      }),
    );

  lab
    .command('down')
    .description('Remove every process, namespace, bridge, veth and file of the lab (idempotent)')
    .option('--name <name>', 'lab name', 'lab')
    .option('--json', 'print one JSON document')
    .action(
      action(async (opts: { name: string }) => {
        const { labDown } = await import('../../lab/index.ts');
        const r = await labDown({ name: opts.name });
        const nothing = r.killed.length + r.namespaces.length + r.links.length === 0 && !r.removedDir;
        return {
          json: r,
          human: () =>
            nothing
              ? `lab ${r.name}: nothing to remove`
              : [
                  `lab ${r.name} is down:`,
                  `  processes stopped: ${r.killed.length ? r.killed.join(' ') : '-'}`,
                  `  namespaces removed: ${r.namespaces.join(' ') || '-'}`,
                  `  links removed: ${r.links.join(' ') || '-'}`,
                  ...(r.removedConfig ? [`  CLI config removed: ${r.removedConfig}`] : []),
                ].join('\n'),
        };
      }),
    );

  lab
    .command('status')
    .description('Show whether the lab and each of its processes are alive')
    .option('--name <name>', 'lab name', 'lab')
    .option('--json', 'print one JSON document')
    .action(
      action(async (opts: { name: string }) => {
        const { labStatus } = await import('../../lab/index.ts');
        const s = await labStatus({ name: opts.name });
        const alive = (b: boolean): string => (b ? 'alive' : 'DEAD');
        return {
          json: s,
          exitCode: s.healthy ? 0 : 1,
          human: () => {
            if (!s.exists)
              return [
                `lab ${s.name}: not up`,
                ...s.problems.filter((p) => p !== 'not up').map((p) => `  ${p}`),
              ].join('\n');
            return [
              `lab ${s.name}: ${s.healthy ? 'healthy' : 'UNHEALTHY'} (${s.dir})`,
              `controller ${s.server?.url ?? '-'} pid ${s.server?.pid ?? '-'} ${alive(s.server?.alive ?? false)}`,
              '',
              table([
                ['HOST', 'NAMESPACE', 'ADDRESS', 'PID', 'PROCESS', 'STATE'],
                ...s.hosts.map((h) => [
                  h.name,
                  h.namespace,
                  h.address,
                  String(h.pid),
                  alive(h.alive),
                  h.state ?? '-',
                ]),
              ]),
              ...(s.problems.length ? ['', 'problems:', ...s.problems.map((p) => `  ${p}`)] : []),
            ].join('\n');
          },
        };
      }),
    );
}
