/**
 * The durable migration job: one row per migration, whose `state` changes only through `transition`, an
 * SQL compare-and-set (`UPDATE … WHERE id = ? AND state = ?`) along the edges of src/common/states.ts.
 * The phase is persisted before each step that cannot be undone, so that a controller restarted at any
 * moment knows exactly where each job stood. Every change is published as an event.
 */
import { randomUUID } from 'node:crypto';
import { dialectSql, isConstraintError, type DialectSql, type SyncSql } from '../store/sync.ts';
import { FerryError } from '../../common/errors.ts';
import type { EscalationRecord, GuestProbe, MigrationJson, MigrationPrediction, MigrationProgress, SteeringRecord } from '../../common/migration.ts';
import type { MigrationPolicy } from '../../common/policy.ts';
import {
  ACTIVE_STATES,
  canTransition,
  isFinal,
  type MigrationMode,
  type MigrationPhase,
  type MigrationState,
} from '../../common/states.ts';

interface Row {
  id: string;
  vm: string;
  source: string;
  destination: string;
  mode: string;
  state: string;
  phase: string;
  qemu_status: string | null;
  policy: string;
  prediction: string | null;
  started_at: string;
  finished_at: string | null;
  total_ms: number | null;
  qemu_total_ms: number | null;
  downtime_ms: number | null;
  guest_downtime_ms: number | null;
  guest_downtime_probe: string | null;
  memory_bytes: number | null;
  transferred_bytes: number | null;
  iterations: number | null;
  escalations: string;
  progress: string | null;
  why: string | null;
  prepared: string | null;
  cancel_requested: number;
  error_code: string | null;
  error_message: string | null;
  updated_at: string;
  timeline: string;
  waiting: string | null;
  images: string | null;
  priority: number;
  queue: string | null;
  actions: string;
  tuning: string | null;
}

/** Figures a transition may record along with the new state. */
export interface JobPatch {
  phase?: MigrationPhase;
  qemuStatus?: string | null;
  finishedAt?: string;
  totalMs?: number | null;
  qemuTotalMs?: number | null;
  downtimeMs?: number | null;
  guestDowntimeMs?: number | null;
  guestDowntimeProbe?: GuestProbe | null;
  memoryBytes?: number | null;
  transferredBytes?: number | null;
  iterations?: number | null;
  progress?: MigrationProgress | null;
  prepared?: unknown;
  waiting?: MigrationJson['waiting'];
  images?: MigrationJson['images'];
  /** The request's caps, changed by steering (`ferry migration set`). */
  policy?: MigrationPolicy;
  queue?: MigrationJson['queue'];
  tuning?: MigrationJson['tuning'];
  error?: { code: string; message: string } | null;
}

const COLUMNS: Record<Exclude<keyof JobPatch, 'error'>, { col: string; json?: boolean }> = {
  phase: { col: 'phase' },
  qemuStatus: { col: 'qemu_status' },
  finishedAt: { col: 'finished_at' },
  totalMs: { col: 'total_ms' },
  qemuTotalMs: { col: 'qemu_total_ms' },
  downtimeMs: { col: 'downtime_ms' },
  guestDowntimeMs: { col: 'guest_downtime_ms' },
  guestDowntimeProbe: { col: 'guest_downtime_probe' },
  memoryBytes: { col: 'memory_bytes' },
  transferredBytes: { col: 'transferred_bytes' },
  iterations: { col: 'iterations' },
  progress: { col: 'progress', json: true },
  prepared: { col: 'prepared', json: true },
  waiting: { col: 'waiting', json: true },
  images: { col: 'images', json: true },
  policy: { col: 'policy', json: true },
  queue: { col: 'queue', json: true },
  tuning: { col: 'tuning', json: true },
};

function patchSql(patch: JobPatch): { sets: string[]; values: unknown[] } {
  const sets: string[] = [];
  const values: unknown[] = [];
  for (const [k, v] of Object.entries(patch) as [keyof JobPatch, unknown][]) {
    if (v === undefined) continue;
    if (k === 'error') {
      const e = v as JobPatch['error'];
      sets.push('error_code = ?', 'error_message = ?');
      values.push(e?.code ?? null, e?.message ?? null);
      continue;
    }
    const c = COLUMNS[k];
    sets.push(`${c.col} = ?`);
    values.push(c.json ? (v === null ? null : JSON.stringify(v)) : v);
  }
  return { sets, values };
}

/**
 * Appends `{at, state, phase}` to the job's timeline in the same UPDATE. Right-hand sides see the old row,
 * so the new state and phase are bound (NULL = unchanged, then the old value is the current one).
 */
const timelineAppend = (d: DialectSql): string =>
  `timeline = ${d.jsonAppend('timeline', d.jsonObject([['at', 'CAST(? AS TEXT)'], ['state', 'COALESCE(?, state)'], ['phase', 'COALESCE(?, phase)']]))}`;

/** Does `vm` have a migration job that is not final (its owner writes the VM's row meanwhile)? */
export function hasActiveJob(sql: SyncSql, vm: string): boolean {
  return sql.prepare(`SELECT 1 FROM migrations WHERE vm = ? AND state IN (${ACTIVE_STATES.map(() => '?').join(',')}) LIMIT 1`).get(vm, ...ACTIVE_STATES) !== undefined;
}

export type JobListener = (type: string, job: MigrationJson) => void;

export interface NewJob {
  vm: string;
  source: string;
  destination: string;
  mode: MigrationMode;
  policy: MigrationPolicy;
  why: MigrationJson['why'];
  /** Higher starts first (queue.ts); 0 by default. */
  priority?: number;
}

export class JobStore {
  private readonly d: DialectSql;

  constructor(
    private readonly sql: SyncSql,
    private readonly listener: JobListener = () => {},
    /**
     * With controllers sharing the store (docs/ha.md): the term this one leads in. A transition then also
     * needs the lease row to be in that term, in the same statement, so that a deposed leader that has not
     * noticed yet cannot move a job the new leader drives.
     */
    private readonly term?: () => number | undefined,
  ) {
    this.d = dialectSql(sql.dialect);
  }

  /** Inserts a queued job; a second active job for the same VM is refused by the unique index. */
  create(j: NewJob): MigrationJson {
    const id = `m-${randomUUID().slice(0, 8)}`;
    const now = new Date().toISOString();
    try {
      this.sql
        .prepare(
          `INSERT INTO migrations (id, vm, source, destination, mode, state, phase, policy, why, priority, started_at, updated_at, timeline)
           VALUES (?, ?, ?, ?, ?, 'queued', 'begin', ?, ?, ?, ?, ?, ${this.d.jsonArray([this.d.jsonObject([['at', 'CAST(? AS TEXT)'], ['state', "'queued'"], ['phase', "'begin'"]])])})`,
        )
        .run(id, j.vm, j.source, j.destination, j.mode, JSON.stringify(j.policy), JSON.stringify(j.why), j.priority ?? 0, now, now, now);
    } catch (err) {
      if (isConstraintError(err)) {
        const active = this.activeFor(j.vm);
        throw new FerryError('FERRY_E_MIGRATION_ACTIVE', `VM ${j.vm} is already being migrated (${active?.id ?? '?'}).`, {
          cause: err,
          details: active ? { migration: active.id } : {},
        });
      }
      throw err;
    }
    const job = this.mustGet(id);
    this.listener('migration.created', job);
    return job;
  }

  get(id: string): MigrationJson | null {
    const row = this.sql.prepare('SELECT * FROM migrations WHERE id = ?').get(id) as Row | undefined;
    return row ? this.toJson(row) : null;
  }

  private toJson(r: Row): MigrationJson {
    const pending = (
      this.sql.prepare('SELECT host, action, attempts, next_at, last_error FROM migration_pending WHERE migration = ?').all(r.id) as {
        host: string;
        action: string;
        attempts: number;
        next_at: string;
        last_error: string | null;
      }[]
    ).map((p) => ({ host: p.host, action: p.action, attempts: p.attempts, nextAt: p.next_at, lastError: p.last_error }));
    return { ...toJson(r), pending };
  }

  mustGet(id: string): MigrationJson {
    const j = this.get(id);
    if (!j) throw new FerryError('FERRY_E_MIGRATION_NOT_FOUND', `No migration ${JSON.stringify(id)}.`);
    return j;
  }

  list(opts: { vm?: string; limit?: number } = {}): MigrationJson[] {
    const rows = (
      opts.vm === undefined
        ? this.sql.prepare('SELECT * FROM migrations ORDER BY started_at DESC LIMIT ?').all(opts.limit ?? 100)
        : this.sql
            .prepare('SELECT * FROM migrations WHERE vm = ? ORDER BY started_at DESC LIMIT ?')
            .all(opts.vm, opts.limit ?? 100)
    ) as Row[];
    return rows.map((r) => this.toJson(r));
  }

  /**
   * The newest completed live migrations between two hosts (either way) that ran uncapped by their request:
   * what they moved and how long QEMU took, the link's measured bandwidth (fleet/predict.ts).
   */
  completedBetween(a: string, b: string, limit: number): { id: string; transferredBytes: number; qemuTotalMs: number }[] {
    const rows = this.sql
      .prepare(
        `SELECT id, transferred_bytes, qemu_total_ms, policy FROM migrations
         WHERE state = 'completed' AND mode = 'live' AND ((source = ? AND destination = ?) OR (source = ? AND destination = ?))
           AND transferred_bytes > 0 AND qemu_total_ms > 0
         ORDER BY started_at DESC LIMIT ?`,
      )
      .all(a, b, b, a, limit * 4) as { id: string; transferred_bytes: number; qemu_total_ms: number; policy: string }[];
    return rows
      .filter((r) => ((JSON.parse(r.policy) as MigrationPolicy).bandwidthBytesPerSec ?? 0) === 0)
      .slice(0, limit)
      .map((r) => ({ id: r.id, transferredBytes: r.transferred_bytes, qemuTotalMs: r.qemu_total_ms }));
  }

  activeFor(vm: string): MigrationJson | null {
    const row = this.sql
      .prepare(`SELECT * FROM migrations WHERE vm = ? AND state IN (${ACTIVE_STATES.map(() => '?').join(',')})`)
      .get(vm, ...ACTIVE_STATES) as Row | undefined;
    return row ? this.toJson(row) : null;
  }

  listActive(): MigrationJson[] {
    return (
      this.sql
        .prepare(`SELECT * FROM migrations WHERE state IN (${ACTIVE_STATES.map(() => '?').join(',')})`)
        .all(...ACTIVE_STATES) as Row[]
    ).map((r) => this.toJson(r));
  }

  /** Every job that ended, oldest first (the metrics' history at a start). */
  listFinished(): MigrationJson[] {
    return (
      this.sql
        .prepare(`SELECT * FROM migrations WHERE state NOT IN (${ACTIVE_STATES.map(() => '?').join(',')}) ORDER BY started_at`)
        .all(...ACTIVE_STATES) as Row[]
    ).map((r) => this.toJson(r));
  }

  /**
   * The one guarded transition: moves `id` from `from` to `to` only if it is still in `from` (compare-and-set),
   * recording the patch in the same statement. Throws FERRY_E_VM_STATE if the job moved meanwhile.
   */
  transition(id: string, from: MigrationState, to: MigrationState, patch: JobPatch = {}): MigrationJson {
    if (!canTransition(from, to)) {
      throw new FerryError('FERRY_E_INTERNAL', `Migration ${id}: ${from} → ${to} is not a legal transition.`);
    }
    const p = patchSql(isFinal(to) && patch.finishedAt === undefined ? { ...patch, finishedAt: new Date().toISOString() } : patch);
    // -1: no term is led, so no lease row matches.
    const term = this.term === undefined ? undefined : (this.term() ?? -1);
    const fenced = term === undefined ? '' : ' AND EXISTS (SELECT 1 FROM controller_lease WHERE id = 1 AND term = ?)';
    const res = this.sql
      .prepare(`UPDATE migrations SET ${['state = ?', ...p.sets, 'updated_at = ?', timelineAppend(this.d)].join(', ')} WHERE id = ? AND state = ?${fenced}`)
      .run(to, ...p.values, new Date().toISOString(), new Date().toISOString(), to, patch.phase ?? null, id, from, ...(term === undefined ? [] : [term]));
    if (res.changes !== 1 && term !== undefined) {
      const lease = this.sql.prepare('SELECT term FROM controller_lease WHERE id = 1').get() as { term: number } | undefined;
      if (lease?.term !== term) {
        throw new FerryError('FERRY_E_STALE_TERM', `Migration ${id}: this controller's term (${term < 0 ? 'none' : term}) is over (the store is in term ${lease?.term ?? '?'}): it moves no job.`, {
          details: { newestTerm: lease?.term ?? null, requestTerm: term },
        });
      }
    }
    if (res.changes !== 1) {
      const now = this.get(id);
      throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is ${now?.state ?? 'gone'}, not ${from}.`, {
        details: { expected: from, actual: now?.state ?? null },
      });
    }
    const job = this.mustGet(id);
    this.listener(`migration.${to}`, job);
    return job;
  }

  /** Records figures without changing the state (phase, progress, QEMU's status). Persisted before acting. */
  update(id: string, patch: JobPatch): MigrationJson {
    const p = patchSql(patch);
    if (p.sets.length > 0) {
      // A new phase is a step of the timeline; progress samples are not.
      const sets = [...p.sets, 'updated_at = ?', ...(patch.phase !== undefined ? [timelineAppend(this.d)] : [])];
      const now = new Date().toISOString();
      this.sql
        .prepare(`UPDATE migrations SET ${sets.join(', ')} WHERE id = ?`)
        .run(...p.values, now, ...(patch.phase !== undefined ? [now, null, patch.phase] : []), id);
    }
    const job = this.mustGet(id);
    this.listener(patch.phase !== undefined ? 'migration.phase' : 'migration.progress', job);
    return job;
  }

  /**
   * Keeps the prediction a job was started with. Stored, not published: it is made alongside the start
   * and may land after the job ended, and a late event must not look like progress.
   */
  setPrediction(id: string, prediction: MigrationPrediction): void {
    this.sql.prepare('UPDATE migrations SET prediction = ? WHERE id = ?').run(JSON.stringify(prediction), id);
  }

  addEscalation(id: string, e: EscalationRecord): void {
    this.sql
      .prepare(`UPDATE migrations SET escalations = ${this.d.jsonAppend('escalations', '?')}, updated_at = ? WHERE id = ?`)
      .run(JSON.stringify(e), new Date().toISOString(), id);
    this.listener('migration.escalation', this.mustGet(id));
  }

  /** Records one steering action (the user's, or the queue's re-share of a link) and publishes it. */
  addAction(id: string, a: SteeringRecord): MigrationJson {
    this.sql
      .prepare(`UPDATE migrations SET actions = ${this.d.jsonAppend('actions', '?')}, updated_at = ? WHERE id = ?`)
      .run(JSON.stringify(a), new Date().toISOString(), id);
    const job = this.mustGet(id);
    this.listener('migration.steered', job);
    return job;
  }

  requestCancel(id: string): MigrationJson {
    const job = this.mustGet(id);
    // Saying "cancel requested" of a job that ended would hide how it ended (a completed move stays done).
    if (isFinal(job.state)) {
      throw new FerryError('FERRY_E_MIGRATION_FINISHED', `Migration ${id} has ended already (${job.state}): there is nothing to cancel.`, { details: { state: job.state } });
    }
    // A job waiting for an agent may still be told to give up (it then rolls back if the truth allows it).
    if (job.state === 'postcopy' || job.state === 'switching') {
      throw new FerryError('FERRY_E_VM_STATE', `Migration ${id} is ${job.state}: past the point where it can be cancelled.`);
    }
    this.sql.prepare('UPDATE migrations SET cancel_requested = 1, updated_at = ? WHERE id = ?').run(new Date().toISOString(), id);
    return this.mustGet(id);
  }

  cancelRequested(id: string): boolean {
    const r = this.sql.prepare('SELECT cancel_requested FROM migrations WHERE id = ?').get(id) as { cancel_requested: number } | undefined;
    return r?.cancel_requested === 1;
  }

  prepared<T>(id: string): T | null {
    const r = this.sql.prepare('SELECT prepared FROM migrations WHERE id = ?').get(id) as { prepared: string | null } | undefined;
    return r?.prepared ? (JSON.parse(r.prepared) as T) : null;
  }
}

function parse<T>(s: string | null): T | null {
  return s === null ? null : (JSON.parse(s) as T);
}

function toJson(r: Row): Omit<MigrationJson, 'pending'> {
  return {
    id: r.id,
    vm: r.vm,
    source: r.source,
    destination: r.destination,
    mode: r.mode as MigrationMode,
    state: r.state as MigrationState,
    phase: r.phase as MigrationPhase,
    qemuStatus: r.qemu_status,
    policy: JSON.parse(r.policy) as MigrationPolicy,
    prediction: parse(r.prediction),
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    totalMs: r.total_ms,
    qemuTotalMs: r.qemu_total_ms,
    downtimeMs: r.downtime_ms,
    guestDowntimeMs: r.guest_downtime_ms,
    guestDowntimeProbe: r.guest_downtime_probe as GuestProbe | null,
    memoryBytes: r.memory_bytes,
    transferredBytes: r.transferred_bytes,
    iterations: r.iterations,
    escalations: JSON.parse(r.escalations) as EscalationRecord[],
    progress: parse(r.progress),
    why: parse(r.why),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? '' },
    timeline: JSON.parse(r.timeline ?? '[]') as MigrationJson['timeline'],
    waiting: parse(r.waiting ?? null),
    images: parse<MigrationJson['images']>(r.images ?? null) ?? [],
    priority: r.priority,
    queue: parse(r.queue),
    actions: JSON.parse(r.actions) as SteeringRecord[],
    tuning: parse(r.tuning),
  };
}
