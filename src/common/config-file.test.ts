import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inCidr4, parseCidr4, parsePortRange } from './config-file.ts';

test('port ranges: FIRST-LAST inside 1024–65535', () => {
  assert.deepEqual(parsePortRange('49152-49215'), { first: 49152, last: 49215 });
  assert.deepEqual(parsePortRange('5000-5000'), { first: 5000, last: 5000 });
  for (const bad of ['80-90', '5000-4000', '5000', '5000-70000', 'a-b']) assert.throws(() => parsePortRange(bad), { code: 'FERRY_E_USAGE' });
});

test('IPv4 CIDRs', () => {
  assert.deepEqual(parseCidr4('10.0.1.9/24'), { base: (10 << 24) + 256, prefix: 24 });
  assert.ok(inCidr4('10.0.1.200', '10.0.1.0/24'));
  assert.ok(!inCidr4('10.0.2.1', '10.0.1.0/24'));
  assert.ok(inCidr4('1.2.3.4', '0.0.0.0/0'));
  assert.ok(!inCidr4('::1', '10.0.1.0/24'));
  for (const bad of ['10.0.1.0', '10.0.1.0/40', 'x/24']) assert.throws(() => parseCidr4(bad), { code: 'FERRY_E_USAGE' });
});
