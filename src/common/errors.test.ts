import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERRORS, FerryError, fromErrorJSON } from './errors.ts';

test('every error code is documented in docs/errors.md, and nothing else is', () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Set([...doc.matchAll(/`(FERRY_E_[A-Z0-9_]+)`/g)].map((m) => m[1]));
  for (const code of Object.keys(ERRORS)) assert.ok(documented.has(code), `${code} missing from docs/errors.md`);
  for (const code of documented) assert.ok(code! in ERRORS, `${code} documented but not in the registry`);
});

test("docs/errors.md gives each code the registry's status, exit code and retryable flag", () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const rows = [...doc.matchAll(/^\| `(FERRY_E_[A-Z0-9_]+)` +\| +(\d+) +\| +(\d) +\| +(yes|no) +\|/gm)];
  assert.equal(rows.length, Object.keys(ERRORS).length, 'one table row per code');
  for (const [, code, status, exit, retryable] of rows) {
    const d = ERRORS[code as keyof typeof ERRORS];
    assert.deepEqual([Number(status), Number(exit), retryable === 'yes'], [d.status, d.exit, d.retryable], code);
  }
});

test('errors survive a JSON round trip with their code', () => {
  const e = new FerryError('FERRY_E_VM_EXISTS', 'vm a1 exists', { details: { name: 'a1' } });
  const back = fromErrorJSON(JSON.parse(JSON.stringify({ error: e })));
  assert.equal(back.code, 'FERRY_E_VM_EXISTS');
  assert.equal(back.message, 'vm a1 exists');
  assert.equal(back.exit, 2);
  assert.equal(fromErrorJSON({ error: { code: 'NOPE' } }).code, 'FERRY_E_INTERNAL');
});
