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
import { openStore, type Store } from './store/db.ts';
import { ensureAdminToken } from './tokens.ts';
import { ImageService } from './images.ts';
import { VmService } from './vms.ts';
import { MigrationOrchestrator } from './migrations/orchestrator.ts';
import { DrainService } from './drain.ts';
import { silentLogger, type Log } from '../common/log.ts';

export interface ControllerOptions {
  dataDir: string;
  vmNetworks?: VmNetwork[];
  heartbeatMs?: number;
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
  close(): Promise<void>;
}

export const STORE_FILE = 'ferry.db';
export const CA_DIR = 'pki';
export const ADMIN_TOKEN_FILE = 'admin-token';

export async function createController(opts: ControllerOptions): Promise<Controller> {
  const log = opts.log ?? silentLogger();
  const probeKind = opts.probeKind ?? testProbeKind(process.env.FERRY_TEST_GUEST_PROBE);
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  // mkdir's mode applies only to a directory it creates; the data dir holds the CA key and the store.
  chmodSync(opts.dataDir, 0o700);
  const { ca, created } = await loadOrCreateCa(join(opts.dataDir, CA_DIR));
  const store = openStore(join(opts.dataDir, STORE_FILE));
  try {
    if (opts.vmNetworks && opts.vmNetworks.length > 0) upsertNetworks(store.sqlite, opts.vmNetworks);
    const newAdminToken = ensureAdminToken(store);
    // Written at once: the token exists only hashed in the store, so if this start fails later the
    // file is the only place it can still be read from.
    if (newAdminToken !== null) writeFileSync(join(opts.dataDir, ADMIN_TOKEN_FILE), newAdminToken + '\n', { mode: 0o600 });
    const events = new EventBus(store);
    const pool = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient });
    const guard = new VmGuard();
    const hosts = new HostRegistry({
      store,
      events,
      pool,
      guard,
      ca,
      log,
      ...(opts.heartbeatMs === undefined ? {} : { intervalMs: opts.heartbeatMs }),
    });
    const images = new ImageService({
      store,
      dataDir: opts.dataDir,
      agents: () =>
        (store.sqlite.prepare('SELECT name, url FROM hosts ORDER BY name').all() as { name: string; url: string }[]).map((h) => ({
          host: h.name,
          agent: pool.client(h.name, h.url),
        })),
    });
    const vms = new VmService({ store, events, pool, guard, defaultNetwork: 'vm0', images });
    const metrics = createMetrics(store);
    const holdDir = opts.holdDir ?? process.env.FERRY_TEST_HOLD_DIR;
    const migrations = new MigrationOrchestrator({
      store,
      events,
      pool,
      images,
      log,
      onJob: (type, job) => metrics.migrationChanged(type, job),
      ...(opts.probe === undefined ? {} : { probe: opts.probe }),
      ...(probeKind ? { probeKind } : {}),
      ...(holdDir ? { holdDir } : {}),
    });
    metrics.watch(migrations.jobs);
    const drains = new DrainService({ store, events, migrations, log });
    if (opts.heartbeats !== false) hosts.start();
    // Jobs a previous controller left unfinished are rolled forward or back, by who is the truth now.
    if (opts.recover !== false) migrations.recover();
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
      close: async () => {
        drains.close();
        await migrations.close();
        await hosts.stop();
        await pool.close();
        await store.close();
      },
    };
  } catch (err) {
    await store.close();
    throw err;
  }
}

function testProbeKind(value: string | undefined): GuestProbe | undefined {
  if (value === undefined || value === '') return undefined;
  if ((GUEST_PROBES as readonly string[]).includes(value)) return value as GuestProbe;
  throw new FerryError('FERRY_E_BAD_INPUT', `FERRY_TEST_GUEST_PROBE=${JSON.stringify(value)}: it takes ${GUEST_PROBES.join(' or ')}.`);
}
