/**
 * Host drain: plan first, then move every VM off the host in parallel, each by the rung its plan chose
 * (src/controller/fleet/planner.ts: live → post-copy → cold, within the deadline, biggest risks first),
 * through the same path as `ferry vm migrate` (the orchestrator; its queue limits how many run at once).
 * The host is put in maintenance (the scheduler never places anything there again) unless it is a dry
 * run, which only answers the plan and changes nothing. A VM the plan cannot move is reported with the
 * reason and never tried; a migration that fails is tried once more by the next rung its policy allows,
 * while the deadline leaves time; otherwise it is reported with its error. A drain finishes: each VM
 * ends moved, failed, unmovable, or skipped once the deadline passed. `undrain` lifts the maintenance.
 * The maintenance flag is stored; the drain's progress lives with the controller process, and draining
 * again after a restart picks up the VMs still there.
 */
import type { DrainItem, DrainJson, DrainPlanEntry, DrainPlanJson } from '../common/api.ts';
import { FerryError } from '../common/errors.ts';
import type { Log } from '../common/log.ts';
import { parseDuration, parseSize, validateName } from '../common/units.ts';
import type { MigrationJson } from '../common/migration.ts';
import type { MigrateRequest } from '../common/policy.ts';
import { isFinal } from '../common/states.ts';
import type { AgentPool } from './agent-client.ts';
import type { EventBus } from './events.ts';
import { DEFAULT_LIMITS, type Limits } from './fleet/fluid.ts';
import { fleetHosts, fleetVms, measureDirtyRates } from './fleet/inputs.ts';
import type { Evacuation } from '../common/spec.ts';
import { planDrain, type DrainPlanItem } from './fleet/planner.ts';
import type { MigrationOrchestrator } from './migrations/orchestrator.ts';
import type { Store } from './store/db.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface DrainOptions {
  deadline?: string | number;
  dryRun?: boolean;
  /** Each migration's bandwidth cap (a size per second, or MiB/s); what the plan predicts with too. */
  bandwidth?: string | number;
}

const RUNG_AFTER: Record<string, string | undefined> = { live: 'postcopy', postcopy: 'cold' };

export class DrainService {
  private readonly drains = new Map<string, DrainJson>();
  private closed = false;

  constructor(
    private readonly o: { store: Store; events: EventBus; migrations: MigrationOrchestrator; pool?: AgentPool; log?: Log; pollMs?: number; limits?: Limits; linkBytesPerSec?: number },
  ) {}

  private setMaintenance(host: string, on: boolean): void {
    const r = this.o.store.sql.prepare('UPDATE hosts SET maintenance = ? WHERE name = ?').run(on ? 1 : 0, host);
    if (r.changes !== 1) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `No host named ${JSON.stringify(host)}: see \`ferry host list\`.`);
    this.o.events.publish(on ? 'host.maintenance' : 'host.ready', host, { maintenance: on });
  }

  /** The plan for emptying `host` now: the store's VMs, their agents' dirty rates, the planner. */
  async plan(hostName: string, opts: DrainOptions = {}): Promise<DrainPlanJson & { items: DrainPlanItem[] }> {
    const host = validateName(hostName, 'host name');
    const deadlineMs = opts.deadline === undefined ? 10 * 60_000 : parseDuration(opts.deadline, 'deadline');
    const bandwidthBytesPerSec = opts.bandwidth === undefined ? 0 : typeof opts.bandwidth === 'number' ? opts.bandwidth * 1024 * 1024 : parseSize(opts.bandwidth, 'bandwidth');
    const vms = fleetVms(this.o.store);
    if (this.o.pool) await measureDirtyRates(this.o.store, this.o.pool, vms.filter((v) => v.host === host));
    const p = planDrain({
      drain: [host],
      hosts: fleetHosts(this.o.store, this.o.linkBytesPerSec),
      vms,
      deadlineMs,
      limits: this.o.limits ?? DEFAULT_LIMITS,
      bandwidthBytesPerSec,
    });
    const plan: DrainPlanEntry[] = p.plan.map((i) => ({
      vm: i.vm,
      destination: i.destination,
      reason: i.reason,
      predictedMs: i.predictedMs,
      strategy: i.strategy,
      bytes: i.bytes,
      dirtyBytesPerSec: i.dirtyBytesPerSec,
      code: i.code ?? null,
    }));
    return { host, deadlineMs, feasible: p.feasible, predictedMs: p.predictedMs, plan, items: p.plan };
  }

  /** Plans, then (unless a dry run) starts draining; answers the drain already under way if there is one. */
  async drain(hostName: string, opts: DrainOptions = {}): Promise<DrainJson | DrainPlanJson> {
    const host = validateName(hostName, 'host name');
    const running = this.drains.get(host);
    if (!opts.dryRun && running && running.state === 'draining') return running;
    const { items: planned, ...plan } = await this.plan(host, opts);
    if (opts.dryRun) return plan;
    this.setMaintenance(host, true);
    const items: DrainItem[] = plan.plan.map((e) => ({
      vm: e.vm,
      status: e.strategy === 'none' ? 'unmovable' : 'pending',
      strategy: e.strategy,
      migration: null,
      destination: e.destination,
      error: e.strategy === 'none' ? { code: e.code ?? 'FERRY_E_NO_CAPACITY', message: e.reason } : null,
    }));
    const d: DrainJson = {
      host,
      state: 'draining',
      startedAt: new Date().toISOString(),
      finishedAt: null,
      deadlineMs: plan.deadlineMs,
      items: [...items].sort((a, b) => a.vm.localeCompare(b.vm)),
      feasible: plan.feasible,
      predictedMs: plan.predictedMs,
      plan: plan.plan,
    };
    this.drains.set(host, d);
    this.o.events.publish('host.drain.started', host, { vms: d.items.map((i) => i.vm), feasible: plan.feasible, plan: plan.plan });
    const evacuation = new Map(fleetVms(this.o.store).map((v) => [v.name, v.spec.evacuation ?? 'live']));
    void this.run(d, planned, evacuation, opts).catch((err: unknown) => this.o.log?.warn({ host }, `drain ${host}: ${String(err)}`));
    return d;
  }

  undrain(hostName: string): { host: string; maintenance: false } {
    const host = validateName(hostName, 'host name');
    const d = this.drains.get(host);
    if (d && d.state === 'draining') {
      throw new FerryError('FERRY_E_VM_STATE', `Host ${host} is being drained: wait for the drain to end (\`ferry host drain ${host} --wait\`).`);
    }
    this.setMaintenance(host, false);
    return { host, maintenance: false };
  }

  status(hostName: string): DrainJson | null {
    return this.drains.get(hostName) ?? null;
  }

  close(): void {
    this.closed = true;
  }

  /** The request of one rung: the plan's destination, the time left, the drain's bandwidth. */
  private request(item: DrainItem, leftMs: number, opts: DrainOptions): MigrateRequest {
    const base: MigrateRequest = { deadline: Math.max(1000, leftMs), ...(item.destination ? { to: item.destination } : {}) };
    const bw = opts.bandwidth === undefined ? {} : { bandwidth: opts.bandwidth };
    if (item.strategy === 'cold') return { ...base, mode: 'cold' };
    if (item.strategy === 'postcopy') return { ...base, ...bw, mode: 'live', postcopy: 'always' };
    return { ...base, ...bw, mode: 'live' };
  }

  /** Submits every movable VM at once, in the plan's order, and follows each to its end. */
  private async run(d: DrainJson, planned: DrainPlanItem[], evacuation: Map<string, Evacuation>, opts: DrainOptions): Promise<void> {
    const t0 = Date.parse(d.startedAt);
    const byVm = new Map(d.items.map((i) => [i.vm, i]));
    const stateOf = (vm: string): { host: string; state: string } | undefined =>
      this.o.store.sql.prepare('SELECT host, state FROM vms WHERE name = ?').get(vm) as { host: string; state: string } | undefined;
    const follow = async (item: DrainItem): Promise<void> => {
      for (;;) {
        if (this.closed) return;
        const left = d.deadlineMs - (Date.now() - t0);
        const vm = stateOf(item.vm);
        if (!vm || vm.host !== d.host) {
          item.status = 'moved'; // gone or moved meanwhile: nothing of it is left here
          return;
        }
        if (left <= 0) {
          item.status = 'skipped';
          item.error = { code: 'FERRY_E_MIGRATION_TIMEOUT', message: 'The drain deadline passed before this VM could be moved.' };
          return;
        }
        item.status = 'migrating';
        item.error = null;
        let m: MigrationJson;
        try {
          m = await this.o.migrations.migrate(item.vm, this.request(item, left, opts));
        } catch (err) {
          const fe = err instanceof FerryError ? err : new FerryError('FERRY_E_INTERNAL', String(err));
          item.status = 'failed';
          item.error = { code: fe.code, message: fe.message };
          return;
        }
        item.migration = m.id;
        item.destination = m.destination;
        this.o.events.publish('host.drain.progress', d.host, { vm: item.vm, status: item.status, strategy: item.strategy, migration: m.id });
        while (!isFinal(m.state)) {
          await sleep(this.o.pollMs ?? 200);
          m = this.o.migrations.jobs.mustGet(m.id);
        }
        if (m.state === 'completed') {
          item.status = 'moved';
          return;
        }
        item.status = 'failed';
        item.error = m.error;
        // One more try by the next rung the VM's policy allows, never the same one again.
        const next = RUNG_AFTER[item.strategy ?? ''];
        const policy = evacuation.get(item.vm) ?? 'live';
        const ok = next === 'postcopy' ? policy !== 'live' : next === 'cold' ? policy === 'cold-ok' : false;
        if (next === undefined || !ok || m.state === 'cancelled' || this.closed) return;
        this.o.log?.info({ host: d.host, vm: item.vm }, `drain ${d.host}: ${item.vm} failed by ${item.strategy} (${m.error?.code ?? m.state}); next: ${next}`);
        item.strategy = next;
      }
    };
    const order = planned.map((p) => byVm.get(p.vm)!).filter((i) => i.status === 'pending');
    await Promise.all(order.map(async (item) => {
      await follow(item);
      this.o.events.publish('host.drain.progress', d.host, { vm: item.vm, status: item.status, strategy: item.strategy, migration: item.migration });
    }));
    d.state = d.items.every((i) => i.status === 'moved') ? 'drained' : 'incomplete';
    d.finishedAt = new Date().toISOString();
    this.o.events.publish(`host.drain.${d.state}`, d.host, { items: d.items });
  }
}
