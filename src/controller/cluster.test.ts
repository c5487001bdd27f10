/**
 * The controller against a fake agent at the wire: a real HTTPS server with mutual TLS, using the
 * certificate the controller issued at join. Covers join → heartbeat → create (and its undo when the
 * agent fails) → reconcile (adopt, vanish) → guest/console pass-through → unreachable after 3 misses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { FerryError } from '../common/errors.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER, type HostInventory, type VmStatus } from '../common/protocol.ts';
import { parseVmSpec, type VmSpec } from '../common/spec.ts';
import { createController, type Controller } from './controller.ts';
import type { FerryEvent } from './events.ts';
import { createJoinToken } from './tokens.ts';

const MiB = 1024 * 1024;

class FakeAgent {
  vms = new Map<string, VmStatus>();
  failCreate: { code: string; message: string } | null = null;
  calls: string[] = [];
  server!: Server;
  port = 0;

  inventory(): HostInventory {
    return {
      name: 'h1',
      protocol: AGENT_PROTOCOL,
      cpu: { model: 'qemu64', vendor: 'x', flags: [], cores: 2 },
      memoryBytes: 2048 * MiB,
      freeMemoryBytes: 1500 * MiB,
      accel: 'tcg',
      qemu: { version: '10.0.2', machineTypes: ['pc-q35-10.0'] },
      migrationAddress: '127.0.0.1',
      agentVersion: 'fake',
    };
  }

  async start(tls: { caCertPem: string; certPem: string; keyPem: string }, port = 0): Promise<void> {
    this.server = createServer({ ca: tls.caCertPem, cert: tls.certPem, key: tls.keyPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        const send = (status: number, v: unknown, type = 'application/json'): void => {
          res.writeHead(status, { 'content-type': type });
          res.end(type === 'application/json' ? JSON.stringify(v) : String(v));
        };
        const cn = (req.socket as TLSSocket).getPeerCertificate().subject?.CN;
        this.calls.push(`${req.method} ${req.url}`);
        if (cn !== 'ferry-controller' || req.headers[PROTOCOL_HEADER] !== String(AGENT_PROTOCOL)) {
          return send(400, { error: { code: 'FERRY_E_AGENT_PROTOCOL', message: 'bad caller' } });
        }
        const m = /^\/agent\/v1\/vms\/([a-z0-9-]+)(?:\/(\w+))?$/.exec(req.url ?? '');
        if (req.method === 'GET' && req.url === '/agent/v1/inventory') return send(200, this.inventory());
        if (req.method === 'GET' && req.url === '/agent/v1/vms') return send(200, [...this.vms.values()]);
        if (req.method === 'POST' && req.url === '/agent/v1/vms') {
          const spec = parseVmSpec((JSON.parse(body) as { spec: VmSpec }).spec);
          if (this.failCreate) return send(500, { error: this.failCreate });
          const st: VmStatus = { name: spec.name, state: 'running', qemuStatus: 'running', pid: 1, bootId: `boot-${spec.name}`, spec, startedAt: new Date().toISOString() };
          this.vms.set(spec.name, st);
          return send(200, st);
        }
        const vm = m ? this.vms.get(m[1]!) : undefined;
        if (m && !vm) return send(404, { error: { code: 'FERRY_E_VM_NOT_FOUND', message: 'no such VM' } });
        if (m && vm) {
          if (req.method === 'DELETE') {
            this.vms.delete(vm.name);
            return send(200, { deleted: true });
          }
          if (m[2] === 'stop') return send(200, Object.assign(vm, { state: 'stopped', qemuStatus: null, bootId: null }));
          if (m[2] === 'start') return send(200, Object.assign(vm, { state: 'running', bootId: 'boot-2' }));
          if (m[2] === 'guest') return send(200, { ok: true, echo: (JSON.parse(body) as { command: string }).command });
          if (m[2] === 'console') return send(200, 'Linux version 6.1\nferry-guest ready\n', 'text/plain');
        }
        return send(404, { error: { code: 'FERRY_E_NOT_FOUND', message: 'no route' } });
      });
    });
    await new Promise<void>((r) => this.server.listen(port, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'no error';
  } catch (e) {
    assert.ok(e instanceof FerryError, String(e));
    return e.code;
  }
};

test('join, heartbeat, create and undo, reconcile, pass-through, unreachable', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cluster-'));
  let ctl: Controller | undefined;
  const agent = new FakeAgent();
  let listening = false;
  try {
    ctl = await createController({ dataDir: dir, heartbeats: false, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] });
    const events: FerryEvent[] = [];
    ctl.events.subscribe((e) => events.push(e));

    // The agent's port must be known before the join (its URL is registered), so bind first with a
    // throwaway certificate, then restart on the same port with the issued one.
    const boot = await ctl.ca.issueAgentCert('h1', ['127.0.0.1']);
    await agent.start({ caCertPem: ctl.ca.caCertPem, ...boot });
    const port = agent.port;
    await agent.stop();
    const { token } = createJoinToken(ctl.store);
    const joined = await ctl.hosts.join({ token, name: 'h1', agentUrl: `https://127.0.0.1:${port}` }, 'https://127.0.0.1:1', '127.0.0.1');
    await agent.start({ caCertPem: joined.caCertPem, certPem: joined.certPem, keyPem: joined.keyPem }, port);
    listening = true;

    await ctl.hosts.poll('h1');
    const h = ctl.hosts.get('h1');
    assert.equal(h.state, 'ready');
    assert.equal(h.inventory?.cpu.cores, 2);
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
    agent.failCreate = { code: 'FERRY_E_QEMU_START', message: 'QEMU exited 1' };
    assert.equal(await code(ctl.vms.create({ name: 'v2' })), 'FERRY_E_QEMU_START');
    assert.deepEqual(ctl.vms.list().map((v) => v.name), ['v1']);
    assert.equal((ctl.store.sqlite.prepare("SELECT COUNT(*) AS n FROM ip_allocations WHERE vm = 'v2'").get() as { n: number }).n, 0);
    assert.ok(agent.calls.includes('DELETE /agent/v1/vms/v2'), 'the agent was asked to remove what it had');
    assert.ok(events.some((e) => e.type === 'vm.create_failed' && e.subject === 'v2'));
    agent.failCreate = null;

    // Stop and start go through the agent and are recorded.
    assert.equal((await ctl.vms.stop('v1')).state, 'stopped');
    assert.equal((await ctl.vms.start('v1')).bootId, 'boot-2');
    assert.deepEqual(await ctl.vms.guest('v1', ['ping', '1']), { ok: true, echo: 'ping 1' });
    assert.match(await ctl.vms.console('v1'), /ferry-guest ready/);

    // Reconcile: an unknown VM is adopted; one the agent no longer reports becomes stopped.
    const spec = parseVmSpec({ ...v1.spec, name: 'stray', nics: [] });
    agent.vms.set('stray', { name: 'stray', state: 'running', qemuStatus: 'running', pid: 2, bootId: 'b-stray', spec, startedAt: null });
    agent.vms.delete('v1');
    await ctl.hosts.poll('h1');
    assert.equal(ctl.vms.get('stray').state, 'running');
    assert.equal(ctl.vms.get('v1').state, 'stopped');
    assert.ok(events.some((e) => e.type === 'vm.adopted' && e.subject === 'stray'));

    // Delete: gone on the agent and in the store, its address freed.
    await ctl.vms.delete('stray');
    assert.equal(await code(Promise.resolve().then(() => ctl!.vms.get('stray'))), 'FERRY_E_VM_NOT_FOUND');
    await ctl.vms.delete('v1'); // the agent says "not found": still removed from the store
    assert.equal((ctl.store.sqlite.prepare('SELECT COUNT(*) AS n FROM ip_allocations').get() as { n: number }).n, 0);

    // Three missed heartbeats → unreachable, with an event; the scheduler then refuses the host.
    await agent.stop();
    listening = false;
    for (let i = 0; i < 3; i++) await ctl.hosts.poll('h1');
    assert.equal(ctl.hosts.get('h1').state, 'unreachable');
    assert.ok(events.some((e) => e.type === 'host.unreachable' && e.subject === 'h1'));
    assert.equal(await code(ctl.vms.create({ name: 'v3' })), 'FERRY_E_NO_CAPACITY');

    // Back → ready.
    await agent.start({ caCertPem: joined.caCertPem, certPem: joined.certPem, keyPem: joined.keyPem }, port);
    listening = true;
    await ctl.hosts.poll('h1');
    assert.equal(ctl.hosts.get('h1').state, 'ready');
  } finally {
    if (listening) await agent.stop();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
