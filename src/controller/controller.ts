/**
 * The controller's parts wired together over one data directory: store, CA, event bus, agent pool,
 * host registry (heartbeats), VM service and metrics. The HTTP API (api/) and `ferry server` (server.ts)
 * sit on top; tests can build a Controller without any socket.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { GUEST_PROBES, type GuestProbe } from '../common/migration.ts';
import { AgentPool } from './agent-client.ts';
import { loadOrCreateCa, type ClusterCa } from './ca.ts';
import { EventBus } from './events.ts';
import { VmGuard } from './guard.ts';
import { HostRegistry } from './hosts.ts';
import { createMetrics, type ControllerMetrics } from './metrics.ts';
import { upsertNetworks, type VmNetwork } from './networks.ts';
import type { Store } from './store/db.ts';
import { openControllerStore, parseStoreLocation } from './store/open.ts';
import { LeaderLease, type LeaseParams } from './leader.ts';
import { ensureAdminToken } from './tokens.ts';
import { ImageService } from './images.ts';
import { VmService } from './vms.ts';
import { MigrationOrchestrator } from './migrations/orchestrator.ts';
import type { QueueLimits } from './migrations/queue.ts';
import { DrainService } from './drain.ts';
import { silentLogger, type Log } from '../common/log.ts';

export interface ControllerOptions {
  dataDir: string;
  vmNetworks?: VmNetwork[];
  heartbeatMs?: number;
  /** Lifetime of the agent certificates issued at join and renewal (default 825 days). */
  agentCertMs?: number;
  /** The migration queue's limits (src/controller/migrations/queue.ts); its defaults otherwise. */
  limits?: QueueLimits;
  /** Start heartbeats (default true); tests driving `hosts.poll()` by hand turn them off. */
  heartbeats?: boolean;
  /** Recover unfinished migration jobs at start (default true). */
  recover?: boolean;
  /** Measure guest downtime from the controller with UDP or ICMP probes (default true). */
  probe?: boolean;
  /**
   * Test-only: one probe for every VM (`udp`|`icmp`) instead of the one each spec calls for; default:
   * FERRY_TEST_GUEST_PROBE, else per spec.
   */
  probeKind?: GuestProbe;
  /** Test-only hold points of migrations (see migrations/holds.ts); default: FERRY_TEST_HOLD_DIR, else off. */
  holdDir?: string;
  /** The controller's logger (src/controller/log.ts); default: silent. */
  log?: Log;
  /** Where the store is (`ferry server --store`): a SQLite file; default `<dataDir>/ferry.db`. */
  store?: string;
  /**
   * Share the store with other controllers (docs/ha.md): a leader lease decides which one acts; this one
   * starts heartbeats, recovery and every agent call only once it leads, and each call carries its term.
   */
  ha?: HaOptions;
}

export interface HaOptions {
  /** Unique among the controllers of the store. */
  id: string;
  params?: LeaseParams;
  /** This controller lost a term it held: it must stop acting at once (`ferry server` exits). */
  onDeposed: (term: number) => void;
}

/** Leadership, when the controller shares its store (HaOptions). */
export interface ControllerHa {
  readonly id: string;
  readonly lease: LeaderLease;
  /** Starts competing for the lease; `url` is where followers send writers. */
  start(url: string): void;
}

export interface Controller {
  readonly dataDir: string;
  readonly store: Store;
  readonly ca: ClusterCa;
  /** True on the first start over this data dir (the CA was just created). */
  readonly firstStart: boolean;
  /** The admin token when it was just created (first start), else null: it is stored only hashed. */
  readonly newAdminToken: string | null;
  readonly events: EventBus;
  readonly pool: AgentPool;
  readonly guard: VmGuard;
  readonly hosts: HostRegistry;
  readonly vms: VmService;
  readonly images: ImageService;
  readonly metrics: ControllerMetrics;
  readonly migrations: MigrationOrchestrator;
  readonly drains: DrainService;
  readonly log: Log;
  /** Present when the store is shared (ControllerOptions.ha). */
  readonly ha: ControllerHa | undefined;
  close(): Promise<void>;
}

export const STORE_FILE = 'ferry.db';
export const CA_DIR = 'pki';
export const ADMIN_TOKEN_FILE = 'admin-token';

export async function createController(opts: ControllerOptions): Promise<Controller> {
  const log = opts.log ?? silentLogger();
  const probeKind = opts.probeKind ?? testProbeKind(process.env.FERRY_TEST_GUEST_PROBE);
  // Checked before anything is created.
  const storeLocation = opts.store ?? join(opts.dataDir, STORE_FILE);
  parseStoreLocation(storeLocation);
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  // mkdir's mode applies only to a directory it creates; the data dir holds the CA key and the store.
  chmodSync(opts.dataDir, 0o700);
  const { ca, created } = await loadOrCreateCa(join(opts.dataDir, CA_DIR));
  const store = await openControllerStore(storeLocation);
  try {
    if (opts.vmNetworks && opts.vmNetworks.length > 0) upsertNetworks(store.sql, opts.vmNetworks);
    const newAdminToken = ensureAdminToken(store);
    // Written at once: the token exists only hashed in the store, so if this start fails later the
    // file is the only place it can still be read from.
    if (newAdminToken !== null) writeFileSync(join(opts.dataDir, ADMIN_TOKEN_FILE), newAdminToken + '\n', { mode: 0o600 });
    const events = new EventBus(store);
    let lease: LeaderLease | undefined;
    const pool = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient }, opts.ha === undefined ? undefined : () => lease?.term());
    const guard = new VmGuard();
    const hosts = new HostRegistry({
      store,
      events,
      pool,
      guard,
      ca,
      log,
      ...(opts.heartbeatMs === undefined ? {} : { intervalMs: opts.heartbeatMs }),
      ...(opts.agentCertMs === undefined ? {} : { agentCertMs: opts.agentCertMs }),
    });
    const images = new ImageService({
      store,
      dataDir: opts.dataDir,
      agents: () =>
        (store.sql.prepare('SELECT name, url FROM hosts ORDER BY name').all() as { name: string; url: string }[]).map((h) => ({
          host: h.name,
          agent: pool.client(h.name, h.url),
        })),
    });
    const vms = new VmService({ store, events, pool, guard, defaultNetwork: 'vm0', images });
    const metrics = createMetrics(store);
    const holdDir = opts.holdDir ?? process.env.FERRY_TEST_HOLD_DIR;
    const migrations = new MigrationOrchestrator({
      store,
      ...(opts.ha === undefined ? {} : { term: () => lease?.term() }),
      events,
      pool,
      images,
      log,
      onJob: (type, job) => metrics.migrationChanged(type, job),
      ...(opts.limits === undefined ? {} : { limits: opts.limits }),
      ...(opts.probe === undefined ? {} : { probe: opts.probe }),
      ...(probeKind ? { probeKind } : {}),
      ...(holdDir ? { holdDir } : {}),
    });
    metrics.watch(migrations.jobs);
    const drains = new DrainService({ store, events, migrations, pool, log });
    let closed = false;
    const act = (): void => {
      if (closed) return; // elected while closing: nothing to start
      if (opts.heartbeats !== false) hosts.start();
      // Jobs a previous controller (or leader) left unfinished are rolled forward or back, by who is the truth now.
      if (opts.recover !== false) migrations.recover();
    };
    let ha: ControllerHa | undefined;
    if (opts.ha === undefined) act();
    else {
      const { id, params, onDeposed } = opts.ha;
      let url = '';
      const leader = new LeaderLease({
        store,
        id,
        url: () => url,
        ...(params === undefined ? {} : { params }),
        onElected: (term) => {
          log.warn({ term }, `leading in term ${term}`);
          // Every agent hears the new term first, so that none still takes the deposed leader's orders;
          // then the background work and the recovery of the jobs the old leader left.
          void announceTerm(store, pool).finally(act);
        },
        onDeposed: (term) => {
          log.error({ term }, `deposed: term ${term} is over`);
          onDeposed(term);
        },
        onError: (err) => log.warn({ err }, `leader lease: ${String(err)}`),
      });
      lease = leader;
      ha = {
        id,
        lease: leader,
        start: (u) => {
          url = u;
          leader.start();
        },
      };
    }
    return {
      dataDir: opts.dataDir,
      store,
      ca,
      firstStart: created,
      newAdminToken,
      events,
      pool,
      guard,
      hosts,
      vms,
      images,
      metrics,
      migrations,
      drains,
      log,
      ha,
      close: async () => {
        closed = true;
        drains.close();
        await migrations.close();
        await hosts.stop();
        // Released last: the next leader starts only once this one gives no more orders.
        await lease?.stop();
        await pool.close();
        await store.close();
      },
    };
  } catch (err) {
    await store.close();
    throw err;
  }
}

/** Tells every known agent the current term (a cheap version call each); agents that do not answer hear it on the next call. */
async function announceTerm(store: Store, pool: AgentPool): Promise<void> {
  const hosts = await store.db.selectFrom('hosts').select(['name', 'url']).execute();
  await Promise.allSettled(hosts.map((h) => pool.client(h.name, h.url).call('version', undefined, { timeoutMs: 2_000 })));
}

function testProbeKind(value: string | undefined): GuestProbe | undefined {
  if (value === undefined || value === '') return undefined;
  if ((GUEST_PROBES as readonly string[]).includes(value)) return value as GuestProbe;
  throw new FerryError('FERRY_E_BAD_INPUT', `FERRY_TEST_GUEST_PROBE=${JSON.stringify(value)}: it takes ${GUEST_PROBES.join(' or ')}.`);
}
