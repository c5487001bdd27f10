import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memoryLogger, REDACTED, scrub } from './log.ts';

// Shaped like tokens.ts mints them: 16 hex, a dot, 43 base64url characters.
const TOKEN = '0123456789abcdef.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-ABCDEFG';
const KEY = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----';

test('lines are JSON with a level, an ISO time and the process kind', () => {
  const m = memoryLogger({ process: 'controller' });
  m.log.info('hello');
  m.log.child({ migration: 'm-1', phase: 'perform' }).warn({ durationMs: 12 }, 'slow');
  const [a, b] = m.lines();
  assert.equal(a!.level, 'info');
  assert.equal(a!.process, 'controller');
  assert.match(String(a!.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual([b!.level, b!.migration, b!.phase, b!.durationMs, b!.msg], ['warn', 'm-1', 'perform', 12, 'slow']);
});

test('secret fields are censored wherever they are, by name', () => {
  const m = memoryLogger();
  m.log.info(
    {
      token: 'a',
      adminToken: 'b',
      body: { joinToken: 'c', tls: { keyPem: 'd' } },
      req: { headers: { authorization: 'Bearer e', host: 'h1' } },
    },
    'fields',
  );
  const [line] = m.lines();
  assert.equal(line!.token, REDACTED);
  assert.equal(line!.adminToken, REDACTED);
  assert.deepEqual(line!.body, { joinToken: REDACTED, tls: { keyPem: REDACTED } });
  assert.deepEqual(line!.req, { headers: { authorization: REDACTED, host: 'h1' } });
});

test('secrets in messages and errors are cut out by their shape', () => {
  const m = memoryLogger();
  m.log.warn(`join with ${TOKEN} failed`);
  m.log.error({ err: new Error(`refused ${TOKEN}`) }, 'Authorization: Bearer s3cr3t-value');
  m.log.info(`key ${KEY} end`);
  const text = m.text();
  assert.doesNotMatch(text, /AbCdEfGhIjKl|s3cr3t|MIIEvQ/);
  const [a, b, c] = m.lines();
  assert.equal(a!.msg, `join with ${REDACTED} failed`);
  assert.equal(b!.msg, `Authorization: Bearer ${REDACTED}`);
  assert.equal((b!.err as { message: string }).message, `refused ${REDACTED}`);
  assert.equal(c!.msg, `key ${REDACTED} end`);
});

test('scrub leaves what is not a secret alone', () => {
  for (const s of ['migration 3f2a1c9e-5b6d-4e7f-8a9b-0c1d2e3f4a5b: perform done', 'host h1 ready', 'sha256:' + 'a'.repeat(64), 'v1.2.3'])
    assert.equal(scrub(s), s);
});
