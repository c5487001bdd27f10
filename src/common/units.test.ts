import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDuration, parseSize, validateName } from './units.ts';
import { FerryError } from './errors.ts';

test('sizes parse in binary units and refuse zero, negatives and junk', () => {
  assert.equal(parseSize('256M'), 256 * 1024 * 1024);
  assert.equal(parseSize('1G'), 1024 ** 3);
  assert.equal(parseSize('512KiB'), 512 * 1024);
  for (const bad of ['0', '0M', '-1M', 'lots', '12Q', '']) {
    assert.throws(() => parseSize(bad), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_BAD_SIZE', bad);
  }
});

test('durations parse with units; a bare number is milliseconds', () => {
  assert.equal(parseDuration('300ms'), 300);
  assert.equal(parseDuration('10s'), 10_000);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('20'), 20);
  assert.throws(() => parseDuration('soon'), /FERRY_E_BAD_DURATION|Bad duration/);
});

test('names are checked before they reach argv, paths or interface names', () => {
  assert.equal(validateName('web-1'), 'web-1');
  for (const bad of ['', 'Web', '-a', 'a b', 'a;rm', 'a'.repeat(64), '../x']) {
    assert.throws(() => validateName(bad), (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_BAD_NAME', bad);
  }
});
