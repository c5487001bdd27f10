/**
 * The PostgreSQL store: the same tables and schema versions as SQLite's (the migrations' SQL translated by
 * `postgresStatements`), through Kysely's PostgresDialect over a pg pool. Several controllers may open the
 * same database at once: migrations run under a transaction-scoped advisory lock, so one applies each
 * version and the others see it done.
 */
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { FerryError } from '../../common/errors.ts';
import type { DB, SqlStore } from './db.ts';
import { MIGRATIONS } from './migrations.ts';
import { pendingMigrations, postgresStatements, type Migration } from './versions.ts';

/** Any constant shared by every Ferry controller: the advisory lock taken while the schema changes. */
const MIGRATION_LOCK = 0x46455259; // "FERY"
const INT8_OID = 20;

// The store's 64-bit integers (counts, bytes, epoch milliseconds) stay far below 2^53: numbers, like SQLite's.
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

export async function migratePostgres(db: Kysely<DB>, migrations: readonly Migration[] = MIGRATIONS): Promise<number[]> {
  const applied: number[] = [];
  for (;;) {
    // One version per transaction, each decided under the lock: a controller starting beside another
    // waits for it rather than applying a version twice.
    const next = await db.transaction().execute(async (tx) => {
      await sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(tx);
      await sql`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`.execute(tx);
      const rows = await sql<{ version: number }>`SELECT version FROM schema_migrations`.execute(tx);
      const m = pendingMigrations(new Set(rows.rows.map((r) => r.version)), migrations)[0];
      if (m === undefined) return undefined;
      for (const statement of typeof m.postgres === 'object' ? m.postgres : postgresStatements(m.postgres ?? m.sql)) await sql.raw(statement).execute(tx);
      await sql`INSERT INTO schema_migrations (version, name, applied_at) VALUES (${m.version}, ${m.name}, ${new Date().toISOString()})`.execute(tx);
      return m.version;
    });
    if (next === undefined) return applied;
    applied.push(next);
  }
}

export async function openPostgresStore(url: string): Promise<SqlStore> {
  const pool = new pg.Pool({ connectionString: url, max: 10, types, connectionTimeoutMillis: 5_000 });
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
  try {
    const applied = await migratePostgres(db);
    return { db, dialect: 'postgres', applied, close: () => db.destroy() };
  } catch (err) {
    await db.destroy();
    if (err instanceof FerryError) throw err;
    // The URL may hold a password: name the host and database only.
    const u = new URL(url);
    throw new FerryError('FERRY_E_STORE_UNAVAILABLE', `Cannot open the PostgreSQL store at ${u.hostname || u.searchParams.get('host') || 'localhost'}:${u.port || 5432}${u.pathname}: ${(err as Error).message}`, { cause: err });
  }
}
