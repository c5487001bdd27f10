/**
 * The store contract: what the controller relies on from its store, the same tests run against SQLite
 * (sqlite.test.ts) and a real PostgreSQL (postgres.test.ts). Each test gets a fresh, empty store from the
 * factory and speaks Kysely only, as code that runs on both must.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { sql } from 'kysely';
import { ACTIVE_STATES } from '../../common/states.ts';
import { LeaderLease, type LeaseParams } from '../leader.ts';
import type { SqlStore } from './db.ts';
import { MIGRATIONS } from './migrations.ts';
import { openControllerStore, openSqlStore } from './open.ts';
import { dialectSql, isConstraintError } from './sync.ts';

export interface StoreFactory {
  /** A fresh location for one test (`openSqlStore` opens it, as often as a test wants). */
  location(): Promise<string>;
}

const now = '2026-12-01T00:00:00.000Z';

async function withStore<T>(location: string, fn: (s: SqlStore) => Promise<T>): Promise<T> {
  const s = await openSqlStore(location);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

async function addHost(s: SqlStore, name: string): Promise<void> {
  await s.db.insertInto('hosts').values({ name, url: 'https://10.0.0.1:1', state: 'ready', maintenance: 0, inventory: null, last_seen_at: null, joined_at: now }).execute();
}

async function addVm(s: SqlStore, name: string, host: string, state = 'running'): Promise<void> {
  await s.db.insertInto('vms').values({ name, host, state, spec: '{}', boot_id: null, ready: 0, ip: null, created_at: now, updated_at: now }).execute();
}

function job(id: string, vm: string, state: string): Record<string, unknown> {
  return { id, vm, source: 'h1', destination: 'h2', mode: 'live', state, phase: 'begin', policy: '{}', started_at: now, updated_at: now };
}

async function insertJob(s: SqlStore, row: Record<string, unknown>): Promise<void> {
  // The jobs table is typed by its own module (migrations/jobs.ts), not in DB: inserted as raw SQL here.
  const cols = Object.keys(row);
  await sql`INSERT INTO migrations (${sql.join(cols.map((c) => sql.ref(c)))}) VALUES (${sql.join(cols.map((c) => row[c]))})`.execute(s.db);
}

// Short, with room for a loaded machine (a step may take a while without the holder losing its term).
const FAST: LeaseParams = { ttlMs: 1_500, renewMs: 100, marginMs: 300 };

export function storeContract(label: string, factory: StoreFactory): void {
  describe(`store contract: ${label}`, () => {
    test('every schema version applies once; a reopen applies nothing', async () => {
      const where = await factory.location();
      await withStore(where, async (a) => {
        assert.deepEqual(a.applied, MIGRATIONS.map((m) => m.version).sort((x, y) => x - y));
        await addHost(a, 'h1');
      });
      await withStore(where, async (b) => {
        assert.deepEqual(b.applied, []);
        const versions = await sql<{ version: number }>`SELECT version FROM schema_migrations ORDER BY version`.execute(b.db);
        assert.deepEqual(versions.rows.map((r) => Number(r.version)), MIGRATIONS.map((m) => m.version).sort((x, y) => x - y));
        assert.equal((await b.db.selectFrom('hosts').selectAll().execute()).length, 1);
      });
    });

    test('two controllers opening one new store at once apply each version once', async () => {
      const where = await factory.location();
      const [a, b] = await Promise.all([openSqlStore(where), openSqlStore(where)]);
      try {
        assert.deepEqual([...a.applied, ...b.applied].sort((x, y) => x - y), MIGRATIONS.map((m) => m.version).sort((x, y) => x - y));
      } finally {
        await a.close();
        await b.close();
      }
    });

    test('foreign keys hold and cascade', async () => {
      await withStore(await factory.location(), async (s) => {
        await assert.rejects(addVm(s, 'v', 'nope'));
        await addHost(s, 'h1');
        await addVm(s, 'v', 'h1');
        await s.db.insertInto('networks').values({ name: 'vm0', cidr: '10.9.0.0/24', gateway: null }).execute();
        await s.db.insertInto('ip_allocations').values({ network: 'vm0', ip: '10.9.0.5', vm: 'v' }).execute();
        await s.db.deleteFrom('vms').where('name', '=', 'v').execute();
        assert.equal((await s.db.selectFrom('ip_allocations').selectAll().execute()).length, 0);
      });
    });

    test('at most one active migration job per VM', async () => {
      await withStore(await factory.location(), async (s) => {
        await insertJob(s, job('m1', 'v', 'transferring'));
        await assert.rejects(insertJob(s, job('m2', 'v', 'queued')));
        for (const [i, state] of ACTIVE_STATES.entries()) {
          await assert.rejects(insertJob(s, job(`x${i}`, 'v', state)), `${state} counts as active`);
        }
        await insertJob(s, job('m3', 'v', 'failed'));
        await insertJob(s, job('m4', 'w', 'queued'));
      });
    });

    test('a compare-and-set update lets exactly one of two concurrent writers win', async () => {
      const where = await factory.location();
      await withStore(where, async (s) => {
        await addHost(s, 'h1');
        await addVm(s, 'v', 'h1', 'running');
      });
      const [a, b] = await Promise.all([openSqlStore(where), openSqlStore(where)]);
      try {
        const cas = async (st: SqlStore, to: string): Promise<number> => {
          const r = await st.db.updateTable('vms').set({ state: to }).where('name', '=', 'v').where('state', '=', 'running').executeTakeFirst();
          return Number(r.numUpdatedRows);
        };
        const won = await Promise.all([cas(a, 'migrating'), cas(b, 'stopped')]);
        assert.deepEqual(won.sort(), [0, 1]);
      } finally {
        await a.close();
        await b.close();
      }
    });

    test('a transaction that fails leaves nothing behind', async () => {
      await withStore(await factory.location(), async (s) => {
        await addHost(s, 'h1');
        await assert.rejects(
          s.db.transaction().execute(async (tx) => {
            await tx.insertInto('vms').values({ name: 'v', host: 'h1', state: 'creating', spec: '{}', boot_id: null, ready: 0, ip: null, created_at: now, updated_at: now }).execute();
            await tx.insertInto('vms').values({ name: 'v', host: 'h1', state: 'creating', spec: '{}', boot_id: null, ready: 0, ip: null, created_at: now, updated_at: now }).execute();
          }),
        );
        assert.equal((await s.db.selectFrom('vms').selectAll().execute()).length, 0);
      });
    });

    test('64-bit integers and doubles come back as numbers; events are numbered in order', async () => {
      await withStore(await factory.location(), async (s) => {
        await insertJob(s, { ...job('m1', 'v', 'completed'), memory_bytes: 8 * 2 ** 30, total_ms: 1234.5 });
        const r = await sql<{ memory_bytes: number; total_ms: number }>`SELECT memory_bytes, total_ms FROM migrations WHERE id = 'm1'`.execute(s.db);
        assert.deepEqual(r.rows[0], { memory_bytes: 8 * 2 ** 30, total_ms: 1234.5 });
        for (const t of ['a', 'b', 'c']) await s.db.insertInto('events').values({ at: now, type: t, subject: 's', data: '{}' }).execute();
        const seqs = (await s.db.selectFrom('events').select(['seq', 'type']).orderBy('seq').execute());
        assert.deepEqual(seqs.map((e) => e.type), ['a', 'b', 'c']);
        assert.ok(seqs.every((e) => typeof e.seq === 'number'));
      });
    });

    test('one leader at a time; a lapsed lease goes to another with a higher term', async () => {
      const where = await factory.location();
      const [a, b] = await Promise.all([openSqlStore(where), openSqlStore(where)]);
      const deposed: number[] = [];
      const la = new LeaderLease({ store: a, id: 'c1', url: 'https://c1', params: FAST, onDeposed: (t) => deposed.push(t) });
      const lb = new LeaderLease({ store: b, id: 'c2', url: 'https://c2', params: FAST });
      try {
        assert.equal(await la.step(), 1);
        assert.equal(await lb.step(), undefined, 'a live lease is not taken');
        assert.equal(await la.step(), 1, 'the holder renews in its term');
        assert.deepEqual(await lb.current(), { holder: 'c1', url: 'https://c1', term: 1, live: true });
        // c1 stops renewing (as if killed): its lease lapses on the store's clock and c2 takes it.
        await new Promise((r) => setTimeout(r, FAST.ttlMs + 100));
        assert.equal(la.term(), undefined, 'a holder that did not renew in time no longer believes it leads');
        assert.deepEqual(deposed, [1]);
        assert.equal(await lb.step(), 2);
        assert.equal(await la.step(), undefined, 'the old holder cannot renew a term that was taken');
        assert.deepEqual(await la.current(), { holder: 'c2', url: 'https://c2', term: 2, live: true });
        // Released on stop: the next takes it at once, without waiting for the lease to lapse.
        await lb.stop();
        assert.equal(await la.step(), 3);
      } finally {
        await la.stop();
        await lb.stop();
        await a.close();
        await b.close();
      }
    });

    test('of controllers racing for a lapsed lease, exactly one wins', async () => {
      const where = await factory.location();
      const stores = await Promise.all([openSqlStore(where), openSqlStore(where), openSqlStore(where)]);
      const leases = stores.map((store, i) => new LeaderLease({ store, id: `c${i}`, url: `https://c${i}`, params: FAST }));
      try {
        const terms = await Promise.all(leases.map((l) => l.step()));
        assert.deepEqual(terms.filter((t) => t !== undefined), [1]);
      } finally {
        for (const l of leases) await l.stop();
        for (const s of stores) await s.close();
      }
    });

    test("the VMs' generation rises with each change of a VM a host list shows, and with nothing else", async () => {
      const store = await openControllerStore(await factory.location());
      try {
        const q = store.sql;
        const gen = (): number => Number((q.prepare("SELECT n FROM store_generation WHERE name = 'vms'").get() as { n: number | string }).n);
        await addHost(store, 'h1');
        await addHost(store, 'h2');
        let last = gen();
        const rises = (what: string, change: () => unknown): void => {
          change();
          const now = gen();
          assert.ok(now > last, `${what}: ${last} → ${now}`);
          last = now;
        };
        const stays = (what: string, change: () => unknown): void => {
          change();
          assert.equal(gen(), last, what);
        };
        rises('a VM placed', () => q.prepare("INSERT INTO vms (name, host, state, spec, boot_id, ready, ip, created_at, updated_at) VALUES ('v1', 'h1', 'creating', '{}', NULL, 0, NULL, ?, ?)").run(now, now));
        rises('its state', () => q.prepare("UPDATE vms SET state = 'running' WHERE name = 'v1'").run());
        rises('moved', () => q.prepare("UPDATE vms SET host = 'h2' WHERE name = 'v1'").run());
        rises('its spec', () => q.prepare('UPDATE vms SET spec = ? WHERE name = ?').run('{"memoryBytes":1}', 'v1'));
        stays('its boot id and readiness', () => q.prepare("UPDATE vms SET boot_id = 'b', ready = 1, updated_at = ? WHERE name = 'v1'").run(now));
        stays('the same host written again', () => q.prepare("UPDATE vms SET host = 'h2', state = 'running' WHERE name = 'v1'").run());
        stays("a host's heartbeat", () => q.prepare("UPDATE hosts SET last_seen_at = ?, state = 'ready' WHERE name = 'h1'").run(now));
        stays('a transaction rolled back', () => assert.throws(() => q.transaction(() => {
          q.prepare("UPDATE vms SET host = 'h1' WHERE name = 'v1'").run();
          throw new Error('undo');
        })(), /undo/));
        rises('removed', () => q.prepare("DELETE FROM vms WHERE name = 'v1'").run());
      } finally {
        await store.close();
      }
    });

    test('the synchronous handle: counts, transactions that commit or roll back, savepoints, constraint errors', async () => {
      const store = await openControllerStore(await factory.location());
      try {
        const q = store.sql;
        const insert = q.prepare('INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES (?, ?, ?, 0, NULL, NULL, ?)');
        assert.equal(insert.run('h1', 'https://h1:1', 'ready', now).changes, 1);
        assert.deepEqual(q.prepare("SELECT name, '?' AS mark, maintenance FROM hosts WHERE name = ?").get('h1'), { name: 'h1', mark: '?', maintenance: 0 }, 'a ? inside quotes is no placeholder');
        assert.equal(q.prepare('SELECT name FROM hosts WHERE name = ?').get('none'), undefined);
        assert.throws(() => q.transaction(() => {
          insert.run('h2', 'https://h2:1', 'ready', now);
          throw new Error('undo');
        })(), /undo/);
        assert.deepEqual(q.prepare('SELECT name FROM hosts ORDER BY name').all(), [{ name: 'h1' }], 'rolled back');
        q.transaction(() => {
          insert.run('h2', 'https://h2:1', 'ready', now);
          assert.throws(() => q.transaction(() => {
            insert.run('h3', 'https://h3:1', 'ready', now);
            insert.run('h1', 'https://h1:1', 'ready', now);
          })(), (err: unknown) => isConstraintError(err), 'a duplicate key is a constraint error');
        })();
        assert.deepEqual(q.prepare('SELECT name FROM hosts ORDER BY name').all(), [{ name: 'h1' }, { name: 'h2' }], 'the inner savepoint rolled back, the outer committed');
        assert.equal(q.prepare("UPDATE hosts SET state = 'unreachable' WHERE state = ?").run('ready').changes, 2);
        await addVm(store, 'v1', 'h1');
        const d = dialectSql(q.dialect);
        q.prepare(`UPDATE vms SET spec = ? WHERE name = ?`).run(JSON.stringify({ memoryBytes: 134217728, vcpus: 2, list: [] }), 'v1');
        const load = q.prepare(`SELECT ${d.groupConcat('name', ' ')} AS names, SUM(${d.jsonNumber('spec', 'memoryBytes')}) AS "memoryBytes", SUM(${d.jsonNumber('spec', 'vcpus')}) AS vcpus FROM vms GROUP BY host`).get();
        assert.deepEqual(load, { names: 'v1', memoryBytes: 134217728, vcpus: 2 }, 'numbers out of JSON, summed, under camelCase names');
        await addVm(store, 'v2', 'h1');
        q.prepare(`UPDATE vms SET spec = ? WHERE name = ?`).run('[]', 'v2');
        q.prepare(`UPDATE vms SET spec = ${d.jsonAppend('spec', d.jsonObject([['at', 'CAST(? AS TEXT)'], ['state', 'COALESCE(?, state)']]))} WHERE name = ?`).run(now, null, 'v2');
        q.prepare(`UPDATE vms SET spec = ${d.jsonAppend('spec', '?')} WHERE name = ?`).run(JSON.stringify({ n: 1 }), 'v2');
        const spec = (q.prepare('SELECT spec FROM vms WHERE name = ?').get('v2') as { spec: string }).spec;
        assert.deepEqual(JSON.parse(spec), [{ at: now, state: 'running' }, { n: 1 }], 'appended to a JSON array, in order');
        assert.deepEqual(JSON.parse((q.prepare(`SELECT ${d.jsonArray([d.jsonObject([['a', "'x'"]])])} AS j`).get() as { j: string }).j), [{ a: 'x' }]);
      } finally {
        await store.close();
      }
    });
  });
}
