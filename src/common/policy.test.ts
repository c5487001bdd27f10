import { test } from 'node:test';
import assert from 'node:assert/strict';
import { autoMultifd, AUTO_MULTIFD_MAX, resolvePolicy } from './policy.ts';

test('multifd by cores: TLS live pre-copy gets a channel per core of the smaller host, up to the cap', () => {
  const p = resolvePolicy();
  assert.equal(p.multifd, 0, 'the resolved policy itself stays one stream: the controller chooses');
  assert.equal(autoMultifd(p, 2, true), 2);
  assert.equal(autoMultifd(p, 64, true), AUTO_MULTIFD_MAX);
  assert.equal(autoMultifd(p, 1, true), 0, 'one core: several streams only compete');
  assert.equal(autoMultifd(p, null, true), 0, 'cores unknown');
  assert.equal(autoMultifd(p, 8, false), 0, 'a QEMU without multifd');
});

test('multifd by cores stays off where one stream is right or QEMU 10.0 refuses multifd', () => {
  assert.equal(autoMultifd(resolvePolicy({ tls: false }), 8, true), 0, 'plain TCP is not CPU-bound');
  assert.equal(autoMultifd(resolvePolicy({ postcopy: 'auto' }), 8, true), 0);
  assert.equal(autoMultifd(resolvePolicy({ postcopy: 'always' }), 8, true), 0);
  assert.equal(autoMultifd(resolvePolicy({ xbzrle: true }), 8, true), 0);
  assert.equal(autoMultifd(resolvePolicy({ mode: 'cold' }), 8, true), 0);
  assert.equal(autoMultifd(resolvePolicy({ bandwidth: '8M' }), 8, true), 0, 'a cap of its own: multifd would overshoot it');
  assert.equal(autoMultifd(resolvePolicy({ bandwidth: 0 }), 8, true), 4, 'no limit asked for');
});
