import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../common/errors.ts';
import { startPostgres, type PostgresServer } from '../../testing/postgres.ts';
import { storeContract } from './contract.case.ts';
import { numberPlaceholders, PostgresSync } from './sync-postgres.ts';

let pg: PostgresServer | undefined;
before(async () => {
  pg = await startPostgres();
});
after(() => pg?.stop());
let n = 0;
storeContract('PostgreSQL', {
  location: () => {
    if (pg === undefined) throw new Error('PostgreSQL did not start');
    return pg.createDatabase(`contract_${++n}`);
  },
});

test('placeholders are numbered outside quotes only', () => {
  assert.equal(numberPlaceholders(`SELECT '?', "a?b", ? FROM t WHERE x = ? AND y IN (?, ?)`), `SELECT '?', "a?b", $1 FROM t WHERE x = $2 AND y IN ($3, $4)`);
  assert.equal(numberPlaceholders(`SELECT 'it''s ?' WHERE a = ?`), `SELECT 'it''s ?' WHERE a = $1`);
});

test('a statement that outlasts its time is FERRY_E_STORE_UNAVAILABLE; its late answer is dropped and the next one is answered', async () => {
  const handle = new PostgresSync(await pg!.createDatabase(`sync_${++n}`), 300);
  try {
    assert.throws(() => handle.prepare('SELECT pg_sleep(1)').get(), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_E_STORE_UNAVAILABLE');
    await new Promise((r) => setTimeout(r, 1_000));
    assert.deepEqual(handle.prepare('SELECT ? AS x').get('after'), { x: 'after' });
  } finally {
    handle.close();
  }
});

test('an unreachable server is FERRY_E_STORE_UNAVAILABLE at once, never a hang', () => {
  const handle = new PostgresSync('postgres://ferry@127.0.0.1:1/none', 10_000);
  try {
    assert.throws(() => handle.prepare('SELECT 1').get(), (err: unknown) => err instanceof FerryError && err.code === 'FERRY_E_STORE_UNAVAILABLE' && /127\.0\.0\.1:1\b/.test(err.message));
  } finally {
    handle.close();
  }
});
