/**
 * `ferry vm migrate` and `ferry migration list | show | watch | cancel | set | postcopy | complete`. With `--wait` (and `watch`) the CLI
 * follows the job over the server's event stream: a live bar on a TTY, plain lines otherwise, one JSON
 * document at the end with --json. A migration that ends failed or cancelled exits 1.
 *
 * Ctrl-C while following asks nothing: the job runs on the server, so the CLI only lets go of it (cursor
 * shown, how to follow or cancel it printed) and exits 130; a second Ctrl-C within 2 s cancels the job.
 */
import { Command } from 'commander';
import type { MigrationJson, MigrationPlanJson } from '../../common/migration.ts';
import { formatBytes, formatDuration, validateName } from '../../common/units.ts';
import { enc, withClient, type ApiClient } from '../../client/api.ts';
import { migrationFrames } from '../../client/events.ts';
import { renderTable, type Column } from '../../client/table.ts';
import { clusterOptions, durationFlag, intFlag, rateFlag, signedIntFlag, type ClusterFlags } from '../flags.ts';
import { action, formatOf, type Outcome } from '../output.ts';
import { followMigration, predictionLines, summaryLines } from '../progress.ts';
import { resolvePolicy, type MigrateRequest, type SteerRequest } from '../../common/policy.ts';
import { FerryError } from '../../common/errors.ts';

interface MigrateFlags extends ClusterFlags {
  to?: string;
  mode?: string;
  storage?: string;
  postcopy?: string;
  maxDowntime?: string;
  bandwidth?: string;
  tls?: boolean;
  autoConverge?: boolean;
  xbzrle?: boolean;
  multifd?: string;
  deadline?: string;
  stallTimeout?: string;
  priority?: string;
  wait?: boolean;
  dryRun?: boolean;
}

/** GET /api/v1/limits (src/controller/api/responses.ts `Limits`). */
interface LimitsJson {
  maxOutbound: number;
  maxInbound: number;
  maxConcurrent: number;
  linkCapacityBytesPerSec: number;
  minShareBytesPerSec: number;
  queued: number;
  running: number;
}

const duration = (ms: number | null): string => (ms === null ? '-' : formatDuration(ms));
/** When it started, to the second (UTC). */
const startedCell = (iso: string): string => iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
/** How long it took, or has taken so far. */
const durationCell = (m: MigrationJson): string => (m.totalMs !== null ? formatDuration(m.totalMs) : m.finishedAt === null ? `${formatDuration(Date.now() - Date.parse(m.startedAt))}…` : '-');

const MIGRATION_COLUMNS: readonly Column<MigrationJson>[] = [
  { header: 'ID', cell: (m) => m.id },
  { header: 'VM', cell: (m) => m.vm },
  { header: 'FROM', cell: (m) => m.source },
  { header: 'TO', cell: (m) => m.destination },
  { header: 'MODE', cell: (m) => m.mode },
  { header: 'STATE', cell: (m) => m.state },
  { header: 'PHASE', cell: (m) => m.phase },
  { header: 'STARTED', cell: (m) => startedCell(m.startedAt) },
  { header: 'DURATION', cell: durationCell },
  { header: 'DOWNTIME', cell: (m) => duration(m.downtimeMs) },
  { header: 'GUEST GAP', cell: (m) => duration(m.guestDowntimeMs) },
  { header: 'ERROR', cell: (m) => m.error?.code ?? '' },
  { header: 'WAITING FOR', cell: (m) => m.queue?.reason ?? '' },
  { header: 'PRIORITY', cell: (m) => String(m.priority), wide: true },
  { header: 'FINISHED', cell: (m) => (m.finishedAt === null ? '-' : startedCell(m.finishedAt)), wide: true },
  { header: 'QEMU TOTAL', cell: (m) => duration(m.qemuTotalMs), wide: true },
  { header: 'TRANSFERRED', cell: (m) => (m.transferredBytes === null ? '-' : formatBytes(m.transferredBytes)), wide: true },
  { header: 'PASSES', cell: (m) => (m.iterations === null ? '-' : String(m.iterations)), wide: true },
  { header: 'ESCALATIONS', cell: (m) => String(m.escalations.length), wide: true },
];

function outcome(m: MigrationJson): Outcome<MigrationJson> {
  return { json: m, human: () => summaryLines(m).join('\n'), exitCode: m.state === 'completed' ? 0 : ['failed', 'cancelled'].includes(m.state) ? 1 : 0 };
}

/** Exit code after Ctrl-C (128 + SIGINT), as shells report an interrupted command. */
const EXIT_INTERRUPTED = 130;
/** How long after the first Ctrl-C a second one cancels the migration. */
const SECOND_INTERRUPT_MS = 2_000;

/** Resolves true on a SIGINT within `ms`, false otherwise. */
function secondInterrupt(ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (v: boolean): void => {
      clearTimeout(t);
      process.off('SIGINT', onInt);
      resolve(v);
    };
    const onInt = (): void => done(true);
    const t = setTimeout(() => done(false), ms);
    process.on('SIGINT', onInt);
  });
}

export function detachHint(id: string): string {
  return (
    `detached: migration ${id} continues on the server.\n` +
    `  follow it: ferry migration watch ${id}\n` +
    `  cancel it: ferry migration cancel ${id}   (or press Ctrl-C again within ${SECOND_INTERRUPT_MS / 1000} s)\n`
  );
}

/** Follows a migration to its end; on Ctrl-C lets go of it (or, on a second one, cancels it). */
async function follow(c: ApiClient, id: string, json: boolean): Promise<Outcome<MigrationJson>> {
  const detach = new AbortController();
  const onInt = (): void => detach.abort();
  process.on('SIGINT', onInt);
  let r;
  try {
    r = await followMigration(migrationFrames(c, id, detach.signal), { json, signal: detach.signal });
  } finally {
    process.off('SIGINT', onInt);
  }
  if (!r.detached) return outcome(r.last!);
  process.stderr.write(detachHint(id));
  if (await secondInterrupt(SECOND_INTERRUPT_MS)) {
    const m = await c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/cancel`, {});
    return { json: m, human: `migration ${id}: cancel requested on the second Ctrl-C (${m.state})`, exitCode: EXIT_INTERRUPTED };
  }
  const m = r.last ?? (await c.get<MigrationJson>(`/api/v1/migrations/${enc(id)}`));
  return { json: m, human: `migration ${id}: ${m.state} · phase ${m.phase}, still running on the server`, exitCode: EXIT_INTERRUPTED };
}

/** The migrate request from the flags, checked as the server will check it, before any config is read. */
export function migrateBody(f: MigrateFlags): MigrateRequest {
  const body: Record<string, unknown> = {};
  for (const k of ['to', 'mode', 'storage', 'postcopy'] as const) if (f[k] !== undefined) body[k] = f[k];
  if (f.maxDowntime !== undefined) body.maxDowntime = durationFlag('--max-downtime', f.maxDowntime);
  if (f.deadline !== undefined) body.deadline = durationFlag('--deadline', f.deadline);
  if (f.stallTimeout !== undefined) body.stallTimeout = durationFlag('--stall-timeout', f.stallTimeout);
  if (f.bandwidth !== undefined) body.bandwidth = rateFlag('--bandwidth', f.bandwidth);
  if (f.tls === false) body.tls = false;
  if (f.autoConverge) body.autoConverge = true;
  if (f.xbzrle) body.xbzrle = true;
  if (f.multifd !== undefined) body.multifd = intFlag('--multifd', f.multifd, 0, 16);
  if (f.priority !== undefined) body.priority = signedIntFlag('--priority', f.priority, -1000, 1000);
  // The flags' strings as typed, checked; resolvePolicy refuses the combinations the server would.
  resolvePolicy(body as MigrateRequest);
  return body as MigrateRequest;
}

export function registerMigration(program: Command): void {
  const vm = program.commands.find((c) => c.name() === 'vm') ?? program.command('vm');
  clusterOptions(
    vm
      .command('migrate')
      .argument('<name>', 'VM name')
      .option('--to <host>', 'destination host (default: the scheduler chooses and says why)')
      .option('--mode <mode>', 'live | cold (default live)')
      .option('--storage <storage>', 'auto | shared | copy (default auto: copy local disks)')
      .option('--postcopy <when>', 'never | auto | always (default never)')
      .option('--max-downtime <duration>', "the guest's downtime budget, e.g. 300ms (default 300ms)")
      .option('--bandwidth <rate>', 'a size per second, e.g. 100M (= 100 MiB/s); 0 = no limit (default 0)')
      .option('--no-tls', 'plain TCP for the migration stream (default: TLS with the cluster CA)')
      .option('--auto-converge', 'let QEMU throttle a guest that dirties memory faster than the link')
      .option('--xbzrle', 'delta-compress re-sent pages')
      .option('--multifd <n>', 'parallel channels (0 = one stream; default: with TLS and no --bandwidth, one per core of the smaller host, 2 to 4)')
      .option('--deadline <duration>', 'abort if not finished within this (default 10m)')
      .option('--stall-timeout <duration>', 'abort when no byte moves for this long, e.g. a cut link (default 10s)')
      .option('--priority <n>', 'when migrations wait for the limits, higher starts first (-1000 to 1000, default 0)')
      .option('--wait', 'follow the migration to its end, with progress')
      .option('--dry-run', 'predict only (dirty rate measured now, link bandwidth, time, downtime, strategy): nothing starts')
      .description('Move a VM to another host, live (default) or cold; beyond the limits it waits queued'),
  ).action(
    action(async (name: string, f: MigrateFlags) => {
      const body = migrateBody(f);
      if (f.dryRun) {
        if (f.wait) throw new FerryError('FERRY_E_USAGE', '--dry-run starts nothing to wait for: not with --wait.');
        return withClient(f, async (c) => {
          const plan = await c.post<MigrationPlanJson>(`/api/v1/vms/${enc(name)}/migrate/prediction`, body);
          const why = plan.why?.map((w) => `  ${w.host}: ${w.accepted ? 'accepted' : 'rejected'} — ${w.reason}`) ?? [];
          return {
            json: plan,
            human: [`dry run: ${plan.vm} ${plan.source} → ${plan.destination} (${plan.mode}); nothing started`, ...why, ...predictionLines(plan.prediction, '  ')].join('\n'),
          };
        });
      }
      return withClient(f, async (c) => {
        const started = await c.post<MigrationJson>(`/api/v1/vms/${enc(name)}/migrate`, body);
        if (!f.wait) {
          const queued = started.queue === null ? '' : ` (#${started.queue.position} in line, waiting for the ${started.queue.reason})`;
          const why = started.why?.map((w) => `  ${w.host}: ${w.accepted ? 'accepted' : 'rejected'} — ${w.reason}`).join('\n');
          return {
            json: started,
            human: `migration ${started.id}: ${started.vm} ${started.source} → ${started.destination} ${started.state}${queued}\n${why ?? ''}\nfollow it: ferry migration watch ${started.id}`,
          };
        }
        if (formatOf(f) === 'human') process.stderr.write(`migration ${started.id}: ${started.vm} ${started.source} → ${started.destination}\n`);
        return follow(c, started.id, formatOf(f) !== 'human');
      });
    }),
  );

  const mig = program.command('migration').description('Migration jobs');
  clusterOptions(
    mig.command('list').option('--vm <name>', 'only this VM').option('--limit <n>', 'at most this many, the newest (1 to 1000)').description('List migrations, newest first'),
    'view',
  ).action(
    action(async (f: ClusterFlags & { vm?: string; limit?: string }) => {
      const query = new URLSearchParams();
      if (f.vm !== undefined) query.set('vm', validateName(f.vm, 'VM name'));
      if (f.limit !== undefined) query.set('limit', String(intFlag('--limit', f.limit, 1, 1000)));
      const qs = query.size === 0 ? '' : `?${query.toString()}`;
      const ms = await withClient(f, (c) => c.get<MigrationJson[]>(`/api/v1/migrations${qs}`));
      return { json: ms, names: ms.map((m) => m.id), table: (o) => (ms.length === 0 ? 'no migrations' : renderTable(MIGRATION_COLUMNS, ms, o)) };
    }),
  );
  clusterOptions(mig.command('show').argument('<id>', 'migration id').description('Show one migration'), 'view').action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.get<MigrationJson>(`/api/v1/migrations/${enc(id)}`));
      return { json: m, names: [m.id], human: () => summaryLines(m).join('\n') };
    }),
  );
  clusterOptions(mig.command('watch').argument('<id>', 'migration id').description('Follow a migration to its end')).action(
    action(async (id: string, f: ClusterFlags) =>
      withClient(f, (c) => follow(c, id, formatOf(f) !== 'human')),
    ),
  );
  clusterOptions(mig.command('cancel').argument('<id>', 'migration id').description('Cancel a migration (before post-copy)')).action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/cancel`, {}));
      return { json: m, human: `migration ${m.id}: cancel requested (${m.state})` };
    }),
  );
  clusterOptions(mig.command('limits').description("The queue's limits (per host, cluster-wide, link capacity), and how many migrations run and wait"), 'view').action(
    action(async (f: ClusterFlags) => {
      const l = await withClient(f, (c) => c.get<LimitsJson>('/api/v1/limits'));
      const link = (n: number): string => (n === 0 ? 'not limited' : `${formatBytes(n)}/s`);
      return {
        json: l,
        human: [
          `outbound per host  ${l.maxOutbound}`,
          `inbound per host   ${l.maxInbound}`,
          `cluster-wide       ${l.maxConcurrent}`,
          `link capacity      ${link(l.linkCapacityBytesPerSec)} per host, shared by its migrations`,
          `least share        ${link(l.minShareBytesPerSec)}`,
          `now                ${l.running} running, ${l.queued} queued`,
        ].join('\n'),
      };
    }),
  );
  clusterOptions(
    mig
      .command('set')
      .argument('<id>', 'migration id')
      .option('--bandwidth <rate>', 'a new cap, a size per second, e.g. 8M (= 8 MiB/s); 0 = no cap (the link share still applies)')
      .option('--max-downtime <duration>', "a new downtime budget, e.g. 300ms: QEMU's limit is set to it at once")
      .description('Steer a running live migration: its bandwidth and downtime budget'),
  ).action(
    action(async (id: string, f: ClusterFlags & { bandwidth?: string; maxDowntime?: string }) => {
      const body: SteerRequest = {};
      if (f.bandwidth !== undefined) body.bandwidth = rateFlag('--bandwidth', f.bandwidth);
      if (f.maxDowntime !== undefined) body.maxDowntime = durationFlag('--max-downtime', f.maxDowntime);
      if (body.bandwidth === undefined && body.maxDowntime === undefined) {
        throw new FerryError('FERRY_E_USAGE', 'ferry migration set needs --bandwidth and/or --max-downtime.');
      }
      const m = await withClient(f, (c) => c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/set`, body));
      return { json: m, human: `migration ${m.id}: ${m.actions.at(-1)?.detail ?? 'set'}` };
    }),
  );
  clusterOptions(
    mig.command('postcopy').argument('<id>', 'migration id').description("Switch a running migration to post-copy now (if its policy allows post-copy)"),
  ).action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/postcopy`, {}));
      return { json: m, human: `migration ${m.id}: switching to post-copy` };
    }),
  );
  clusterOptions(
    mig.command('complete').argument('<id>', 'migration id').description('Pause the guest on the source so that the migration finishes (the pause is its downtime)'),
  ).action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/complete`, {}));
      return { json: m, human: `migration ${m.id}: guest paused on ${m.source} to finish` };
    }),
  );
}
