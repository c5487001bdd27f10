/**
 * A synchronous SQL handle on PostgreSQL (the SyncSql of sync.ts): one connection, held by a worker thread
 * that runs the pg driver; the controller's thread posts a statement and blocks (Atomics.wait) until the
 * worker's answer is in the channel. A statement on a store nearby takes a fraction of a millisecond; one
 * that takes longer than `timeoutMs` fails with FERRY_E_STORE_UNAVAILABLE (its late answer is dropped).
 *
 * The worker's code is a string evaluated by Node (no file of its own), so that it runs the same from the
 * TypeScript sources and from ferry's bundle; it loads pg from where this module resolves it.
 */
import { createRequire } from 'node:module';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { FerryError } from '../../common/errors.ts';
import type { SyncSql, SyncStatement } from './sync.ts';

/** How long one statement may take before the controller gives up on it. */
const STATEMENT_TIMEOUT_MS = 15_000;

type Request = { text: string; values?: unknown[]; simple?: boolean } | { close: true };
type Reply = { id: number; rows: Record<string, unknown>[]; rowCount: number } | { id: number; error: { message: string; code?: string } };

// The worker: one pg.Client, reconnected on the next statement after it broke. int8 and numeric come back as
// numbers, like SQLite's integers (the store's counts, bytes and epoch milliseconds stay far below 2^53).
const WORKER = `
const { workerData } = require('node:worker_threads');
const pg = require(workerData.pgPath);
const { port, flag, url } = workerData;
const types = { getTypeParser: (oid, format) => (oid === 20 || oid === 1700) ? (v) => Number(v) : pg.types.getTypeParser(oid, format) };
let client = null;
async function connection() {
  if (client !== null) return client;
  const c = new pg.Client({ connectionString: url, types, connectionTimeoutMillis: 5000 });
  c.on('error', () => { if (client === c) client = null; });
  await c.connect();
  client = c;
  return c;
}
function answer(reply) {
  port.postMessage(reply);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}
port.on('message', async (req) => {
  if (req.close) {
    const c = client; client = null;
    try { if (c !== null) await c.end(); } catch {}
    answer({ id: req.id, rows: [], rowCount: 0 });
    port.close();
    return;
  }
  try {
    const c = await connection();
    const r = req.simple ? await c.query(req.text) : await c.query({ text: req.text, values: req.values });
    const last = Array.isArray(r) ? r[r.length - 1] : r;
    answer({ id: req.id, rows: (last && last.rows) || [], rowCount: (last && last.rowCount) || 0 });
  } catch (err) {
    if (client !== null && (err.code === undefined || /^E[A-Z]+$/.test(err.code) || String(err.code).startsWith('08') || String(err.code).startsWith('57P'))) {
      const c = client; client = null; c.end().catch(() => {});
    }
    answer({ id: req.id, error: { message: String(err && err.message), code: err && err.code } });
  }
});
`;

/** `?` placeholders to `$1…$n`, outside quoted strings and identifiers (the code's SQL has no comments). */
export function numberPlaceholders(sql: string): string {
  let out = '';
  let n = 0;
  let quote: string | null = null;
  for (const ch of sql) {
    if (quote !== null) {
      if (ch === quote) quote = null;
      out += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      out += ch;
    } else if (ch === '?') {
      out += `$${++n}`;
    } else {
      out += ch;
    }
  }
  return out;
}

/** An error from PostgreSQL, with its SQLSTATE as `code` (class 23: a constraint; see isConstraintError). */
export class PostgresError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
    this.name = 'PostgresError';
  }
}

export class PostgresSync implements SyncSql {
  readonly dialect = 'postgres' as const;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  private nextId = 1;
  private depth = 0;
  private closed = false;
  private readonly texts = new Map<string, string>();

  constructor(
    private readonly url: string,
    private readonly timeoutMs = STATEMENT_TIMEOUT_MS,
  ) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const pgPath = createRequire(import.meta.url).resolve('pg');
    this.worker = new Worker(WORKER, { eval: true, workerData: { port: port2, flag: this.flag, url, pgPath }, transferList: [port2] });
    this.worker.unref();
    this.port.unref();
  }

  private call(req: Request): { rows: Record<string, unknown>[]; rowCount: number } {
    if (this.closed) throw new FerryError('FERRY_E_STORE_UNAVAILABLE', 'The PostgreSQL store is closed.');
    const id = this.nextId++;
    this.port.postMessage({ ...req, id });
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      // Cleared before the channel is read: an answer posted after the read sets it again, so the wait
      // below cannot miss it.
      Atomics.store(this.flag, 0, 0);
      const reply = this.take(id);
      if (reply !== undefined) return this.answer(reply);
      const left = deadline - Date.now();
      if (left <= 0) throw new FerryError('FERRY_E_STORE_UNAVAILABLE', `The PostgreSQL store at ${this.where()} did not answer within ${this.timeoutMs / 1000} s.`);
      Atomics.wait(this.flag, 0, 0, left);
    }
  }

  /** The answer to statement `id` if it is in the channel; late answers to earlier statements are dropped. */
  private take(id: number): Reply | undefined {
    for (let m = receiveMessageOnPort(this.port); m !== undefined; m = receiveMessageOnPort(this.port)) {
      const reply = m.message as Reply;
      if (reply.id === id) return reply;
    }
    return undefined;
  }

  private answer(reply: Reply): { rows: Record<string, unknown>[]; rowCount: number } {
    if (!('error' in reply)) return reply;
    const cause = new PostgresError(reply.error.message, reply.error.code);
    // A socket's error (no code, or Node's ECONNREFUSED and kin: no SQLSTATE class starts with E), class 08
    // (connection) or 57P (shutdown): the store is away, not the statement wrong.
    const code = reply.error.code ?? '';
    if (code === '' || /^E[A-Z]+$/.test(code) || code.startsWith('08') || code.startsWith('57P')) {
      throw new FerryError('FERRY_E_STORE_UNAVAILABLE', `The PostgreSQL store at ${this.where()} is not reachable: ${reply.error.message}`, { cause });
    }
    throw cause;
  }

  /** Host and port, never the password the URL may hold. */
  private where(): string {
    const u = new URL(this.url);
    return `${u.hostname || 'localhost'}:${u.port || 5432}`;
  }

  private text(source: string): string {
    let t = this.texts.get(source);
    if (t === undefined) {
      t = numberPlaceholders(source);
      if (this.texts.size >= 1000) this.texts.delete(this.texts.keys().next().value!);
      this.texts.set(source, t);
    }
    return t;
  }

  prepare<P extends unknown[] = unknown[], R = unknown>(source: string): SyncStatement<P, R> {
    const text = this.text(source);
    const query = (values: unknown[]) => this.call({ text, values: values.map((v) => (typeof v === 'bigint' ? v.toString() : v)) });
    return {
      get: (...p) => query(p).rows[0] as R | undefined,
      all: (...p) => query(p).rows as R[],
      run: (...p) => ({ changes: query(p).rowCount }),
    };
  }

  exec(source: string): void {
    this.call({ text: source, simple: true });
  }

  transaction<A extends unknown[], T>(fn: (...args: A) => T): (...args: A) => T {
    return (...args: A): T => {
      const savepoint = this.depth > 0 ? `ferry_sp_${this.depth}` : null;
      this.exec(savepoint === null ? 'BEGIN' : `SAVEPOINT ${savepoint}`);
      this.depth++;
      let result: T;
      try {
        result = fn(...args);
      } catch (err) {
        this.depth--;
        try {
          this.exec(savepoint === null ? 'ROLLBACK' : `ROLLBACK TO SAVEPOINT ${savepoint}`);
        } catch {
          // The connection broke: PostgreSQL rolled the transaction back itself.
        }
        throw err;
      }
      this.depth--;
      this.exec(savepoint === null ? 'COMMIT' : `RELEASE SAVEPOINT ${savepoint}`);
      return result;
    };
  }

  close(): void {
    if (this.closed) return;
    try {
      this.call({ close: true });
    } catch {
      // Closing a store that does not answer: the worker goes with it.
    } finally {
      this.closed = true;
      void this.worker.terminate();
    }
  }
}
