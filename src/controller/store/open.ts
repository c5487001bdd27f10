/** Opening the store `ferry server --store` names: which kind, from the location's form, and opening it. */
import { FerryError } from '../../common/errors.ts';
import { openStore, type SqlStore, type Store } from './db.ts';
import { openPostgresStore } from './postgres.ts';
import { PostgresSync } from './sync-postgres.ts';

/**
 * Where `ferry server --store` points: `postgres://…` / `postgresql://…` (a libpq URL), `sqlite:PATH`,
 * or a bare file path (SQLite).
 */
export type StoreLocation = { kind: 'sqlite'; file: string } | { kind: 'postgres'; url: string };

export function parseStoreLocation(s: string): StoreLocation {
  if (/^postgres(ql)?:\/\//.test(s)) {
    try {
      new URL(s);
    } catch {
      throw new FerryError('FERRY_E_BAD_STORE', `--store ${JSON.stringify(s)} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB).`);
    }
    return { kind: 'postgres', url: s };
  }
  const file = s.startsWith('sqlite:') ? s.slice('sqlite:'.length) : s;
  if (file === '' || /^[a-z][a-z0-9+.-]*:\/\//i.test(file)) {
    throw new FerryError('FERRY_E_BAD_STORE', `--store ${JSON.stringify(s)}: give a SQLite file (PATH or sqlite:PATH) or postgres://… .`);
  }
  return { kind: 'sqlite', file };
}

/** Opens the store at `location` (see parseStoreLocation), schema migrations applied. */
export async function openSqlStore(location: string): Promise<SqlStore> {
  const where = parseStoreLocation(location);
  return where.kind === 'sqlite' ? openStore(where.file) : openPostgresStore(where.url);
}

/**
 * The controller's store at `location`: on PostgreSQL, Kysely's pool and the synchronous handle
 * (sync-postgres.ts, one more connection) side by side on the same database.
 */
export async function openControllerStore(location: string): Promise<Store> {
  const where = parseStoreLocation(location);
  if (where.kind === 'sqlite') return openStore(where.file);
  const store = await openPostgresStore(where.url);
  const handle = new PostgresSync(where.url);
  try {
    handle.prepare('SELECT 1').get();
  } catch (err) {
    handle.close();
    await store.close();
    throw err;
  }
  return {
    ...store,
    sql: handle,
    close: async () => {
      handle.close();
      await store.close();
    },
  };
}
