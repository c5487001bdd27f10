/**
 * The controller against the fake agent (src/testing/fake-agent.ts) at the wire: a real HTTPS server with
 * mutual TLS, using the certificate the controller issued at join, made from the agent route table. Covers join → heartbeat → create (and its undo when the
 * agent fails) → reconcile (adopt, vanish) → guest/console pass-through → unreachable after 3 misses; an
 * agent of another protocol version → incompatible, with the error naming both versions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER } from '../common/protocol.ts';
import { parseVmSpec } from '../common/spec.ts';
import { FakeAgent } from '../testing/fake-agent.ts';
import { storesUnderTest } from '../testing/postgres.ts';
import { createController, type Controller } from './controller.ts';
import type { FerryEvent } from './events.ts';
import { createJoinToken } from './tokens.ts';

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'no error';
  } catch (e) {
    assert.ok(e instanceof FerryError, String(e));
    return e.code;
  }
};

for (const store of storesUnderTest()) test(`join, heartbeat, create and undo, reconcile, pass-through, unreachable (${store.label})`, { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cluster-'));
  let ctl: Controller | undefined;
  const agent = new FakeAgent();
  let listening = false;
  try {
    ctl = await createController({ dataDir: dir, store: await store.location(), heartbeats: false, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] });
    assert.equal(ctl.store.dialect, store.label === 'SQLite' ? 'sqlite' : 'postgres');
    const events: FerryEvent[] = [];
    ctl.events.subscribe((e) => events.push(e));

    // The agent's port must be known before the join (its URL is registered), so bind first with a
    // throwaway certificate, then restart on the same port with the issued one.
    const boot = await ctl.ca.issueAgentCert('h1', ['127.0.0.1']);
    await agent.start({ caPem: ctl.ca.caCertPem, ...boot, controllerPin: ctl.ca.controllerPin });
    const port = agent.port;
    await agent.stop();
    const { token } = createJoinToken(ctl.store);
    const joined = await ctl.hosts.join({ token, name: 'h1', agentUrl: `https://127.0.0.1:${port}` }, 'https://127.0.0.1:1', '127.0.0.1');
    const identity = { caPem: joined.caCertPem, certPem: joined.certPem, keyPem: joined.keyPem, controllerPin: joined.controllerPin };
    await agent.start(identity, port);
    listening = true;

    await ctl.hosts.poll('h1');
    const h = ctl.hosts.get('h1');
    assert.equal(h.state, 'ready');
    assert.equal(h.inventory?.cpu.cores, 2);
    assert.equal(h.agent?.protocol.current, AGENT_PROTOCOL, 'GET /version, through the typed client');
    assert.equal(h.error, null);
    assert.ok(events.some((e) => e.type === 'host.ready' && e.subject === 'h1'));

    const v1 = await ctl.vms.create({ name: 'v1', memory: '128M' });
    assert.equal(v1.host, 'h1');
    assert.equal(v1.state, 'running');
    assert.equal(v1.bootId, 'boot-v1');
    assert.equal(v1.ip, '10.77.0.2');
    assert.match(v1.spec.nics[0]!.mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
    assert.equal(v1.spec.nics[0]!.ip, '10.77.0.2/24');
    assert.equal(await code(ctl.vms.create({ name: 'v1' })), 'FERRY_E_VM_EXISTS');
    assert.equal(await code(ctl.vms.create({ name: 'big', memory: '4G' })), 'FERRY_E_MEMORY_TOO_LARGE');
    assert.equal(await code(ctl.vms.create({ name: 'toobig', memory: '1800M' })), 'FERRY_E_NO_CAPACITY');

    // The agent fails: the error comes back as the agent's code, and nothing of v2 remains.
    agent.host.failCreate = { code: 'FERRY_E_QEMU_START', message: 'QEMU exited 1' };
    assert.equal(await code(ctl.vms.create({ name: 'v2' })), 'FERRY_E_QEMU_START');
    assert.deepEqual(ctl.vms.list().map((v) => v.name), ['v1']);
    assert.equal((ctl.store.sql.prepare("SELECT COUNT(*) AS n FROM ip_allocations WHERE vm = 'v2'").get() as { n: number }).n, 0);
    assert.ok(agent.calls.includes('DELETE /agent/v1/vms/v2'), 'the agent was asked to remove what it had');
    assert.ok(events.some((e) => e.type === 'vm.create_failed' && e.subject === 'v2'));
    agent.host.failCreate = null;

    // Stop and start go through the agent and are recorded.
    assert.equal((await ctl.vms.stop('v1')).state, 'stopped');
    assert.equal((await ctl.vms.start('v1')).bootId, 'boot-2');
    assert.deepEqual(await ctl.vms.guest('v1', ['ping', '1']), { ok: true, echo: 'ping 1' });
    assert.match(await ctl.vms.console('v1'), /ferry-guest ready/);

    // Reconcile: an unknown VM is adopted; one the agent no longer reports becomes stopped.
    const spec = parseVmSpec({ ...v1.spec, name: 'stray', nics: [] });
    agent.host.vms.set('stray', { name: 'stray', state: 'running', qemuStatus: 'running', pid: 2, bootId: 'b-stray', spec, startedAt: null });
    agent.host.vms.delete('v1');
    await ctl.hosts.poll('h1');
    assert.equal(ctl.vms.get('stray').state, 'running');
    assert.equal(ctl.vms.get('v1').state, 'stopped');
    assert.ok(events.some((e) => e.type === 'vm.adopted' && e.subject === 'stray'));

    // Delete: gone on the agent and in the store, its address freed.
    await ctl.vms.delete('stray');
    assert.equal(await code(Promise.resolve().then(() => ctl!.vms.get('stray'))), 'FERRY_E_VM_NOT_FOUND');
    await ctl.vms.delete('v1'); // the agent says "not found": still removed from the store
    assert.equal((ctl.store.sql.prepare('SELECT COUNT(*) AS n FROM ip_allocations').get() as { n: number }).n, 0);

    // Three missed heartbeats → unreachable, with an event; the scheduler then refuses the host.
    await agent.stop();
    listening = false;
    for (let i = 0; i < 3; i++) await ctl.hosts.poll('h1');
    assert.equal(ctl.hosts.get('h1').state, 'unreachable');
    assert.ok(events.some((e) => e.type === 'host.unreachable' && e.subject === 'h1'));
    assert.equal(await code(ctl.vms.create({ name: 'v3' })), 'FERRY_E_NO_CAPACITY');

    // Back → ready.
    await agent.start(identity, port);
    listening = true;
    await ctl.hosts.poll('h1');
    assert.equal(ctl.hosts.get('h1').state, 'ready');

    // Upgraded past the controller's range (speaks 2 versions ahead, serves only the last two): not
    // unreachable but incompatible at the first answer, with an error naming both versions; back when it is not.
    await agent.stop();
    listening = false;
    const newer = new FakeAgent({ protocol: { current: AGENT_PROTOCOL + 2, min: AGENT_PROTOCOL + 1 } });
    await newer.start(identity, port);
    try {
      await ctl.hosts.poll('h1');
      const inc = ctl.hosts.get('h1');
      assert.equal(inc.state, 'incompatible');
      assert.equal(inc.error?.code, 'FERRY_E_AGENT_PROTOCOL');
      assert.match(inc.error?.message ?? '', new RegExp(`protocol ${AGENT_PROTOCOL + 2}.*${PROTOCOL_HEADER}: "${AGENT_PROTOCOL}"`));
      assert.ok(events.some((e) => e.type === 'host.incompatible' && e.subject === 'h1'));
      assert.equal(ctl.hosts.list()[0]?.state, 'incompatible');
      assert.equal(await code(ctl.vms.create({ name: 'v4' })), 'FERRY_E_NO_CAPACITY');
    } finally {
      await newer.stop();
    }
    // One that still serves the controller's version (a rolling upgrade does the agents first) is ready.
    const next = new FakeAgent({ protocol: { current: AGENT_PROTOCOL + 1, min: AGENT_PROTOCOL } });
    await next.start(identity, port);
    try {
      await ctl.hosts.poll('h1');
      assert.deepEqual([ctl.hosts.get('h1').state, ctl.hosts.get('h1').error], ['ready', null]);
      assert.equal(ctl.hosts.get('h1').agent?.protocol.current, AGENT_PROTOCOL + 1);
    } finally {
      await next.stop();
    }
  } finally {
    if (listening) await agent.stop();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
