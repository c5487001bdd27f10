/**
 * Agent calls a migration still owes after its verdict, persisted so that neither an unreachable agent
 * nor a controller restart can make Ferry forget them: discard a destination that kept a paused copy,
 * confirm (remove) a source that handed its guest over, resume a source against the destination's
 * discard receipt. Each is retried with backoff until the agent answers; the store row goes only when the
 * call succeeded or the agent said there is nothing left to do.
 */
import type { SyncSql } from '../store/sync.ts';
import type { DiscardReceipt } from '../../common/agent-migration.ts';

export const PENDING_ACTIONS = ['discard', 'confirm', 'resume'] as const;
export type PendingAction = (typeof PENDING_ACTIONS)[number];

export interface PendingCall {
  migration: string;
  host: string;
  action: PendingAction;
  body: { success: boolean; receipt?: DiscardReceipt };
  attempts: number;
  nextAt: string;
  lastError: string | null;
}

interface Row {
  migration: string;
  host: string;
  action: string;
  body: string;
  attempts: number;
  next_at: string;
  last_error: string | null;
}

const toCall = (r: Row): PendingCall => ({
  migration: r.migration,
  host: r.host,
  action: r.action as PendingAction,
  body: JSON.parse(r.body) as PendingCall['body'],
  attempts: r.attempts,
  nextAt: r.next_at,
  lastError: r.last_error,
});

/** 2 s, doubling, at most a minute between tries. */
export function backoffMs(attempts: number): number {
  return Math.min(60_000, 2000 * 2 ** Math.min(attempts, 5));
}

export class PendingCalls {
  constructor(private readonly sql: SyncSql) {}

  add(migration: string, host: string, action: PendingAction, body: PendingCall['body'], error: string): void {
    const now = new Date().toISOString();
    this.sql
      .prepare(
        `INSERT INTO migration_pending (migration, host, action, body, attempts, next_at, last_error, created_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)
         ON CONFLICT (migration, host, action) DO UPDATE SET body = excluded.body, last_error = excluded.last_error`,
      )
      .run(migration, host, action, JSON.stringify(body), new Date(Date.now() + backoffMs(0)).toISOString(), error, now);
  }

  due(now = new Date()): PendingCall[] {
    return (this.sql.prepare('SELECT * FROM migration_pending WHERE next_at <= ? ORDER BY next_at').all(now.toISOString()) as Row[]).map(toCall);
  }


  /** Is there any call owed to `host` about `vm`? (Reconcile leaves such a copy to the sweeper.) */
  owedTo(host: string, vm: string): boolean {
    return (
      this.sql
        .prepare('SELECT 1 FROM migration_pending p JOIN migrations m ON m.id = p.migration WHERE p.host = ? AND m.vm = ? LIMIT 1')
        .get(host, vm) !== undefined
    );
  }

  done(c: Pick<PendingCall, 'migration' | 'host' | 'action'>): void {
    this.sql.prepare('DELETE FROM migration_pending WHERE migration = ? AND host = ? AND action = ?').run(c.migration, c.host, c.action);
  }

  retryLater(c: PendingCall, error: string): void {
    const attempts = c.attempts + 1;
    this.sql
      .prepare('UPDATE migration_pending SET attempts = ?, next_at = ?, last_error = ? WHERE migration = ? AND host = ? AND action = ?')
      .run(attempts, new Date(Date.now() + backoffMs(attempts)).toISOString(), error, c.migration, c.host, c.action);
  }
}
