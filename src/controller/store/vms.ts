/**
 * The `vms` table's one writer. VM creation, reconciliation with the agents' reports and migrations all
 * change rows here, each through a method that says what it means; a change that must not overwrite a
 * concurrent one names the state it expects (compare-and-set), like the migration jobs do.
 */
import type { SyncSql } from './sync.ts';
import { nowIso, type VmsTable } from './db.ts';

export interface VmPatch {
  state?: string;
  host?: string;
  /** `undefined` keeps the boot id; `null` clears it. */
  bootId?: string | null;
  /** `undefined` keeps it (an agent that does not report readiness). */
  ready?: boolean;
}

export class VmRows {
  constructor(private readonly sql: SyncSql) {}

  get(name: string): VmsTable | undefined {
    return this.sql.prepare('SELECT * FROM vms WHERE name = ?').get(name) as VmsTable | undefined;
  }



  onHost(host: string): VmsTable[] {
    return this.sql.prepare('SELECT * FROM vms WHERE host = ?').all(host) as VmsTable[];
  }

  /** A row in state `creating` that holds the name while the agent starts the VM. */
  reserve(name: string, host: string, spec: unknown): void {
    const now = nowIso();
    this.sql
      .prepare("INSERT INTO vms (name, host, state, spec, boot_id, ip, created_at, updated_at) VALUES (?, ?, 'creating', ?, NULL, NULL, ?, ?)")
      .run(name, host, JSON.stringify(spec), now, now);
  }

  /** A VM an agent reports that the store did not know (adopted as it runs). */
  adopt(r: { name: string; host: string; state: string; spec: unknown; bootId: string | null; ip: string | null; createdAt: string }): void {
    this.sql
      .prepare('INSERT INTO vms (name, host, state, spec, boot_id, ip, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(r.name, r.host, r.state, JSON.stringify(r.spec), r.bootId, r.ip, r.createdAt, nowIso());
  }

  setSpec(name: string, spec: unknown, ip: string | null): void {
    this.sql.prepare('UPDATE vms SET spec = ?, ip = ? WHERE name = ?').run(JSON.stringify(spec), ip, name);
  }

  /** Applies `patch`; with `expect`, only while the row is still in that state. True when a row changed. */
  update(name: string, patch: VmPatch, expect?: string): boolean {
    const sets = ['updated_at = ?'];
    const values: unknown[] = [nowIso()];
    if (patch.state !== undefined) {
      sets.push('state = ?');
      values.push(patch.state);
    }
    if (patch.host !== undefined) {
      sets.push('host = ?');
      values.push(patch.host);
    }
    if (patch.bootId !== undefined) {
      sets.push('boot_id = ?');
      values.push(patch.bootId);
    }
    if (patch.ready !== undefined) {
      sets.push('ready = ?');
      values.push(patch.ready ? 1 : 0);
    }
    const where = expect === undefined ? 'WHERE name = ?' : 'WHERE name = ? AND state = ?';
    const res = this.sql.prepare(`UPDATE vms SET ${sets.join(', ')} ${where}`).run(...values, name, ...(expect === undefined ? [] : [expect]));
    return res.changes === 1;
  }

  /** Removes the row (its address goes with it, ON DELETE CASCADE); with `expect`, only in that state. */
  remove(name: string, expect?: string): void {
    if (expect === undefined) this.sql.prepare('DELETE FROM vms WHERE name = ?').run(name);
    else this.sql.prepare('DELETE FROM vms WHERE name = ? AND state = ?').run(name, expect);
  }
}
