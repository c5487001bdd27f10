import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { KeyedMutex } from './mutex.ts';

test('operations on one key run one at a time, in order; other keys run alongside', async () => {
  const m = new KeyedMutex();
  const log: string[] = [];
  const op = (key: string, id: string, ms: number, fail = false) =>
    m.run(key, async () => {
      log.push(`${id}+`);
      await sleep(ms);
      log.push(`${id}-`);
      if (fail) throw new Error(id);
      return id;
    });
  const results = await Promise.allSettled([op('a', 'a1', 30, true), op('a', 'a2', 5), op('b', 'b1', 10)]);
  assert.deepEqual(
    results.map((r) => r.status),
    ['rejected', 'fulfilled', 'fulfilled'],
  );
  // a2 starts only after a1 ended (even though a1 failed); b1 ran inside a1.
  assert.ok(log.indexOf('a2+') > log.indexOf('a1-'));
  assert.ok(log.indexOf('b1+') < log.indexOf('a1-'));
  assert.equal(m.busy('a'), false);
  assert.equal(m.busy('b'), false);
});
