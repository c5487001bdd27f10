import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, readContexts, removeContext, useContext, writeContext } from './config.ts';

const A = { server: 'https://10.0.0.1:7440', token: 'aaaaaaaa.AAAAAAAAAAAAAAAAAAAA', caCertPem: 'CA-A' };
const B = { server: 'https://10.0.0.2:7440', token: 'bbbbbbbb.BBBBBBBBBBBBBBBBBBBB', caCertPem: 'CA-B' };

function withDir(fn: (file: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-ctx-'));
  const saved = { ctx: process.env.FERRY_CONTEXT, server: process.env.FERRY_SERVER, token: process.env.FERRY_TOKEN };
  delete process.env.FERRY_CONTEXT;
  delete process.env.FERRY_SERVER;
  delete process.env.FERRY_TOKEN;
  try {
    fn(join(dir, 'config.json'));
  } finally {
    for (const [k, v] of [['FERRY_CONTEXT', saved.ctx], ['FERRY_SERVER', saved.server], ['FERRY_TOKEN', saved.token]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

test('two labs keep their own contexts: the later is current, the earlier still there by name', () => {
  withDir((file) => {
    writeContext('one', A, file);
    writeContext('two', B, file);
    assert.deepEqual(Object.keys(readContexts(file).contexts), ['one', 'two']);
    assert.equal(loadConfig({}, file).server, B.server);
    assert.equal(loadConfig({ context: 'one' }, file).server, A.server);
    process.env.FERRY_CONTEXT = 'one';
    assert.equal(loadConfig({}, file).server, A.server);
    assert.equal(loadConfig({ context: 'two' }, file).server, B.server, '--context wins over FERRY_CONTEXT');
    delete process.env.FERRY_CONTEXT;
    useContext('one', file);
    assert.equal(loadConfig({}, file).token, A.token);
    // Taking one lab down removes its context only, and the current one moves to what is left.
    assert.ok(removeContext('one', A.server, file));
    assert.equal(readContexts(file).current, 'two');
    assert.ok(!removeContext('two', 'https://elsewhere:1', file), 'a context repointed since is left alone');
    assert.ok(removeContext('two', B.server, file));
    assert.ok(!existsSync(file), 'the last context gone, the file goes');
  });
});

test('FERRY_SERVER and FERRY_TOKEN override the context field by field; an unknown context is FERRY_E_CONTEXT_NOT_FOUND', () => {
  withDir((file) => {
    writeContext('one', A, file);
    process.env.FERRY_SERVER = 'https://10.9.9.9:7440';
    process.env.FERRY_TOKEN = 'cccccccc.CCCCCCCCCCCCCCCCCCCC';
    assert.deepEqual(loadConfig({}, file), { server: 'https://10.9.9.9:7440', servers: ['https://10.9.9.9:7440'], token: 'cccccccc.CCCCCCCCCCCCCCCCCCCC', caCertPem: 'CA-A' });
    assert.equal(loadConfig({ token: 'flag' }, file).token, 'flag', 'a flag wins over the environment');
    assert.throws(() => loadConfig({ context: 'nope' }, file), { code: 'FERRY_E_CONTEXT_NOT_FOUND' });
    assert.throws(() => useContext('nope', file), { code: 'FERRY_E_CONTEXT_NOT_FOUND' });
  });
});

test("an older single-cluster file is read as context `default` and kept when a lab's context is added", () => {
  withDir((file) => {
    writeFileSync(file, JSON.stringify(A));
    assert.equal(loadConfig({}, file).server, A.server);
    assert.equal(readContexts(file).current, 'default');
    writeContext('lab2', B, file);
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { contexts: Record<string, { server: string }> };
    assert.equal(doc.contexts.default?.server, A.server);
    assert.equal(loadConfig({}, file).server, B.server);
    // lab down of the lab that wrote the old file finds it under `default`.
    assert.ok(removeContext('lab', A.server, file));
  });
});

test('a context lists several controllers; `server` stays the first for older CLIs, and FERRY_SERVER takes a list', () => {
  withDir((file) => {
    writeContext('ha', { ...A, servers: [A.server, B.server] }, file);
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { version: number; contexts: Record<string, { server: string; servers: string[] }> };
    assert.equal(doc.version, 2);
    assert.equal(doc.contexts.ha?.server, A.server, 'what a CLI reading only `server` uses');
    assert.deepEqual(loadConfig({}, file).servers, [A.server, B.server]);
    writeContext('one', A, file);
    assert.deepEqual(loadConfig({}, file).servers, [A.server], 'a context of one server stores no list');
    assert.equal(JSON.parse(readFileSync(file, 'utf8')).contexts.one.servers, undefined);
    assert.ok(removeContext('ha', B.server, file), 'lab down finds its context by any of its servers');
    process.env.FERRY_SERVER = `${B.server}, ${A.server}`;
    assert.deepEqual(loadConfig({}, file).servers, [B.server, A.server]);
    process.env.FERRY_SERVER = 'http://10.0.0.3:7440';
    assert.throws(() => loadConfig({}, file), { code: 'FERRY_E_CONFIG' });
  });
});
