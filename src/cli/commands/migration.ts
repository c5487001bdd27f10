/**
 * `ferry vm migrate` and `ferry migration list | show | watch | cancel`. With `--wait` (and `watch`) the CLI
 * follows the job over the server's event stream: a live bar on a TTY, plain lines otherwise, one JSON
 * document at the end with --json. A migration that ends failed or cancelled exits 1.
 *
 * Ctrl-C while following asks nothing: the job runs on the server, so the CLI only lets go of it (cursor
 * shown, how to follow or cancel it printed) and exits 130; a second Ctrl-C within 2 s cancels the job.
 */
import { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import type { MigrationJson } from '../../common/migration.ts';
import { formatDuration } from '../../common/units.ts';
import { enc, withClient, type ApiClient } from '../../client/api.ts';
import { migrationFrames } from '../../client/events.ts';
import { formatTable } from '../../client/table.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action, type Outcome } from '../output.ts';
import { followMigration, summaryLines } from '../progress.ts';
import { resolvePolicy, type MigrateRequest } from '../../common/policy.ts';

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
  wait?: boolean;
}

export function migrationTable(ms: MigrationJson[]): string {
  return formatTable(
    ['ID', 'VM', 'FROM', 'TO', 'MODE', 'STATE', 'PHASE', 'TOTAL', 'DOWNTIME', 'GUEST GAP', 'ERROR'],
    ms.map((m) => [
      m.id,
      m.vm,
      m.source,
      m.destination,
      m.mode,
      m.state,
      m.phase,
      m.totalMs === null ? '-' : formatDuration(m.totalMs),
      m.downtimeMs === null ? '-' : formatDuration(m.downtimeMs),
      m.guestDowntimeMs === null ? '-' : formatDuration(m.guestDowntimeMs),
      m.error?.code ?? '',
    ]),
  );
}

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

export function migrateBody(f: MigrateFlags): MigrateRequest {
  const body: Record<string, unknown> = {};
  for (const k of ['to', 'mode', 'storage', 'postcopy', 'maxDowntime', 'bandwidth', 'deadline', 'stallTimeout'] as const) if (f[k] !== undefined) body[k] = f[k];
  if (f.tls === false) body.tls = false;
  if (f.autoConverge) body.autoConverge = true;
  if (f.xbzrle) body.xbzrle = true;
  if (f.multifd !== undefined) {
    const n = Number(f.multifd);
    if (!Number.isInteger(n) || n < 0 || n > 16) throw new FerryError('FERRY_E_BAD_INPUT', `Bad --multifd ${JSON.stringify(f.multifd)}: 0 to 16 channels.`);
    body.multifd = n;
  }
  // Its values are the flags' strings as typed; resolvePolicy (called next) checks them as the server will.
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
      .option('--bandwidth <rate>', 'MiB/s, or e.g. 100M; 0 = no limit (default 0)')
      .option('--no-tls', 'plain TCP for the migration stream (default: TLS with the cluster CA)')
      .option('--auto-converge', 'let QEMU throttle a guest that dirties memory faster than the link')
      .option('--xbzrle', 'delta-compress re-sent pages')
      .option('--multifd <n>', 'parallel channels (0 = off)')
      .option('--deadline <duration>', 'abort if not finished within this (default 10m)')
      .option('--stall-timeout <duration>', 'abort when no byte moves for this long, e.g. a cut link (default 10s)')
      .option('--wait', 'follow the migration to its end, with progress')
      .description('Move a VM to another host, live (default) or cold'),
  ).action(
    action(async (name: string, f: MigrateFlags) => {
      return withClient(f, async (c) => {
        const body = migrateBody(f);
        resolvePolicy(body); // the same checks as the server, with messages that name the flag's values
        const started = await c.post<MigrationJson>(`/api/v1/vms/${enc(name)}/migrate`, body);
        if (!f.wait) {
          const why = started.why?.map((w) => `  ${w.host}: ${w.accepted ? 'accepted' : 'rejected'} — ${w.reason}`).join('\n');
          return {
            json: started,
            human: `migration ${started.id}: ${started.vm} ${started.source} → ${started.destination} ${started.state}\n${why ?? ''}\nfollow it: ferry migration watch ${started.id}`,
          };
        }
        if (!f.json) process.stderr.write(`migration ${started.id}: ${started.vm} ${started.source} → ${started.destination}\n`);
        return follow(c, started.id, Boolean(f.json));
      });
    }),
  );

  const mig = program.command('migration').description('Migration jobs');
  clusterOptions(mig.command('list').option('--vm <name>', 'only this VM').description('List migrations, newest first')).action(
    action(async (f: ClusterFlags & { vm?: string }) => {
      const ms = await withClient(f, (c) => c.get<MigrationJson[]>(`/api/v1/migrations${f.vm ? `?vm=${enc(f.vm)}` : ''}`));
      return { json: ms, human: () => (ms.length === 0 ? 'no migrations' : migrationTable(ms)) };
    }),
  );
  clusterOptions(mig.command('show').argument('<id>', 'migration id').description('Show one migration')).action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.get<MigrationJson>(`/api/v1/migrations/${enc(id)}`));
      return { json: m, human: () => summaryLines(m).join('\n') };
    }),
  );
  clusterOptions(mig.command('watch').argument('<id>', 'migration id').description('Follow a migration to its end')).action(
    action(async (id: string, f: ClusterFlags) =>
      withClient(f, (c) => follow(c, id, Boolean(f.json))),
    ),
  );
  clusterOptions(mig.command('cancel').argument('<id>', 'migration id').description('Cancel a migration (before post-copy)')).action(
    action(async (id: string, f: ClusterFlags) => {
      const m = await withClient(f, (c) => c.post<MigrationJson>(`/api/v1/migrations/${enc(id)}/cancel`, {}));
      return { json: m, human: `migration ${m.id}: cancel requested (${m.state})` };
    }),
  );
}
