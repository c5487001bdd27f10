import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createController, type Controller } from '../controller.ts';
import { nowIso } from '../store/db.ts';
import { BODY_LIMIT, buildApp } from './app.ts';
import type { App } from './types.ts';

interface Env {
  ctl: Controller;
  app: App;
  token: string;
  auth: { authorization: string };
}

async function withApp(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-'));
  let ctl: Controller | undefined;
  let app: App | undefined;
  try {
    ctl = await createController({ dataDir: dir, heartbeats: false, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] });
    const leaf = await ctl.ca.issue('ferry-server', ['127.0.0.1']);
    app = await buildApp(ctl, { tls: leaf });
    const token = ctl.newAdminToken!;
    await fn({ ctl, app, token, auth: { authorization: `Bearer ${token}` } });
  } finally {
    await app?.close();
    await ctl?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('auth: no token or a wrong one → 401 FERRY_E_UNAUTHORIZED; health is public', async () => {
  await withApp(async ({ app, auth }) => {
    const none = await app.inject({ method: 'GET', url: '/api/v1/vms' });
    assert.equal(none.statusCode, 401);
    assert.equal(none.json().error.code, 'FERRY_E_UNAUTHORIZED');
    const wrong = await app.inject({ method: 'GET', url: '/api/v1/vms', headers: { authorization: 'Bearer 0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } });
    assert.equal(wrong.statusCode, 401);
    const ok = await app.inject({ method: 'GET', url: '/api/v1/vms', headers: auth });
    assert.equal(ok.statusCode, 200);
    assert.deepEqual(ok.json(), []);
    const health = await app.inject({ method: 'GET', url: '/api/v1/health' });
    assert.equal(health.statusCode, 200);
    assert.equal(health.json().ok, true);
  });
});

test("GET /api/v1/version: the server's Ferry version, the API's, and the agent protocols it speaks", async () => {
  await withApp(async ({ app, auth }) => {
    const res = await app.inject({ method: 'GET', url: '/api/v1/version', headers: auth });
    assert.equal(res.statusCode, 200, res.body);
    const v = res.json() as { version: string; apiVersion: string; agentProtocol: { current: number; min: number } };
    assert.equal(v.version, JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')).version);
    assert.ok(v.agentProtocol.min <= v.agentProtocol.current && v.agentProtocol.min >= 1, JSON.stringify(v));
    assert.equal((await app.inject({ method: 'GET', url: '/api/v1/version' })).statusCode, 401, 'not public');
  });
});

test('malformed bodies → 400 FERRY_E_BAD_INPUT; unknown route → 404 FERRY_E_NOT_FOUND', async () => {
  await withApp(async ({ app, auth }) => {
    const bad = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'ok', vcpus: 'x' } });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json().error.code, 'FERRY_E_BAD_INPUT');
    const badName = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'Bad Name!', vcpus: 'x' } });
    assert.equal(badName.statusCode, 400);
    assert.equal(badName.json().error.code, 'FERRY_E_BAD_NAME');
    const notJson = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: '{nope' });
    assert.equal(notJson.statusCode, 400);
    assert.equal(notJson.json().error.code, 'FERRY_E_BAD_INPUT');
    const extra = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'a', colour: 'red' } });
    assert.equal(extra.statusCode, 400);
    const size = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'a', memory: '12Q' } });
    assert.equal(size.statusCode, 400);
    assert.equal(size.json().error.code, 'FERRY_E_BAD_SIZE');
    const nf = await app.inject({ method: 'GET', url: '/api/v1/nothing', headers: auth });
    assert.equal(nf.statusCode, 404);
    assert.equal(nf.json().error.code, 'FERRY_E_NOT_FOUND');
  });
});

test('duplicate VM → 409 FERRY_E_VM_EXISTS; unknown host → 404; unknown VM → 404', async () => {
  await withApp(async ({ ctl, app, auth }) => {
    const now = nowIso();
    ctl.store.sql.prepare("INSERT INTO hosts (name, url, state, maintenance, inventory, last_seen_at, joined_at) VALUES ('h1', 'https://127.0.0.1:1', 'ready', 0, NULL, NULL, ?)").run(now);
    ctl.store.sql.prepare("INSERT INTO vms (name, host, state, spec, boot_id, ip, created_at, updated_at) VALUES ('v1', 'h1', 'running', '{}', NULL, NULL, ?, ?)").run(now, now);
    const dup = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'v1' } });
    assert.equal(dup.statusCode, 409);
    assert.equal(dup.json().error.code, 'FERRY_E_VM_EXISTS');
    const host = await app.inject({ method: 'GET', url: '/api/v1/hosts/nope', headers: auth });
    assert.equal(host.statusCode, 404);
    assert.equal(host.json().error.code, 'FERRY_E_HOST_NOT_FOUND');
    const onHost = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'v2', host: 'nope' } });
    assert.equal(onHost.statusCode, 404);
    assert.equal(onHost.json().error.code, 'FERRY_E_HOST_NOT_FOUND');
    // h1 has no inventory yet: no capacity, with the reason per host.
    const noCap = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'v2' } });
    assert.equal(noCap.statusCode, 409);
    assert.equal(noCap.json().error.code, 'FERRY_E_NO_CAPACITY');
    assert.equal(noCap.json().error.details.why[0].host, 'h1');
    // Nothing was left behind by the refused creates.
    assert.deepEqual(ctl.vms.list().map((v) => v.name), ['v1']);
    const vm = await app.inject({ method: 'GET', url: '/api/v1/vms/v9', headers: auth });
    assert.equal(vm.json().error.code, 'FERRY_E_VM_NOT_FOUND');
    const shown = await app.inject({ method: 'GET', url: '/api/v1/hosts/h1', headers: auth });
    assert.deepEqual(shown.json().vms, ['v1']);
  });
});

test('join tokens are single-use; the join issues a certificate and registers the host', async () => {
  await withApp(async ({ ctl, app, auth }) => {
    const t = await app.inject({ method: 'POST', url: '/api/v1/join-tokens', headers: auth });
    assert.equal(t.statusCode, 200);
    const { token, expiresAt } = t.json() as { token: string; expiresAt: string };
    assert.match(token, /^[a-z0-9]+\.[A-Za-z0-9_-]+$/);
    assert.ok(Date.parse(expiresAt) > Date.now());
    const body = { token, name: 'h1', agentUrl: 'https://127.0.0.1:9443' };
    const first = await app.inject({ method: 'POST', url: '/api/v1/join', payload: body });
    assert.equal(first.statusCode, 200, first.body);
    const j = first.json() as { caCertPem: string; certPem: string; keyPem: string; serverUrl: string };
    assert.equal(j.caCertPem, ctl.ca.caCertPem);
    assert.match(j.certPem, /BEGIN CERTIFICATE/);
    assert.match(j.keyPem, /BEGIN PRIVATE KEY/);
    assert.equal(ctl.hosts.get('h1').url, 'https://127.0.0.1:9443');
    const again = await app.inject({ method: 'POST', url: '/api/v1/join', payload: { ...body, name: 'h2' } });
    assert.equal(again.statusCode, 401);
    assert.equal(again.json().error.code, 'FERRY_E_JOIN_TOKEN');
    const forged = await app.inject({ method: 'POST', url: '/api/v1/join', payload: { ...body, token: token.split('.')[0] + '.' + 'x'.repeat(43) } });
    assert.equal(forged.json().error.code, 'FERRY_E_JOIN_TOKEN');
    const expired = await app.inject({ method: 'POST', url: '/api/v1/join-tokens', headers: auth, payload: { ttlSeconds: 10 } });
    ctl.store.sql.prepare('UPDATE join_tokens SET expires_at = ? WHERE id = ?').run(new Date(Date.now() - 1000).toISOString(), (expired.json() as { token: string }).token.split('.')[0]);
    const late = await app.inject({ method: 'POST', url: '/api/v1/join', payload: { ...body, token: (expired.json() as { token: string }).token } });
    assert.equal(late.json().error.code, 'FERRY_E_JOIN_TOKEN');
    const named = await app.inject({ method: 'POST', url: '/api/v1/join', payload: { ...body, agentUrl: 'https://example.com:1' } });
    assert.equal(named.statusCode, 400);
  });
});

test('join refuses the controller’s own names, an existing host and an address it did not see, and keeps the token', async () => {
  await withApp(async ({ ctl, app, auth }) => {
    const join1 = async (payload: Record<string, unknown>, remoteAddress = '127.0.0.1'): Promise<{ status: number; code: unknown; cert: boolean }> => {
      const r = await app.inject({ method: 'POST', url: '/api/v1/join', payload, remoteAddress });
      const b = r.json() as { error?: { code?: unknown }; certPem?: unknown };
      return { status: r.statusCode, code: b.error?.code, cert: typeof b.certPem === 'string' };
    };
    const newToken = async (): Promise<string> =>
      ((await app.inject({ method: 'POST', url: '/api/v1/join-tokens', headers: auth })).json() as { token: string }).token;
    const token = await newToken();
    const base = { token, agentUrl: 'https://127.0.0.1:9443' };
    assert.deepEqual(await join1({ ...base, name: 'ferry-controller' }), { status: 403, code: 'FERRY_E_HOST_NAME_RESERVED', cert: false });
    assert.deepEqual(await join1({ ...base, name: 'ferry-server' }), { status: 403, code: 'FERRY_E_HOST_NAME_RESERVED', cert: false });
    assert.equal((await join1({ ...base, name: 'Ferry Server' })).status, 400);
    // The body's address is not the connection's: no certificate for an address the controller did not see.
    assert.deepEqual(await join1({ ...base, name: 'h1' }, '10.9.9.9'), { status: 403, code: 'FERRY_E_JOIN_ADDRESS', cert: false });
    // A dual-stack socket reports IPv4 as ::ffff:a.b.c.d: that is the same address.
    assert.deepEqual(await join1({ ...base, name: 'h1' }, '::ffff:127.0.0.1'), { status: 200, code: undefined, cert: true });
    // None of the refusals used the token up: the last join did.
    assert.equal((await join1({ ...base, name: 'h2' })).code, 'FERRY_E_JOIN_TOKEN');
    const other = await newToken();
    assert.deepEqual(await join1({ token: other, agentUrl: 'https://127.0.0.1:9444', name: 'h1' }), { status: 409, code: 'FERRY_E_HOST_EXISTS', cert: false });
    assert.equal(ctl.hosts.get('h1').url, 'https://127.0.0.1:9443', 'the existing host was not taken over');
    assert.deepEqual(ctl.hosts.list().map((h) => h.name), ['h1']);
    assert.equal((await join1({ token: other, agentUrl: 'https://127.0.0.1:9444', name: 'h2' })).status, 200);
    // Without a valid token nothing tells whether a name exists.
    assert.equal((await join1({ token: other, agentUrl: 'https://127.0.0.1:9445', name: 'h1' })).code, 'FERRY_E_JOIN_TOKEN');
  });
});

test('the OpenAPI document lists the routes; metrics are exposed', async () => {
  await withApp(async ({ app, auth }) => {
    const res = await app.inject({ method: 'GET', url: '/api/v1/openapi.json', headers: auth });
    assert.equal(res.statusCode, 200);
    const doc = res.json() as { openapi: string; paths: Record<string, Record<string, unknown>> };
    assert.match(doc.openapi, /^3\./);
    for (const [path, method] of [
      ['/api/v1/health', 'get'],
      ['/api/v1/version', 'get'],
      ['/api/v1/join-tokens', 'post'],
      ['/api/v1/join', 'post'],
      ['/api/v1/hosts', 'get'],
      ['/api/v1/hosts/{name}', 'get'],
      ['/api/v1/vms', 'post'],
      ['/api/v1/vms/{name}', 'delete'],
      ['/api/v1/vms/{name}/start', 'post'],
      ['/api/v1/vms/{name}/stop', 'post'],
      ['/api/v1/vms/{name}/guest', 'post'],
      ['/api/v1/vms/{name}/console', 'get'],
      ['/api/v1/events', 'get'],
    ] as const) {
      assert.ok(doc.paths[path]?.[method], `${method} ${path} in OpenAPI`);
    }
    const m = await app.inject({ method: 'GET', url: '/metrics', headers: auth });
    assert.equal(m.statusCode, 200);
    assert.match(m.body, /ferry_hosts\{state="ready"\} 0/);
    assert.match(m.body, /ferry_vms\{state="running"\} 0/);
    assert.match(m.body, /ferry_api_requests_total\{method="GET",route="\/api\/v1\/openapi.json",status="200"\} 1/);
  });
});

test('a create with a bad image or an unknown network is a 4xx with its own code, and leaves nothing', async () => {
  await withApp(async ({ ctl, app, auth }) => {
    const before = ctl.store.sql.prepare('SELECT (SELECT count(*) FROM vms) AS vms, (SELECT count(*) FROM ip_allocations) AS ips').get();
    for (const image of ['/etc', '/nonexistent', '/etc/passwd', '/a/../etc', '/tmp']) {
      const res = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'a1', image } });
      assert.equal(res.statusCode, 400, `${image}: ${res.body}`);
      assert.equal(res.json().error.code, 'FERRY_E_BAD_IMAGE', image);
    }
    const net = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'a1', network: 'nonet' } });
    assert.equal(net.statusCode, 404, net.body);
    assert.equal(net.json().error.code, 'FERRY_E_NETWORK_NOT_FOUND');
    assert.match(net.json().error.message, /vm0/);
    assert.deepEqual(ctl.store.sql.prepare('SELECT (SELECT count(*) FROM vms) AS vms, (SELECT count(*) FROM ip_allocations) AS ips').get(), before);
  });
});

test('transport refusals keep their status in the envelope: 413 over the body limit, 415, a bad URL', async () => {
  await withApp(async ({ app, auth }) => {
    const big = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: `{"name":"${'a'.repeat(BODY_LIMIT)}"}` });
    assert.equal(big.statusCode, 413);
    assert.equal(big.json().error.code, 'FERRY_E_BODY_TOO_LARGE');
    const xml = await app.inject({ method: 'POST', url: '/api/v1/vms', headers: { ...auth, 'content-type': 'application/xml' }, payload: '<vm name="a1"/>' });
    assert.equal(xml.statusCode, 415);
    assert.equal(xml.json().error.code, 'FERRY_E_MEDIA_TYPE');
    const url = await app.inject({ method: 'GET', url: '/api/v1/vms/%zz', headers: auth });
    assert.equal(url.statusCode, 400);
    assert.equal(url.json().error.code, 'FERRY_E_BAD_INPUT');
  });
});

test('cloud-init seed input is checked before anything is reserved: user-data over 1 MiB, a line that is no SSH key', async () => {
  await withApp(async ({ ctl, app, auth }) => {
    const before = ctl.store.sql.prepare('SELECT (SELECT count(*) FROM vms) AS vms, (SELECT count(*) FROM ip_allocations) AS ips').get();
    const post = (body: object) => app.inject({ method: 'POST', url: '/api/v1/vms', headers: auth, payload: { name: 'ci1', network: 'vm0', ...body } });
    const big = await post({ userData: `#cloud-config\n# ${'x'.repeat(1024 * 1024)}\n` });
    assert.equal(big.statusCode, 413, big.body);
    assert.equal(big.json().error.code, 'FERRY_E_USER_DATA_TOO_LARGE');
    const key = await post({ sshKeys: ['hello world'] });
    assert.equal(key.statusCode, 400, key.body);
    assert.equal(key.json().error.code, 'FERRY_E_BAD_SSH_KEY');
    const host = await post({ hostname: 'Not_A_Name' });
    assert.equal(host.statusCode, 400, host.body);
    assert.deepEqual(ctl.store.sql.prepare('SELECT (SELECT count(*) FROM vms) AS vms, (SELECT count(*) FROM ip_allocations) AS ips').get(), before);
  });
});

test('the web console: its static files without a token, under a strict CSP; nothing else of the server without one', async () => {
  await withApp(async ({ app }) => {
    const page = await app.inject({ method: 'GET', url: '/' });
    assert.equal(page.statusCode, 200, page.body);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(page.body, /<script type="module" src="\/app\.js">/);
    const csp = String(page.headers['content-security-policy']);
    for (const d of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) assert.ok(csp.includes(d), csp);
    assert.ok(!/unsafe-inline|unsafe-eval|https?:/.test(csp), `nothing inline, nothing from outside: ${csp}`);
    assert.match(String((await app.inject({ method: 'GET', url: '/app.js' })).headers['content-type']), /^text\/javascript/);
    assert.equal((await app.inject({ method: 'GET', url: '/app.css' })).statusCode, 200);
    for (const url of ['/api/v1/hosts', '/api/v1/events', '/api/v1/openapi.json', '/metrics', '/index.html', '/app.js.map']) {
      assert.equal((await app.inject({ method: 'GET', url })).statusCode, 401, `${url} needs the token`);
    }
  });
});

test('tokens: a read-only token reads everything (and /metrics) but changes nothing (403 FERRY_E_READ_ONLY); a revoked token is refused', async () => {
  await withApp(async ({ app, auth }) => {
    const created = await app.inject({ method: 'POST', url: '/api/v1/tokens', headers: auth, payload: { role: 'read-only' } });
    assert.equal(created.statusCode, 201);
    const ro = created.json() as { id: string; role: string; token: string };
    assert.equal(ro.role, 'read-only');
    const roAuth = { authorization: `Bearer ${ro.token}` };
    for (const url of ['/api/v1/vms', '/api/v1/hosts', '/api/v1/migrations', '/api/v1/tokens', '/metrics']) {
      const r = await app.inject({ method: 'GET', url, headers: roAuth });
      assert.equal(r.statusCode, 200, url);
    }
    for (const [method, url, payload] of [
      ['POST', '/api/v1/vms', { name: 'a1' }],
      ['POST', '/api/v1/tokens', { role: 'admin' }],
      ['POST', '/api/v1/join-tokens', {}],
      ['DELETE', `/api/v1/tokens/${ro.id}`, undefined],
    ] as const) {
      const r = await app.inject({ method, url, headers: roAuth, ...(payload === undefined ? {} : { payload }) });
      assert.equal(r.statusCode, 403, `${method} ${url}`);
      assert.equal(r.json().error.code, 'FERRY_E_READ_ONLY');
    }
    const list = (await app.inject({ method: 'GET', url: '/api/v1/tokens', headers: auth })).json() as { id: string; role: string }[];
    assert.deepEqual(list.map((t) => t.role).sort(), ['admin', 'read-only']);
    assert.ok(!JSON.stringify(list).includes(ro.token.split('.')[1]!), 'no secret is listed');
    assert.equal((await app.inject({ method: 'DELETE', url: `/api/v1/tokens/${ro.id}`, headers: auth })).statusCode, 200);
    const after = await app.inject({ method: 'GET', url: '/api/v1/vms', headers: roAuth });
    assert.equal(after.statusCode, 401);
    assert.equal(after.json().error.code, 'FERRY_E_UNAUTHORIZED');
    const again = await app.inject({ method: 'DELETE', url: `/api/v1/tokens/${ro.id}`, headers: auth });
    assert.equal(again.json().error.code, 'FERRY_E_TOKEN_NOT_FOUND');
  });
});
