/**
 * `ferry demo` (`npm run demo`): the main job on the embedded default. Starts (or reuses) a 2-host lab,
 * creates a small VM running the memory dirtier, live-migrates it there and back with progress, checks from
 * inside the guest that nothing was lost (same boot id, dirty pattern intact), prints a summary, and leaves
 * the lab up with the next commands to try. Re-running it reuses the lab and recreates the VM.
 */
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import { migrationFigures, type MigrationFigures, type MigrationJson } from '../../common/migration.ts';
import { formatBytes, formatDuration } from '../../common/units.ts';
import type { VmJson } from '../../common/api.ts';
import { ApiClient, enc } from '../../client/api.ts';
import { formatTable } from '../../client/table.ts';
import { loadConfig } from '../../client/config.ts';
import { action } from '../output.ts';
import { watchMigration } from '../progress.ts';

const VM = 'demo1';

interface GuestReply {
  reply: { ok: boolean; bootId?: string; pages?: number; passes?: number; error?: string; firstBadPage?: number };
}

export interface DemoHop extends MigrationFigures {
  migration: string;
  from: string;
  to: string;
  state: string;
  bootIdKept: boolean;
  patternVerified: boolean;
  error: { code: string; message: string } | null;
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('Start a 2-host lab, live-migrate a busy VM there and back, print what happened')
    .option('--memory <size>', 'VM memory', '256M')
    .option('--dirty-mib <n>', 'MiB the guest keeps dirtying', '64')
    .option('--dirty-rate <MBps>', 'how fast the guest dirties them', '20')
    .option('--guest <guest>', "tiny (Ferry's own guest, ~1 min) or debian (Debian 12 from `ferry image build debian-12`, with cloud-init and a service; several minutes under TCG)", 'tiny')
    .option('--json', 'print one JSON document')
    .action(
      action(async (opts: { memory: string; dirtyMib: string; dirtyRate: string; guest: string; json?: boolean }) => {
        if (opts.guest !== 'tiny' && opts.guest !== 'debian') throw new FerryError('FERRY_E_USAGE', `--guest ${JSON.stringify(opts.guest)}: tiny or debian.`);
        const say = (s: string) => {
          if (!opts.json) process.stderr.write(s + '\n');
        };
        const { labUp, readLabState } = await import('../../lab/index.ts');
        say('== 1. a lab: 2 hosts as network namespaces, a controller, one agent per host');
        try {
          await labUp({ name: 'lab', hosts: 2, log: (l) => say(`   lab: ${l}`) });
        } catch (err) {
          // A healthy lab with another number of hosts is fine for the demo: use it.
          if (!(err instanceof FerryError && err.code === 'FERRY_E_USAGE') || readLabState({ name: 'lab' }) === null) throw err;
          say('   using the lab that is already up');
        }
        const c = new ApiClient(loadConfig());
        try {
          const hosts = (await c.get<{ name: string; state: string }[]>('/api/v1/hosts')).filter((h) => h.state === 'ready');
          if (hosts.length < 2) throw new FerryError('FERRY_E_LAB', `The lab has ${hosts.length} ready host(s); the demo needs 2.`);
          const [a, b] = [hosts[0]!.name, hosts[1]!.name];
          if (opts.guest === 'debian') {
            const { debianDemo } = await import('./demo-debian.ts');
            return await debianDemo(c, [a, b], { memory: opts.memory === '256M' ? '512M' : opts.memory, json: Boolean(opts.json), say });
          }

          say(`== 2. a VM: ${VM}, ${opts.memory}, Ferry's tiny guest, on ${a}`);
          const old = await c.get<VmJson>(`/api/v1/vms/${VM}`).catch(() => null);
          if (old) {
            say(`   removing the ${VM} of an earlier run`);
            await c.delete(`/api/v1/vms/${VM}`);
          }
          const vm = await c.post<VmJson>('/api/v1/vms', { name: VM, memory: opts.memory, host: a });
          say(`   running on ${vm.host}, ip ${vm.ip ?? '-'}, boot id ${vm.bootId}`);
          const guest = (command: string) => c.post<GuestReply>(`/api/v1/vms/${VM}/guest`, { command }).then((r) => r.reply);
          await guest(`dirty start --mib ${Number(opts.dirtyMib)} --rate ${Number(opts.dirtyRate)}`);
          say(`   the guest dirties ${opts.dirtyMib} MiB at ${opts.dirtyRate} MB/s in a pattern it can verify`);
          const bootId = (await guest('info')).bootId ?? vm.bootId;

          const hops: DemoHop[] = [];
          for (const [from, to] of [
            [a, b],
            [b, a],
          ] as const) {
            say(`== ${hops.length + 3}. live migration ${from} → ${to} (TLS, QEMU's bandwidth cap lifted, downtime budget 300 ms)`);
            const started = await c.post<MigrationJson>(`/api/v1/vms/${VM}/migrate`, { to });
            const m = await watchMigration(() => c.get<MigrationJson>(`/api/v1/migrations/${enc(started.id)}`), { json: Boolean(opts.json) });
            const info = await guest('info').catch(() => null);
            const verify = await guest('dirty verify').catch(() => null);
            const hop: DemoHop = {
              migration: m.id,
              from,
              to,
              state: m.state,
              ...migrationFigures(m),
              bootIdKept: info?.bootId === bootId,
              patternVerified: verify?.ok === true,
              error: m.error,
            };
            hops.push(hop);
            say(`   ${m.state}: guest on ${to}, boot id ${hop.bootIdKept ? 'unchanged' : 'CHANGED'}, memory pattern ${hop.patternVerified ? 'verified' : 'BROKEN'}`);
            if (m.state !== 'completed') break;
          }
          const ok = hops.length === 2 && hops.every((h) => h.state === 'completed' && h.bootIdKept && h.patternVerified);
          const ms = (v: number | null) => (v === null ? '-' : formatDuration(v));
          const table = formatTable(
            ['HOP', 'STATE', 'TOTAL', 'QEMU TIME', 'DOWNTIME (QEMU)', 'GUEST GAP', 'MOVED', 'PASSES', 'BOOT ID', 'PATTERN'],
            hops.map((h) => [
              `${h.from}→${h.to}`,
              h.state,
              ms(h.totalMs),
              ms(h.qemuTotalMs),
              ms(h.downtimeMs),
              ms(h.guestDowntimeMs),
              h.transferredBytes === null ? '-' : formatBytes(h.transferredBytes),
              String(h.iterations ?? '-'),
              h.bootIdKept ? 'kept' : 'changed',
              h.patternVerified ? 'ok' : 'broken',
            ]),
          );
          const next = [
            `  npx ferry vm show ${VM}`,
            `  npx ferry vm migrate ${VM} --to ${b} --wait         # again, or with --no-tls, --bandwidth 50M, --mode cold`,
            '  npx ferry migration list',
            '  npx ferry host list',
            '  npx ferry lab down                                 # removes everything the lab made',
          ];
          return {
            json: { ok, vm: VM, bootId, hops },
            human: () =>
              ['', 'Summary', table, '', ok ? `The guest kept its boot id (${bootId}) and its memory pattern across both hops.` : 'Something went wrong: see the table.', '', 'The lab is still up. Next:', ...next].join('\n'),
            exitCode: ok ? 0 : 1,
          };
        } finally {
          await c.close();
        }
      }),
    );
}
