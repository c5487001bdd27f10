import { MigrationPorts } from './ports.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { agentBasics } from '../http.ts';
import { defaultVmSpec } from '../../common/spec.ts';
import { saveRecord } from './record.ts';
import { emptyView } from '../../common/agent-migration.ts';
import { registerMigrationRoutes, type MigrationHost } from './routes.ts';
import type { LocalVm } from '../vm.ts';

/** A host with no VMs: enough for the route contract (validation, lookups, idempotent verdicts). */
function emptyHost(dataDir: string): MigrationHost {
  return {
    name: 'h1',
    dataDir,
    accel: 'tcg',
    migrationAddress: '127.0.0.1',
    migrationPorts: new MigrationPorts(null),
    admit: async () => undefined,
    exclusive: (_name, fn) => fn(undefined as LocalVm | undefined),
    adopt: () => undefined,
    forget: () => undefined,
    ensureTaps: async () => ({}),
    releaseTaps: async () => undefined,
  };
}

async function app(dataDir: string) {
  const a = agentBasics(Fastify());
  registerMigrationRoutes({ app: a, host: emptyHost(dataDir), tls: null });
  await a.ready();
  return a;
}

test('migration routes: bad ids and bodies are 400, unknown migrations 404, verdicts need success', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-migroutes-'));
  const a = await app(dir);
  try {
    const code = (r: { json: () => unknown }) => (r.json() as { error: { code: string } }).error.code;
    let r = await a.inject({ method: 'GET', url: '/agent/v1/migrations/nope' });
    assert.equal(r.statusCode, 404);
    assert.equal(code(r), 'FERRY_E_MIGRATION_NOT_FOUND');
    r = await a.inject({ method: 'GET', url: '/agent/v1/migrations/..%2Fetc' });
    assert.equal(code(r), 'FERRY_E_BAD_INPUT');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m1/prepare', payload: { spec: { name: 'x' } } });
    assert.equal(code(r), 'FERRY_E_BAD_SPEC');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m1/perform', payload: { vm: 'v1' } });
    assert.equal(code(r), 'FERRY_E_BAD_INPUT');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m1/perform', payload: { vm: 'v1', uri: 'tcp:127.0.0.1:1', storage: 'shared' } });
    assert.equal(code(r), 'FERRY_E_VM_NOT_FOUND');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m1/finish', payload: {} });
    assert.equal(code(r), 'FERRY_E_BAD_INPUT');
    // TLS is the default: an agent without an identity refuses rather than sending a guest in the clear.
    r = await a.inject({
      method: 'POST',
      url: '/agent/v1/migrations/m1/prepare',
      payload: { spec: defaultVmSpec('v1'), listenAddress: '127.0.0.1', storage: 'shared' },
    });
    assert.equal(code(r), 'FERRY_E_TLS');
  } finally {
    await a.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('finish and confirm answer again from the record after the VM has gone (agent restart, retries)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-migroutes-'));
  const a = await app(dir);
  try {
    const dst = emptyView({ id: 'm2', role: 'destination', vm: 'v1', stage: 'discarded', storage: 'shared', tls: true, uri: null });
    await saveRecord(dir, { version: 1, view: dst, runDir: null });
    let r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m2/finish', payload: { success: false } });
    assert.equal(r.statusCode, 200);
    assert.equal((r.json() as { stage: string }).stage, 'discarded');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m2/finish', payload: { success: true } });
    assert.equal((r.json() as { error: { code: string } }).error.code, 'FERRY_E_VM_STATE');
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m2/confirm', payload: { success: true } });
    assert.equal((r.json() as { error: { code: string } }).error.code, 'FERRY_E_MIGRATION_NOT_FOUND', 'not the source here');
    const src = emptyView({ id: 'm3', role: 'source', vm: 'v1', stage: 'confirmed', storage: 'shared', tls: true, uri: null });
    await saveRecord(dir, { version: 1, view: src, runDir: null });
    r = await a.inject({ method: 'POST', url: '/agent/v1/migrations/m3/confirm', payload: { success: true } });
    assert.equal((r.json() as { stage: string }).stage, 'confirmed');
    r = await a.inject({ method: 'GET', url: '/agent/v1/migrations/m3' });
    assert.equal((r.json() as { role: string }).role, 'source');
  } finally {
    await a.close();
    await rm(dir, { recursive: true, force: true });
  }
});
