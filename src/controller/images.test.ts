import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultVmSpec, MIB } from '../common/spec.ts';
import { FakeAgent } from '../testing/fake-agent.ts';
import { AgentPool } from './agent-client.ts';
import { caFromPem, createCaCert } from './ca.ts';
import { ImageService } from './images.ts';
import { openStore } from './store/db.ts';

test('image store: import records what qemu-img says of the stored copy; duplicates, bad formats, reserved names refused; in use kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-imgstore-'));
  const store = openStore(join(dir, 'ferry.db'));
  try {
    const images = new ImageService({ store, dataDir: dir });
    const src = join(dir, 'src.bin');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '8M']);
    const img = await images.import('deb', src);
    assert.equal(img.format, 'qcow2');
    assert.equal(img.virtualSizeBytes, 8 * MIB);
    assert.equal(img.sha256, createHash('sha256').update(readFileSync(src)).digest('hex'));
    assert.equal(img.path, join(dir, 'images', 'deb.qcow2'));
    assert.equal(createHash('sha256').update(readFileSync(img.path)).digest('hex'), img.sha256);
    assert.deepEqual(images.list().map((i) => i.name), ['deb']);
    await assert.rejects(images.import('deb', src), { code: 'FERRY_E_IMAGE_EXISTS' });
    await assert.rejects(images.import('tiny', src), { code: 'FERRY_E_BAD_NAME' });
    await assert.rejects(images.import('Bad', src), { code: 'FERRY_E_BAD_NAME' });
    await assert.rejects(images.import('x', join(dir, 'nope')), { code: 'FERRY_E_BAD_IMAGE' });
    await assert.rejects(images.import('x', 'rel/path'), { code: 'FERRY_E_BAD_IMAGE' });
    const vmdk = join(dir, 'd.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', vmdk, '1M']);
    await assert.rejects(images.import('x', vmdk), { code: 'FERRY_E_BAD_IMAGE_FORMAT' });
    assert.deepEqual(images.list().map((i) => i.name), ['deb'], 'refusals create nothing');
    assert.throws(() => images.get('nope'), { code: 'FERRY_E_IMAGE_NOT_FOUND' });

    // A VM whose disk is an overlay on it keeps it.
    const now = new Date().toISOString();
    store.sql.prepare("INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES ('h1', 'https://127.0.0.1:1', 'ready', 0, NULL, NULL, ?)").run(now);
    const spec = defaultVmSpec('v1', { boot: { kind: 'disk' }, guestChannel: false, disks: [{ id: 'vda', sizeBytes: 8 * MIB, shared: false, backing: { path: img.path, format: 'qcow2' } }] });
    store.sql.prepare("INSERT INTO vms (name, host, state, spec, boot_id, ip, created_at, updated_at) VALUES ('v1', 'h1', 'running', ?, NULL, NULL, ?, ?)").run(JSON.stringify(spec), now, now);
    assert.deepEqual(images.get('deb').usedBy, ['v1']);
    await assert.rejects(images.delete('deb'), { code: 'FERRY_E_IMAGE_IN_USE' });
    store.sql.prepare("DELETE FROM vms WHERE name = 'v1'").run();
    assert.deepEqual(await images.delete('deb'), { deleted: true, name: 'deb' });
    assert.ok(!existsSync(img.path));
    assert.deepEqual(images.list(), []);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('ensureOn: a host without the image gets it once, however many ask at the same time; then it is present', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-imgfetch-'));
  const store = openStore(join(dir, 'ferry.db'));
  const c = await createCaCert('image test CA');
  const ca = await caFromPem(c.certPem, c.keyPem);
  const cert = await ca.issueAgentCert('h1', ['127.0.0.1']);
  const agent = new FakeAgent({ name: 'h1' });
  await agent.start({ caPem: ca.caCertPem, certPem: cert.certPem, keyPem: cert.keyPem, controllerPin: ca.controllerPin });
  const pool = new AgentPool({ caCertPem: ca.caCertPem, ...ca.controllerClient });
  try {
    const images = new ImageService({ store, dataDir: dir, agents: () => [{ host: 'h1', agent: pool.client('h1', agent.url) }] });
    const src = join(dir, 'src.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', src, '2M']);
    const img = await images.import('base', src);
    const { backing } = images.resolve('base');
    assert.deepEqual(backing, { image: 'base', sha256: img.sha256, format: 'raw' });
    const spec = defaultVmSpec('v1', { boot: { kind: 'disk' }, guestChannel: false, disks: [{ id: 'vda', sizeBytes: 2 * MIB, shared: false, backing }] });
    const client = pool.client('h1', agent.url);
    const all = await Promise.all([images.ensureFor('h1', client, spec), images.ensureFor('h1', client, spec), images.ensureOn('h1', client, backing)]);
    for (const got of all.flat()) assert.deepEqual(got, { name: 'base', sha256: img.sha256, action: 'fetched', bytes: 2 * MIB });
    assert.equal(agent.calls.filter((l) => l.startsWith('PUT /agent/v1/images/')).length, 1, 'one transfer');
    assert.deepEqual(await images.ensureFor('h1', client, spec), [{ name: 'base', sha256: img.sha256, action: 'present', bytes: 0 }]);
    assert.equal(agent.calls.filter((l) => l.startsWith('PUT /agent/v1/images/')).length, 1, 'present: nothing sent');
    assert.deepEqual((await images.withHosts(images.list())).map((i) => [i.name, i.hosts]), [['base', ['h1']]]);
    assert.deepEqual(images.get('base').usedBy, [], 'no VM row uses it yet');
  } finally {
    await agent.stop();
    await pool.close();
    store.close();
    await rm(dir, { recursive: true, force: true });
  }
});
