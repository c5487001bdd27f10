import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Wakeup } from './wakeup.ts';

const within = async (p: Promise<void>, ms: number): Promise<boolean> =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

test('a sleep ends at its bound without news, and at once when fired', async () => {
  const w = new Wakeup();
  const t0 = Date.now();
  await w.sleep(30);
  assert.ok(Date.now() - t0 >= 25, 'slept its bound');
  const long = w.sleep(10_000);
  assert.equal(await within(long, 50), false, 'asleep');
  w.fire();
  assert.equal(await within(long, 1000), true, 'woken');
});

test('fire wakes every sleeper; news while nobody sleeps ends the next sleep at once, once', async () => {
  const w = new Wakeup();
  const a = w.sleep(10_000);
  const b = w.sleep(10_000);
  w.fire();
  assert.deepEqual(await Promise.all([within(a, 1000), within(b, 1000)]), [true, true]);
  w.fire();
  assert.equal(await within(w.sleep(400), 100), true, 'the news kept for the next sleep');
  assert.equal(await within(w.sleep(400), 100), false, 'and used up by it');
});
