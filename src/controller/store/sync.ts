/**
 * The controller's synchronous SQL handle: the few calls its code makes (prepare → get / all / run,
 * transaction, exec), served by better-sqlite3 on a SQLite store and by sync-postgres.ts on PostgreSQL.
 *
 * Synchronous on purpose: a guarded transition reads, checks and writes with no other code of this process
 * running in between, as it always has. Between controllers sharing one PostgreSQL database the guards are
 * the statements' own conditions (`WHERE state = ?`, the lease's term), which hold under READ COMMITTED.
 *
 * SQL written here must run on both engines: `?` placeholders (translated to `$n` for PostgreSQL), camelCase
 * aliases in double quotes (PostgreSQL folds unquoted ones to lower case), and, for what the two spell
 * differently, the helpers of `dialectSql`.
 */
import type { Database } from 'better-sqlite3';

/** Which engine a store runs on. */
export type StoreDialect = 'sqlite' | 'postgres';

export interface SyncStatement<P extends unknown[] = unknown[], R = unknown> {
  get(...params: P): R | undefined;
  all(...params: P): R[];
  run(...params: P): { changes: number };
}

export interface SyncSql {
  readonly dialect: StoreDialect;
  prepare<P extends unknown[] = unknown[], R = unknown>(source: string): SyncStatement<P, R>;
  /** `fn` wrapped in BEGIN … COMMIT (ROLLBACK when it throws); nested calls are savepoints. */
  transaction<A extends unknown[], T>(fn: (...args: A) => T): (...args: A) => T;
  /** Statements without parameters or results, `;`-separated. */
  exec(source: string): void;
}

/** The SQLite handle as a SyncSql: better-sqlite3's own statements and transactions, nothing in between. */
export function sqliteSync(db: Database): SyncSql {
  return {
    dialect: 'sqlite',
    prepare: <P extends unknown[], R>(source: string) => db.prepare(source) as unknown as SyncStatement<P, R>,
    transaction: (fn) => db.transaction(fn),
    exec: (source) => void db.exec(source),
  };
}

/** No LIMIT, said the same way on both engines (SQLite's -1 is an error in PostgreSQL). */
export const NO_LIMIT = 2_147_483_647;

/** The SQL of what the two engines spell differently. */
export interface DialectSql {
  /** A number in a JSON text column: `col`'s top-level `key` (NULL when absent). */
  jsonNumber(col: string, key: string): string;
  /** `col` (a JSON array as text) with one more element, `element` being SQL that yields JSON text. */
  jsonAppend(col: string, element: string): string;
  /** A JSON object as text from pairs of a literal key and SQL yielding TEXT (a `?` must be CAST … AS TEXT). */
  jsonObject(pairs: [string, string][]): string;
  /** A JSON array as text of the given JSON-text elements. */
  jsonArray(elements: string[]): string;
  /** The values of `col` joined by `sep` (a literal), in no particular order. */
  groupConcat(col: string, sep: string): string;
}

const quote = (s: string): string => `'${s.replaceAll("'", "''")}'`;

export function dialectSql(dialect: StoreDialect): DialectSql {
  if (dialect === 'sqlite') {
    return {
      jsonNumber: (col, key) => `json_extract(${col}, ${quote(`$.${key}`)})`,
      jsonAppend: (col, element) => `json_insert(${col}, '$[#]', json(${element}))`,
      jsonObject: (pairs) => `json_object(${pairs.map(([k, v]) => `${quote(k)}, ${v}`).join(', ')})`,
      jsonArray: (elements) => `json_array(${elements.map((e) => `json(${e})`).join(', ')})`,
      groupConcat: (col, sep) => `group_concat(${col}, ${quote(sep)})`,
    };
  }
  return {
    jsonNumber: (col, key) => `(${col}::jsonb ->> ${quote(key)})::float8`,
    jsonAppend: (col, element) => `(${col}::jsonb || jsonb_build_array((${element})::jsonb))::text`,
    jsonObject: (pairs) => `jsonb_build_object(${pairs.map(([k, v]) => `${quote(k)}, ${v}`).join(', ')})::text`,
    jsonArray: (elements) => `jsonb_build_array(${elements.map((e) => `(${e})::jsonb`).join(', ')})::text`,
    groupConcat: (col, sep) => `string_agg(${col}, ${quote(sep)})`,
  };
}

/** A statement refused by a UNIQUE, FOREIGN KEY, NOT NULL or CHECK constraint, on either engine. */
export function isConstraintError(err: unknown): boolean {
  const code = String((err as { code?: unknown } | null)?.code ?? '');
  return code.startsWith('SQLITE_CONSTRAINT') || /^23[0-9A-Z]{3}$/.test(code);
}
