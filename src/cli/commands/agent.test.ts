import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { saveIdentity } from '../../agent/identity.ts';
import { FerryError } from '../../common/errors.ts';
import { caFromPem, createCaCert } from '../../controller/ca.ts';
import { DEFAULT_AGENT_PORT, parseListen, runAgent } from './agent.ts';

test('--listen takes ADDR:PORT, [v6]:PORT, ADDR or :PORT, and refuses host names', () => {
  assert.deepEqual(parseListen(undefined), { host: '0.0.0.0', port: DEFAULT_AGENT_PORT });
  assert.deepEqual(parseListen('10.0.0.1:7443'), { host: '10.0.0.1', port: 7443 });
  assert.deepEqual(parseListen('10.0.0.1'), { host: '10.0.0.1', port: DEFAULT_AGENT_PORT });
  assert.deepEqual(parseListen(':0'), { host: '0.0.0.0', port: 0 });
  assert.deepEqual(parseListen('[::1]:9'), { host: '::1', port: 9 });
  for (const bad of ['example.org:1', '1.2.3.4:70000', '1.2.3.4:x']) {
    assert.throws(
      () => parseListen(bad),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_USAGE',
      bad,
    );
  }
});

test('bad usage exits 2 before anything is joined or written', async () => {
  const out: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string) => (out.push(String(chunk)), true)) as typeof process.stdout.write;
  try {
    // Listening on every address without --migration-address: no address to advertise.
    assert.equal(
      await runAgent({ name: 'h1', listen: '0.0.0.0:7443', data: '/nonexistent/ferry', json: true }),
      2,
    );
    assert.equal(await runAgent({ name: 'Bad Name', json: true }), 2);
  } finally {
    process.stdout.write = write;
  }
  const codes = out.map((o) => (JSON.parse(o) as { error: { code: string } }).error.code);
  assert.deepEqual(codes, ['FERRY_E_USAGE', 'FERRY_E_BAD_NAME']);
});

test('an agent whose certificate expired exits 1 with FERRY_E_CERT_EXPIRED and says how to re-join', async () => {
  const c = await createCaCert();
  const ca = await caFromPem(c.certPem, c.keyPem);
  const expired = await ca.issue('h1', ['h1', '127.0.0.1'], { notBefore: new Date(Date.now() - 3 * 86_400_000), days: 1 });
  const dir = mkdtempSync(join(tmpdir(), 'ferry-agent-expired-'));
  const out: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  try {
    await saveIdentity(dir, { caPem: ca.caCertPem, ...expired, controllerPin: ca.controllerPin }, { name: 'h1', serverUrl: 'https://127.0.0.1:1', agentUrl: 'https://127.0.0.1:7443', joinedAt: new Date().toISOString() });
    process.stdout.write = ((chunk: string) => (out.push(String(chunk)), true)) as typeof process.stdout.write;
    assert.equal(await runAgent({ name: 'h1', listen: '127.0.0.1:0', data: dir, json: true }), 1);
  } finally {
    process.stdout.write = write;
    rmSync(dir, { recursive: true, force: true });
  }
  const e = (JSON.parse(out.join('')) as { error: { code: string; message: string } }).error;
  assert.equal(e.code, 'FERRY_E_CERT_EXPIRED');
  assert.match(e.message, /--join-token/);
});
