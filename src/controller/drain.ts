/**
 * Host drain: put a host in maintenance (the scheduler never places anything there again) and move every VM
 * off it, one migration at a time, each placed by the scheduler among the other hosts — live for running
 * VMs, cold for stopped ones. A drain finishes: each VM ends moved, or failed with its migration's error
 * code (it then still runs where it was), or not tried because the deadline passed. `undrain` lifts the
 * maintenance. The maintenance flag is stored; the drain's progress lives with the controller process, and
 * draining again after a restart picks up the VMs still there.
 */
import type { DrainJson } from '../common/api.ts';
import { FerryError } from '../common/errors.ts';
import type { Log } from '../common/log.ts';
import { parseDuration, validateName } from '../common/units.ts';
import type { MigrationJson } from '../common/migration.ts';
import { isFinal } from '../common/states.ts';
import type { EventBus } from './events.ts';
import type { MigrationOrchestrator } from './migrations/orchestrator.ts';
import type { Store } from './store/db.ts';



const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class DrainService {
  private readonly drains = new Map<string, DrainJson>();
  private closed = false;

  constructor(
    private readonly o: { store: Store; events: EventBus; migrations: MigrationOrchestrator; log?: Log; pollMs?: number },
  ) {}

  private setMaintenance(host: string, on: boolean): void {
    const r = this.o.store.sqlite.prepare('UPDATE hosts SET maintenance = ? WHERE name = ?').run(on ? 1 : 0, host);
    if (r.changes !== 1) throw new FerryError('FERRY_E_HOST_NOT_FOUND', `No host named ${JSON.stringify(host)}: see \`ferry host list\`.`);
    this.o.events.publish(on ? 'host.maintenance' : 'host.ready', host, { maintenance: on });
  }

  /** Starts draining (or returns the drain already under way). */
  drain(hostName: string, opts: { deadline?: string | number } = {}): DrainJson {
    const host = validateName(hostName, 'host name');
    const deadlineMs = opts.deadline === undefined ? 10 * 60_000 : parseDuration(opts.deadline, 'deadline');
    const running = this.drains.get(host);
    if (running && running.state === 'draining') return running;
    this.setMaintenance(host, true);
    const vms = this.o.store.sqlite.prepare('SELECT name FROM vms WHERE host = ? ORDER BY name').all(host) as { name: string }[];
    const d: DrainJson = {
      host,
      state: 'draining',
      startedAt: new Date().toISOString(),
      finishedAt: null,
      deadlineMs,
      items: vms.map((v) => ({ vm: v.name, status: 'pending', migration: null, destination: null, error: null })),
    };
    this.drains.set(host, d);
    this.o.events.publish('host.drain.started', host, { vms: d.items.map((i) => i.vm) });
    void this.run(d).catch((err: unknown) => this.o.log?.warn({ host }, `drain ${host}: ${String(err)}`));
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

  private async run(d: DrainJson): Promise<void> {
    const t0 = Date.parse(d.startedAt);
    for (const item of d.items) {
      if (this.closed) return;
      if (Date.now() - t0 > d.deadlineMs) {
        item.status = 'skipped';
        item.error = { code: 'FERRY_E_MIGRATION_TIMEOUT', message: 'The drain deadline passed before this VM was tried.' };
        continue;
      }
      const vm = this.o.store.sqlite.prepare('SELECT host, state FROM vms WHERE name = ?').get(item.vm) as { host: string; state: string } | undefined;
      if (!vm || vm.host !== d.host) {
        item.status = 'moved'; // gone or moved meanwhile: nothing of it is left here
        continue;
      }
      item.status = 'migrating';
      try {
        const remaining = Math.max(1000, d.deadlineMs - (Date.now() - t0));
        let m: MigrationJson = await this.o.migrations.migrate(item.vm, { mode: vm.state === 'stopped' ? 'cold' : 'live', deadline: remaining });
        item.migration = m.id;
        item.destination = m.destination;
        while (!isFinal(m.state)) {
          await sleep(this.o.pollMs ?? 200);
          m = this.o.migrations.jobs.mustGet(m.id);
        }
        item.status = m.state === 'completed' ? 'moved' : 'failed';
        item.error = m.error;
      } catch (err) {
        const fe = err instanceof FerryError ? err : new FerryError('FERRY_E_INTERNAL', String(err));
        item.status = 'failed';
        item.error = { code: fe.code, message: fe.message };
      }
      this.o.events.publish('host.drain.progress', d.host, { vm: item.vm, status: item.status, migration: item.migration });
    }
    d.state = d.items.every((i) => i.status === 'moved') ? 'drained' : 'incomplete';
    d.finishedAt = new Date().toISOString();
    this.o.events.publish(`host.drain.${d.state}`, d.host, { items: d.items });
  }
}
