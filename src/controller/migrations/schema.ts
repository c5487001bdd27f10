/** Schema migration 2: the migration jobs table. At most one active job per VM is enforced by the store itself. */
import type { Migration } from '../store/versions.ts';
import { ACTIVE_STATES } from '../../common/states.ts';

export const MIGRATION_JOBS_SCHEMA: Migration = {
  version: 2,
  name: 'migration jobs',
  sql: `
      CREATE TABLE migrations (
        id                TEXT PRIMARY KEY,
        vm                TEXT NOT NULL,
        source            TEXT NOT NULL,
        destination       TEXT NOT NULL,
        mode              TEXT NOT NULL,
        state             TEXT NOT NULL,
        phase             TEXT NOT NULL,
        qemu_status       TEXT,
        policy            TEXT NOT NULL,
        prediction        TEXT,
        started_at        TEXT NOT NULL,
        finished_at       TEXT,
        total_ms          REAL,
        qemu_total_ms     REAL,
        downtime_ms       REAL,
        guest_downtime_ms REAL,
        memory_bytes      INTEGER,
        transferred_bytes INTEGER,
        iterations        INTEGER,
        escalations       TEXT NOT NULL DEFAULT '[]',
        progress          TEXT,
        why               TEXT,
        prepared          TEXT,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        error_code        TEXT,
        error_message     TEXT,
        updated_at        TEXT NOT NULL
      ) STRICT;
      CREATE INDEX migrations_vm ON migrations(vm, started_at);
      CREATE UNIQUE INDEX migrations_one_active ON migrations(vm)
        WHERE state IN (${ACTIVE_STATES.map((s) => `'${s}'`).join(', ')});
    `,
};

/** Schema migration 3: each job keeps its timeline (every state and phase entered, with the time). */
export const MIGRATION_TIMELINE_SCHEMA: Migration = {
  version: 3,
  name: 'migration timeline',
  sql: `ALTER TABLE migrations ADD COLUMN timeline TEXT NOT NULL DEFAULT '[]'`,
};

/**
 * Schema migration 4: the truth rule. Jobs waiting for an agent (`awaiting_*`) are active too, so the
 * one-active-job index is rebuilt over the new list; and the agent calls a finished job still owes (discard
 * a destination, confirm or resume a source whose agent did not answer) are persisted, so that a controller
 * restart cannot forget them.
 */
export const MIGRATION_TRUTH_SCHEMA: Migration = {
  version: 4,
  name: 'awaiting states, pending agent calls',
  sql: `
      DROP INDEX migrations_one_active;
      CREATE UNIQUE INDEX migrations_one_active ON migrations(vm)
        WHERE state IN ('queued', 'preparing', 'transferring', 'postcopy', 'switching', 'awaiting_destination', 'awaiting_source');
      ALTER TABLE migrations ADD COLUMN waiting TEXT;
      CREATE TABLE migration_pending (
        migration  TEXT NOT NULL REFERENCES migrations(id) ON DELETE CASCADE,
        host       TEXT NOT NULL,
        action     TEXT NOT NULL,
        body       TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (migration, host, action)
      ) STRICT;
    `,
};

/** Schema migration 7: which probe measured a job's guest downtime (`udp`, `icmp`; NULL when none ran). */
export const MIGRATION_PROBE_SCHEMA: Migration = {
  version: 7,
  name: 'guest downtime probe',
  sql: `ALTER TABLE migrations ADD COLUMN guest_downtime_probe TEXT CHECK (guest_downtime_probe IN ('udp', 'icmp'))`,
};

/**
 * Schema migration 10: the queue and steering. A job's priority (higher starts first), why a queued job
 * waits (its place and the limit it waits for), the steering actions applied to it (`ferry migration set |
 * postcopy | complete`, the queue's re-share of a link), and what QEMU runs it with now (max-bandwidth,
 * downtime limit).
 */
export const MIGRATION_QUEUE_SCHEMA: Migration = {
  version: 10,
  name: 'migration queue and steering',
  sql: `
      ALTER TABLE migrations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE migrations ADD COLUMN queue TEXT;
      ALTER TABLE migrations ADD COLUMN actions TEXT NOT NULL DEFAULT '[]';
      ALTER TABLE migrations ADD COLUMN tuning TEXT
    `,
};
