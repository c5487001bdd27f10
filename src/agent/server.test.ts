import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { caFromPem, createCaCert, type ClusterCa, type KeyPairPem } from '../controller/ca.ts';
import { AGENT_PROTOCOL, AGENT_PROTOCOL_MIN, PROTOCOL_HEADER, type HostInventory } from '../common/protocol.ts';
import { defaultVmSpec } from '../common/spec.ts';
import { TERM_HEADER } from '../common/agent-routes.ts';
import { startAgent, type RunningAgent } from './server.ts';
import { TermFence } from './term.ts';

interface Reply {
  status: number;
  type: string;
  body: unknown;
}

let ca: ClusterCa;
let stranger: ClusterCa;
let otherHost: KeyPairPem;
let agent: RunningAgent;
let dir: string;

before(async () => {
  const a = await createCaCert('cluster CA');
  ca = await caFromPem(a.certPem, a.keyPem);
  const b = await createCaCert('stranger CA');
  stranger = await caFromPem(b.certPem, b.keyPem);
  otherHost = await ca.issueAgentCert('h2', ['127.0.0.1']);
  const mine = await ca.issueAgentCert('h1', ['127.0.0.1']);
  dir = await mkdtemp(join(tmpdir(), 'ferry-agent-srv-'));
  agent = await startAgent({
    name: 'h1',
    dataDir: dir,
    migrationAddress: '127.0.0.1',
    listen: { host: '127.0.0.1', port: 0 },
    tls: { caPem: ca.caCertPem, certPem: mine.certPem, keyPem: mine.keyPem, controllerPin: ca.controllerPin },
    accel: 'tcg',
  });
});

after(async () => {
  await agent?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** One HTTPS call; `client` is the certificate presented (none when undefined). */
function call(
  method: string,
  path: string,
  opts: { client?: KeyPairPem | undefined; header?: string | null; term?: number; body?: string; url?: string } = {},
): Promise<Reply> {
  const client = 'client' in opts ? opts.client : ca.controllerClient;
  const headers: Record<string, string> = {};
  if (opts.header !== null) headers[PROTOCOL_HEADER] = opts.header ?? String(AGENT_PROTOCOL);
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.term !== undefined) headers[TERM_HEADER] = String(opts.term);
  return new Promise((resolve, reject) => {
    const req = request(
      `${opts.url ?? agent.url}${path}`,
      {
        method,
        ca: ca.caCertPem,
        ...(client === undefined ? {} : { cert: client.certPem, key: client.keyPem }),
        agent: false,
        headers,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          const type = String(res.headers['content-type'] ?? '');
          resolve({
            status: res.statusCode ?? 0,
            type,
            body: type.includes('json') ? (JSON.parse(text) as unknown) : text,
          });
        });
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

const codeOf = (r: Reply): unknown => (r.body as { error?: { code?: unknown } }).error?.code;

test('the controller’s certificate and the protocol header get the inventory and the VM list', async () => {
  const inv = await call('GET', '/agent/v1/inventory');
  assert.equal(inv.status, 200);
  const body = inv.body as HostInventory;
  assert.equal(body.name, 'h1');
  assert.equal(body.protocol, AGENT_PROTOCOL);
  assert.equal(body.accel, 'tcg');
  assert.equal(body.migrationAddress, '127.0.0.1');
  assert.match(body.qemu.version, /^\d+\.\d+\.\d+$/);
  assert.ok(body.freeMemoryBytes > 0 && body.freeMemoryBytes < body.memoryBytes);
  const vms = await call('GET', '/agent/v1/vms');
  assert.deepEqual([vms.status, vms.body], [200, []]);
});

test('a client without a certificate is refused in the TLS handshake', async () => {
  await assert.rejects(
    call('GET', '/agent/v1/inventory', { client: undefined }),
    (e: Error & { code?: string }) => {
      // TLS 1.3 reports the server's alert as a certificate-required error or a reset, depending on timing.
      assert.match(String(e.code), /CERTIFICATE_REQUIRED|ECONNRESET|EPIPE|HANDSHAKE/);
      return true;
    },
  );
});

test('a certificate from another CA is refused in the TLS handshake', async () => {
  await assert.rejects(
    call('GET', '/agent/v1/inventory', { client: stranger.controllerClient }),
    (e: Error & { code?: string }) => {
      assert.match(String(e.code), /UNKNOWN_CA|ECONNRESET|EPIPE|BAD_CERTIFICATE/);
      return true;
    },
  );
});

test('a cluster certificate that is not the controller’s (another host) gets 403', async () => {
  const r = await call('GET', '/agent/v1/vms', { client: otherHost });
  assert.equal(r.status, 403);
  assert.equal(codeOf(r), 'FERRY_E_FORBIDDEN');
  assert.match(JSON.stringify(r.body), /h2/);
});

test('a CA-signed certificate with CN ferry-controller that is not the pinned controller key gets 403', async () => {
  // What a stolen CA signature or a join as "ferry-controller" (refused now) would have produced.
  const forged = await ca.issue('ferry-controller', []);
  const r = await call('GET', '/agent/v1/vms', { client: forged });
  assert.equal(r.status, 403);
  assert.equal(codeOf(r), 'FERRY_E_FORBIDDEN');
  // The real controller certificate still passes (the gate is its key, pinned at join).
  assert.equal((await call('GET', '/agent/v1/vms')).status, 200);
});

test('the current and the previous protocol version are served; others get 400 FERRY_E_AGENT_PROTOCOL', async () => {
  for (const header of [String(AGENT_PROTOCOL), String(AGENT_PROTOCOL_MIN)]) {
    const r = await call('GET', '/agent/v1/inventory', { header });
    assert.equal(r.status, 200, `header ${header}`);
  }
  for (const header of [null, String(AGENT_PROTOCOL + 1), String(AGENT_PROTOCOL_MIN - 1), '', 'x']) {
    const r = await call('GET', '/agent/v1/inventory', { header });
    assert.equal(r.status, 400, `header ${String(header)}`);
    assert.equal(codeOf(r), 'FERRY_E_AGENT_PROTOCOL');
    assert.equal(
      (r.body as { error: { details: { agentProtocol: number } } }).error.details.agentProtocol,
      AGENT_PROTOCOL,
    );
  }
});

test('errors map onto the registry: code, message and its HTTP status', async () => {
  const cases: [string, string, string | undefined, number, string][] = [
    ['GET', '/agent/v1/vms/nope', undefined, 404, 'FERRY_E_VM_NOT_FOUND'],
    ['GET', '/agent/v1/vms/Bad_Name', undefined, 400, 'FERRY_E_BAD_NAME'],
    ['POST', '/agent/v1/vms/nope/pause', undefined, 404, 'FERRY_E_VM_NOT_FOUND'],
    ['DELETE', '/agent/v1/vms/nope', undefined, 404, 'FERRY_E_VM_NOT_FOUND'],
    ['GET', '/agent/v1/vms/nope/console', undefined, 404, 'FERRY_E_VM_NOT_FOUND'],
    ['GET', '/agent/v1/nothing-here', undefined, 404, 'FERRY_E_NOT_FOUND'],
    ['POST', '/agent/v1/vms', '{"spec": {"name": "x"}}', 400, 'FERRY_E_BAD_SPEC'],
    ['POST', '/agent/v1/vms', '{not json', 400, 'FERRY_E_BAD_INPUT'],
    ['POST', '/agent/v1/vms', '[1]', 400, 'FERRY_E_BAD_INPUT'],
    ['POST', '/agent/v1/vms/nope/stop', '{"timeoutMs": "soon"}', 400, 'FERRY_E_BAD_INPUT'],
    ['POST', '/agent/v1/vms/nope/guest', '{"command": "a\\nb"}', 400, 'FERRY_E_BAD_INPUT'],
    // NICs without --vm-bridge: refused before any QEMU or tap exists.
    [
      'POST',
      '/agent/v1/vms',
      JSON.stringify({
        spec: defaultVmSpec('n1', { nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0' }] }),
      }),
      400,
      'FERRY_E_BAD_SPEC',
    ],
    // More memory than the host has left to promise.
    [
      'POST',
      '/agent/v1/vms',
      JSON.stringify({ spec: defaultVmSpec('big', { memoryBytes: 2 ** 50 }) }),
      409,
      'FERRY_E_NO_CAPACITY',
    ],
  ];
  for (const [method, path, body, status, code] of cases) {
    const r = await call(method, path, body === undefined ? {} : { body });
    assert.equal(r.status, status, `${method} ${path} ${body ?? ''}: ${JSON.stringify(r.body)}`);
    assert.equal(codeOf(r), code, `${method} ${path}`);
    assert.equal(typeof (r.body as { error: { message: unknown } }).error.message, 'string');
  }
  // Nothing of the refused creates was left behind.
  const vms = await call('GET', '/agent/v1/vms');
  assert.deepEqual(vms.body, []);
});

test('extensions (the migration routes) mount behind the same gates and share the host', async () => {
  const d = await mkdtemp(join(tmpdir(), 'ferry-agent-ext-'));
  let ext: RunningAgent | undefined;
  try {
    const mine = await ca.issueAgentCert('h3', ['127.0.0.1']);
    ext = await startAgent({
      name: 'h3',
      dataDir: d,
      migrationAddress: '127.0.0.1',
      listen: { host: '127.0.0.1', port: 0 },
      tls: { caPem: ca.caCertPem, certPem: mine.certPem, keyPem: mine.keyPem, controllerPin: ca.controllerPin },
      accel: 'tcg',
      extend: ({ app, host }) => {
        app.get('/agent/v1/migrations/:id', async () => ({ accel: host.accel, dataDir: host.dataDir }));
      },
    });
    const ok = await call('GET', '/agent/v1/migrations/m1', { url: ext.url });
    assert.deepEqual([ok.status, ok.body], [200, { accel: 'tcg', dataDir: d }]);
    const other = await call('GET', '/agent/v1/migrations/m1', { url: ext.url, client: otherHost });
    assert.equal(other.status, 403);
    const old = await call('GET', '/agent/v1/migrations/m1', { url: ext.url, header: '0' });
    assert.equal(codeOf(old), 'FERRY_E_AGENT_PROTOCOL');
  } finally {
    await ext?.close();
    await rm(d, { recursive: true, force: true });
  }
});

// Last: once it has seen a term, this agent refuses the term-less calls of the tests above.
test('a leader term older than the newest seen is refused with FERRY_E_STALE_TERM, and the newest survives a restart', async () => {
  // Before any leader: a controller alone on its store sends no term and is served.
  assert.equal((await call('GET', '/agent/v1/vms')).status, 200);
  assert.equal((await call('GET', '/agent/v1/vms', { term: 3 })).status, 200);
  const stale = await call('GET', '/agent/v1/vms', { term: 2 });
  assert.equal(stale.status, 409);
  assert.deepEqual((stale.body as { error: { code: string; details: unknown } }).error.code, 'FERRY_E_STALE_TERM');
  assert.deepEqual((stale.body as { error: { details: unknown } }).error.details, { newestTerm: 3, requestTerm: 2 });
  // No term at all is term 0: once a leader spoke, a follower (which sends none) gives no orders either.
  assert.equal((await call('GET', '/agent/v1/vms')).status, 409);
  assert.equal((await call('GET', '/agent/v1/vms', { term: 3 })).status, 200);
  assert.equal((await call('GET', '/agent/v1/vms', { term: 4 })).status, 200);
  assert.equal((await call('GET', '/agent/v1/vms', { term: Number.NaN })).status, 400);
  // What a restarted agent reads back from its data dir.
  assert.equal(new TermFence(dir).term, 4);
});
