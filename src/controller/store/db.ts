/**
 * The controller's store: its tables as Kysely types, and opening it where `--store` says — a SQLite file
 * (WAL, foreign keys on; the default) or a PostgreSQL database (postgres.ts) — with pending schema
 * migrations applied. Either kind also has a synchronous handle (sync.ts) for the controller's guarded
 * transitions; a SQLite store exposes its raw better-sqlite3 handle too.
 */
import BetterSqlite3 from 'better-sqlite3';
import type { Database } from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, openSync } from 'node:fs';
import { Kysely, SqliteDialect, type Generated } from 'kysely';
import { MIGRATIONS } from './migrations.ts';
import { sqliteSync, type StoreDialect, type SyncSql } from './sync.ts';
import { pendingMigrations, type Migration } from './versions.ts';

export interface HostsTable {
  name: string;
  url: string;
  /** As seen by heartbeats: `ready`, `unreachable` or `incompatible` (protocol). Maintenance is its own flag. */
  state: string;
  maintenance: number;
  /** HostInventory JSON, from the last successful heartbeat. */
  inventory: string | null;
  last_seen_at: string | null;
  joined_at: string;
}

export interface VmsTable {
  name: string;
  host: string;
  /** `creating` while a create is in flight, then one of VM_STATES. */
  state: string;
  /** VmSpec JSON. */
  spec: string;
  boot_id: string | null;
  /** 1 when the guest answered during its current boot (VmStatus.ready), else 0. */
  ready: number;
  ip: string | null;
  created_at: string;
  updated_at: string;
}

export interface NetworksTable {
  name: string;
  cidr: string;
  gateway: string | null;
}

export interface IpAllocationsTable {
  network: string;
  ip: string;
  vm: string;
}

export interface JoinTokensTable {
  id: string;
  secret_hash: string;
  created_at: string;
  expires_at: string;
  used_at: string | null;
  used_by: string | null;
}

export interface ApiTokensTable {
  id: string;
  secret_hash: string;
  role: string;
  created_at: string;
}

export interface EventsTable {
  seq: Generated<number>;
  at: string;
  type: string;
  subject: string;
  /** JSON. */
  data: string;
}

export interface DB {
  hosts: HostsTable;
  vms: VmsTable;
  networks: NetworksTable;
  ip_allocations: IpAllocationsTable;
  join_tokens: JoinTokensTable;
  api_tokens: ApiTokensTable;
  events: EventsTable;
  controller_lease: ControllerLeaseTable;
}

export interface ControllerLeaseTable {
  id: number;
  /** The leading controller's id ('' before the first election). */
  holder: string;
  /** Its public API URL, where the others send writers. */
  url: string;
  term: number;
  /** Milliseconds since the epoch, on the store's clock. */
  expires_at: number;
}

export type { StoreDialect };

/** A store of either kind, through Kysely only: what code that runs on both uses. */
export interface SqlStore {
  readonly db: Kysely<DB>;
  readonly dialect: StoreDialect;
  /** Versions applied by this open (empty when the schema was already current). */
  readonly applied: number[];
  close(): Promise<void>;
}

/** The controller's store: Kysely for code that awaits, and the synchronous handle its transitions use (sync.ts). */
export interface Store extends SqlStore {
  readonly sql: SyncSql;
}

/** A SQLite store, with its raw better-sqlite3 handle (pragmas, bulk loads). */
export interface SqliteStore extends Store {
  readonly dialect: 'sqlite';
  readonly sqlite: Database;
}

/** Applies the migrations not yet recorded; each in a transaction with its bookkeeping row. */
export function migrate(sqlite: Database, migrations: readonly Migration[] = MIGRATIONS): number[] {
  sqlite.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT`);
  const done = new Set(
    (sqlite.prepare('SELECT version FROM schema_migrations').all() as { version: number }[]).map((r) => r.version),
  );
  const applied: number[] = [];
  for (const m of pendingMigrations(done, migrations)) {
    sqlite.transaction(() => {
      sqlite.exec(m.sql);
      sqlite
        .prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)')
        .run(m.version, m.name, new Date().toISOString());
    })();
    applied.push(m.version);
  }
  return applied;
}

/** The store holds token hashes and the whole cluster's state: the file and its WAL and SHM are 0600. */
export const STORE_FILE_MODE = 0o600;

function restrictStoreFiles(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) if (existsSync(f)) chmodSync(f, STORE_FILE_MODE);
}

/** Distinct SQL texts whose compiled statements a store keeps (the code has a few hundred; dynamic ones come and go). */
const STATEMENT_CACHE_SIZE = 1000;

/**
 * Makes `sqlite.prepare` hand back the statement it compiled before for the same SQL: the code prepares
 * at the point of use, and compiling was a tenth of the API's CPU at fleet size (BENCHMARKS.md, the API
 * under load). Safe because nothing here changes a statement's mode (pluck, raw, expand) or iterates one
 * while calling it again; SQLite recompiles a cached statement itself after a schema change.
 */
export function cachePreparedStatements(sqlite: Database): void {
  const compile = sqlite.prepare.bind(sqlite);
  const cache = new Map<string, ReturnType<typeof compile>>();
  sqlite.prepare = ((source: string) => {
    let stmt = cache.get(source);
    if (stmt === undefined) {
      stmt = compile(source);
      if (cache.size >= STATEMENT_CACHE_SIZE) cache.delete(cache.keys().next().value!);
      cache.set(source, stmt);
    }
    return stmt;
  }) as typeof sqlite.prepare;
}

export function openStore(file: string): SqliteStore {
  // SQLite creates the WAL and SHM files with the database file's own mode, so the file is made 0600
  // before SQLite opens it; a store created by an older Ferry (0644 under the usual umask) is fixed too.
  closeSync(openSync(file, 'a', STORE_FILE_MODE));
  restrictStoreFiles(file);
  const sqlite = new BetterSqlite3(file);
  cachePreparedStatements(sqlite);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  const applied = migrate(sqlite);
  restrictStoreFiles(file); // the WAL and SHM files exist from here on
  const db = new Kysely<DB>({ dialect: new SqliteDialect({ database: sqlite }) });
  return {
    db,
    dialect: 'sqlite',
    sqlite,
    sql: sqliteSync(sqlite),
    applied,
    close: async () => {
      // Kysely's destroy closes the better-sqlite3 handle too.
      await db.destroy();
    },
  };
}

export const nowIso = (): string => new Date().toISOString();
