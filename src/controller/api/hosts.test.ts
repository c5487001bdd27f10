/**
 * GET /api/v1/hosts in its two views, through the real app over a real store: the full list (each stored
 * inventory spliced into the answer) says exactly what the registry's objects say, the summary keeps every
 * host field and only the inventory fields a list shows, and a heartbeat that brings a new inventory shows
 * in both at once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HostJson, HostSummaryJson } from '../../common/api.ts';
import { FakeAgent } from '../../testing/fake-agent.ts';
import { createController, type Controller } from '../controller.ts';
import { seedSyntheticFleet } from '../fleet/synthetic.ts';
import { createJoinToken } from '../tokens.ts';
import { buildApp } from './app.ts';
import type { App } from './types.ts';

interface Env {
  ctl: Controller;
  get(url: string): Promise<{ status: number; body: string; json: () => unknown }>;
}

async function withApp(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-hosts-'));
  let ctl: Controller | undefined;
  let app: App | undefined;
  try {
    ctl = await createController({ dataDir: dir, heartbeats: false, recover: false, probe: false });
    app = await buildApp(ctl, { tls: await ctl.ca.issue('ferry-server', ['127.0.0.1']) });
    const headers = { authorization: `Bearer ${ctl.newAdminToken!}` };
    const a = app;
    await fn({
      ctl,
      get: async (url) => {
        const res = await a.inject({ method: 'GET', url, headers });
        return { status: res.statusCode, body: res.body, json: () => res.json() };
      },
    });
  } finally {
    await app?.close();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const SUMMARY_INVENTORY_KEYS = ['accel', 'agentVersion', 'cpu', 'memoryBytes', 'protocol', 'qemu'];

test('the full list is the registry objects byte for byte; the summary keeps every host field and the inventory a list shows', async () => {
  await withApp(async ({ ctl, get }) => {
    seedSyntheticFleet(ctl.store, { hosts: 5, vms: 12 });
    // A host that never answered a heartbeat has no inventory: null in both views.
    ctl.store.sql.prepare("INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES ('h9999', 'https://127.0.0.1:9', 'ready', 0, NULL, NULL, ?)").run(new Date().toISOString());

    const full = await get('/api/v1/hosts');
    assert.equal(full.status, 200);
    // The spliced text is what JSON.stringify of the parsed hosts gives, field order included.
    assert.equal(full.body, JSON.stringify(ctl.hosts.list()));
    const hosts = full.json() as HostJson[];
    assert.equal(hosts.length, 6);
    assert.deepEqual(hosts[0]!.vms, ['vm00001', 'vm00006', 'vm00011'], "a host's VMs, sorted");
    assert.ok(hosts[0]!.inventory?.qemu.machineTypes.includes('q35'), 'the full view keeps the whole inventory');

    const summary = await get('/api/v1/hosts?view=summary');
    assert.equal(summary.status, 200);
    const summaries = summary.json() as HostSummaryJson[];
    assert.equal(summaries.length, hosts.length);
    summaries.forEach((s, i) => {
      const h = hosts[i]!;
      assert.deepEqual({ ...s, inventory: null }, { ...h, inventory: null }, `${h.name}: every host field as in the full view`);
      if (h.inventory === null) return assert.equal(s.inventory, null);
      assert.deepEqual(Object.keys(s.inventory!).sort(), SUMMARY_INVENTORY_KEYS);
      assert.deepEqual(s.inventory, {
        protocol: h.inventory.protocol,
        cpu: { model: h.inventory.cpu.model, vendor: h.inventory.cpu.vendor, cores: h.inventory.cpu.cores },
        memoryBytes: h.inventory.memoryBytes,
        accel: h.inventory.accel,
        qemu: { version: h.inventory.qemu.version },
        agentVersion: h.inventory.agentVersion,
      });
    });
    assert.ok(summary.body.length < full.body.length / 2, `summary ${summary.body.length} B, full ${full.body.length} B`);

    // Pages work alike in both views, and a view that does not exist is bad input.
    const page = (await get('/api/v1/hosts?limit=2&after=h0002&view=summary')).json() as HostSummaryJson[];
    assert.deepEqual(page.map((h) => h.name), ['h0003', 'h0004']);
    assert.deepEqual(((await get('/api/v1/hosts?limit=2&after=h0002&view=full')).json() as HostJson[]).map((h) => h.name), ['h0003', 'h0004']);
    const bad = await get('/api/v1/hosts?view=wide');
    assert.equal(bad.status, 400);
    assert.equal((bad.json() as { error: { code: string } }).error.code, 'FERRY_E_BAD_INPUT');
  });
});

test('a heartbeat that brings a new inventory shows in both views at once (the parsed inventory is not kept past its text)', { timeout: 60_000 }, async () => {
  await withApp(async ({ ctl, get }) => {
    const agent = new FakeAgent({ name: 'h1', inventory: { memoryBytes: 8 * 1024 ** 3 } });
    try {
      // The agent's port goes into its URL at the join: bind first with a throwaway certificate.
      const boot = await ctl.ca.issueAgentCert('h1', ['127.0.0.1']);
      await agent.start({ caPem: ctl.ca.caCertPem, ...boot, controllerPin: ctl.ca.controllerPin });
      const port = agent.port;
      await agent.stop();
      const joined = await ctl.hosts.join({ token: createJoinToken(ctl.store).token, name: 'h1', agentUrl: `https://127.0.0.1:${port}` }, 'https://127.0.0.1:1', '127.0.0.1');
      await agent.start({ caPem: joined.caCertPem, certPem: joined.certPem, keyPem: joined.keyPem, controllerPin: joined.controllerPin }, port);

      const views = async (): Promise<[HostJson, HostSummaryJson]> => [
        ((await get('/api/v1/hosts')).json() as HostJson[])[0]!,
        ((await get('/api/v1/hosts?view=summary')).json() as HostSummaryJson[])[0]!,
      ];
      await ctl.hosts.poll('h1');
      let [full, summary] = await views();
      assert.equal(full.inventory?.memoryBytes, 8 * 1024 ** 3);
      assert.equal(summary.inventory?.memoryBytes, 8 * 1024 ** 3);
      const version = full.inventory!.qemu.version;

      // The host's QEMU is upgraded and its memory grows: the next heartbeat says so.
      Object.assign(agent.host.inventoryFacts, { memoryBytes: 16 * 1024 ** 3, qemu: { ...full.inventory!.qemu, version: '10.1.0', machineTypes: ['q35', 'pc-q35-10.1'] } });
      assert.notEqual(version, '10.1.0');
      await ctl.hosts.poll('h1');
      [full, summary] = await views();
      assert.equal(full.inventory?.memoryBytes, 16 * 1024 ** 3);
      assert.deepEqual(full.inventory?.qemu.machineTypes, ['q35', 'pc-q35-10.1']);
      assert.equal(summary.inventory?.memoryBytes, 16 * 1024 ** 3);
      assert.equal(summary.inventory?.qemu.version, '10.1.0');
      assert.equal(ctl.hosts.get('h1').inventory?.qemu.version, '10.1.0', 'GET /hosts/h1 and the scheduler see it too');
    } finally {
      await agent.stop();
    }
  });
});

test("a host's VMs and free memory follow every change of the store at once (the loads are kept only while it is unchanged)", async () => {
  await withApp(async ({ ctl, get }) => {
    seedSyntheticFleet(ctl.store, { hosts: 3, vms: 6 });
    const host = async (name: string): Promise<HostJson> => (await get(`/api/v1/hosts/${name}`)).json() as HostJson;
    const page = async (): Promise<HostJson[]> => (await get('/api/v1/hosts?limit=2')).json() as HostJson[];
    const before = await host('h0001');
    assert.deepEqual(before.vms, ['vm00001', 'vm00004']);
    assert.deepEqual((await page())[0]!.vms, before.vms, 'asked twice: the same');

    // A VM placed, one moved, one removed: each shows in the next answer, in the page and the single host.
    const spec = (ctl.store.sql.prepare("SELECT spec FROM vms WHERE name = 'vm00001'").get() as { spec: string }).spec;
    const at = new Date().toISOString();
    ctl.store.sql.prepare("INSERT INTO vms (name, host, state, spec, boot_id, ready, ip, created_at, updated_at) VALUES ('new1', 'h0001', 'creating', ?, NULL, 1, NULL, ?, ?)").run(spec.replace('vm00001', 'new1'), at, at);
    assert.deepEqual((await host('h0001')).vms, ['new1', 'vm00001', 'vm00004']);
    const after = (await host('h0001')).freeMemoryBytes;
    assert.ok(typeof after === 'number' && typeof before.freeMemoryBytes === 'number' && after < before.freeMemoryBytes, `a VM being created takes memory: ${before.freeMemoryBytes} → ${after}`);
    ctl.store.sql.prepare("UPDATE vms SET host = 'h0002' WHERE name = 'vm00004'").run();
    assert.deepEqual((await page()).map((h) => h.vms), [['new1', 'vm00001'], ['vm00002', 'vm00004', 'vm00005']]);
    ctl.store.sql.prepare("DELETE FROM vms WHERE name = 'new1'").run();
    assert.deepEqual((await host('h0001')).vms, ['vm00001']);
  });
});
