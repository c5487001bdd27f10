import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LIMITS, decideQueue, type QueueJob, type QueueLimits } from './queue.ts';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
let seq = 0;
const job = (over: Partial<QueueJob> & Pick<QueueJob, 'source' | 'destination'>): QueueJob => ({
  id: `m-${String(++seq).padStart(3, '0')}`,
  started: false,
  priority: 0,
  requestedAt: 1000 + seq,
  bandwidthBytesPerSec: 0,
  ...over,
});
const limits = (over: Partial<QueueLimits> = {}): QueueLimits => ({ ...DEFAULT_LIMITS, ...over });

test('five from one host with 2 out per host: two start, three wait behind the outbound limit, in order', () => {
  const jobs = [1, 2, 3, 4, 5].map((i) => job({ source: 'h1', destination: i % 2 ? 'h2' : 'h3' }));
  const d = decideQueue(jobs, limits());
  assert.deepEqual(d.start, [jobs[0]!.id, jobs[1]!.id]);
  assert.deepEqual(
    d.waiting.map((w) => [w.id, w.position, w.reason]),
    [2, 3, 4].map((i, n) => [jobs[i]!.id, n + 1, 'outbound limit of h1 (2/2)']),
  );
});

test('priority first, then first come first served; a higher priority requested later goes first', () => {
  const a = job({ source: 'h1', destination: 'h2' });
  const b = job({ source: 'h1', destination: 'h3' });
  const c = job({ source: 'h1', destination: 'h2', priority: 5 });
  const d = decideQueue([a, b, c], limits({ maxOutbound: 1 }));
  assert.deepEqual(d.start, [c.id]);
  assert.deepEqual(d.waiting.map((w) => w.id), [a.id, b.id]);
});

test('a job that cannot start does not hold back one behind it that can', () => {
  const running = job({ source: 'h1', destination: 'h2', started: true });
  const blocked = job({ source: 'h1', destination: 'h3' });
  const free = job({ source: 'h2', destination: 'h3' });
  const d = decideQueue([running, blocked, free], limits({ maxOutbound: 1 }));
  assert.deepEqual(d.start, [free.id]);
  assert.equal(d.waiting[0]!.reason, 'outbound limit of h1 (1/1)');
});

test('inbound and cluster-wide limits, counted over started jobs and those started in this decision', () => {
  const jobs = [job({ source: 'h1', destination: 'h9' }), job({ source: 'h2', destination: 'h9' }), job({ source: 'h3', destination: 'h9' })];
  assert.equal(decideQueue(jobs, limits()).waiting[0]!.reason, 'inbound limit of h9 (2/2)');
  const spread = [1, 2, 3, 4].map((i) => job({ source: `a${i}`, destination: `b${i}` }));
  const d = decideQueue(spread, limits({ maxConcurrent: 3 }));
  assert.equal(d.start.length, 3);
  assert.equal(d.waiting[0]!.reason, 'cluster-wide limit (3/3)');
});

test('a link is shared evenly; a job gets the smaller share of its two links, or its own lower cap', () => {
  const a = job({ source: 'h1', destination: 'h2', started: true });
  const b = job({ source: 'h1', destination: 'h3' });
  const c = job({ source: 'h4', destination: 'h3', bandwidthBytesPerSec: 100 * MiB });
  const d = decideQueue([a, b, c], limits({ maxOutbound: 4, maxInbound: 4 }));
  assert.deepEqual(d.start, [b.id, c.id]);
  assert.equal(d.bandwidth.get(a.id), GiB / 2); // h1 carries a and b
  assert.equal(d.bandwidth.get(b.id), GiB / 2); // h1 and h3 both carry two
  assert.equal(d.bandwidth.get(c.id), 100 * MiB); // its request asks for less than its share
  // When a ends, b has h1 to itself, but h3 still carries b and c.
  const after = decideQueue([{ ...b, started: true }, { ...c, started: true }], limits());
  assert.equal(after.bandwidth.get(b.id), GiB / 2);
});

test('a host of its own capacity; no share below the minimum; capacity 0 means unlimited', () => {
  const hosts = [{ name: 'h1', linkCapacityBytesPerSec: 128 * MiB }];
  const jobs = [1, 2, 3].map(() => job({ source: 'h1', destination: `d${seq}` }));
  const d = decideQueue(jobs, limits({ maxOutbound: 5 }), hosts);
  assert.equal(d.start.length, 2);
  assert.equal(d.bandwidth.get(jobs[0]!.id), 64 * MiB);
  assert.match(d.waiting[0]!.reason, /^link of h1 \(128\.0 MiB\/s shared by 3 would leave less than 64\.0 MiB\/s each\)$/);
  const free = decideQueue([job({ source: 'x', destination: 'y' })], limits({ linkCapacityBytesPerSec: 0 }));
  assert.equal([...free.bandwidth.values()][0], 0);
});
