/**
 * The client against real HTTPS servers on loopback: a leader, a follower that redirects writes (307) as
 * `ferry server --ha` does, and a controller that is down; where it follows a redirect and where it keeps
 * the token to itself.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { caFromPem, createCaCert, type ClusterCa, type KeyPairPem } from '../controller/ca.ts';
import { ApiClient, MAX_REDIRECTS } from './api.ts';

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  body: string;
}

interface TestServer {
  url: string;
  seen: Seen[];
  server: Server;
}

const TOKEN = 'abcdefgh.SECRETSECRETSECRET';

/** An HTTPS server with `cert` whose answers `answer` decides; every request is recorded. */
async function serve(cert: KeyPairPem, caPem: string, answer: (s: Seen) => { status: number; headers?: Record<string, string>; body?: unknown }): Promise<TestServer> {
  const seen: Seen[] = [];
  const server = createServer({ cert: `${cert.certPem.trim()}\n${caPem.trim()}\n`, key: cert.keyPem }, (req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const s = { method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, body: Buffer.concat(parts).toString('utf8') };
      seen.push(s);
      const a = answer(s);
      res.writeHead(a.status, { 'content-type': 'application/json', ...a.headers });
      res.end(a.body === undefined ? '' : JSON.stringify(a.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

/** A controller that is down: a port nobody listens on any more. */
async function downUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return `https://127.0.0.1:${port}`;
}

const redirectWrites = (to: () => string) => (s: Seen) =>
  s.method === 'GET' ? { status: 200, body: { from: 'follower' } } : { status: 307, headers: { location: new URL(s.url, to()).toString() } };

describe('the API client and several controllers', () => {
  let ca: ClusterCa;
  let operatorCa: ClusterCa;
  let leader: TestServer;
  let follower: TestServer;
  let down: string;
  const servers: TestServer[] = [];

  before(async () => {
    const c = await createCaCert('cluster CA');
    ca = await caFromPem(c.certPem, c.keyPem);
    const o = await createCaCert('operator CA');
    operatorCa = await caFromPem(o.certPem, o.keyPem);
    const cert = await ca.issueServerCert(['127.0.0.1', 'localhost']);
    leader = await serve(cert, ca.caCertPem, (s) => ({ status: s.method === 'POST' ? 201 : 200, body: { from: 'leader', got: s.body } }));
    follower = await serve(cert, ca.caCertPem, redirectWrites(() => leader.url));
    servers.push(leader, follower);
    down = await downUrl();
  });

  after(async () => {
    for (const s of servers) await new Promise<void>((resolve) => s.server.close(() => resolve()));
  });

  const client = (list: string[], caPem = ca.caCertPem): ApiClient => new ApiClient({ server: list[0]!, servers: list, token: TOKEN, caCertPem: caPem });

  it('tries the next server when one is down, and follows the follower to the leader with the same method, body and token', async () => {
    const c = client([down, follower.url]);
    try {
      const before = leader.seen.length;
      const got = await c.post<{ from: string; got: string }>('/api/v1/vms/web1/migrate', { to: 'h2' });
      assert.deepEqual(got, { from: 'leader', got: JSON.stringify({ to: 'h2' }) });
      const s = leader.seen.slice(before);
      assert.deepEqual(s.map((x) => [x.method, x.url, x.auth]), [['POST', '/api/v1/vms/web1/migrate', `Bearer ${TOKEN}`]]);
      assert.equal(c.server, follower.url, 'the follower answered: it is tried first from now on');
      assert.deepEqual(await c.get('/api/v1/vms'), { from: 'follower' }, 'reads are answered by the follower itself');
      assert.equal((await c.delete<{ from: string }>('/api/v1/vms/web1')).from, 'leader');
    } finally {
      await c.close();
    }
  });

  it('a leader on a host outside the context is followed only when it presents the cluster\'s controller certificate', async () => {
    // `localhost` is not a host of the context (127.0.0.1 is): the leader must prove it is a controller.
    const viaName = await serve(await ca.issueServerCert(['127.0.0.1', 'localhost']), ca.caCertPem, redirectWrites(() => leader.url.replace('127.0.0.1', 'localhost')));
    const operatorLeader = await serve(await operatorCa.issue('ferry.example.org', ['localhost', '127.0.0.1'], { serverOnly: true }), operatorCa.caCertPem, () => ({ status: 201, body: { from: 'impostor' } }));
    const toOperator = await serve(await ca.issueServerCert(['127.0.0.1']), ca.caCertPem, redirectWrites(() => operatorLeader.url.replace('127.0.0.1', 'localhost')));
    servers.push(viaName, operatorLeader, toOperator);
    const bundle = `${ca.caCertPem.trim()}\n${operatorCa.caCertPem.trim()}\n`;
    const c = client([viaName.url], bundle);
    const d = client([toOperator.url], bundle);
    try {
      assert.equal((await c.post<{ from: string }>('/api/v1/hosts/h1/drain', {})).from, 'leader');
      await assert.rejects(d.post('/api/v1/hosts/h1/drain', {}), { code: 'FERRY_E_TLS' });
      assert.equal(operatorLeader.seen.length, 0, 'the token never reached a host the context does not name and the cluster does not vouch for');
    } finally {
      await c.close();
      await d.close();
    }
  });

  it('an operator certificate serves the context that names it; a cluster member certificate never passes for the server', async () => {
    const own = await serve(await operatorCa.issue('ferry.example.org', ['127.0.0.1'], { serverOnly: true }), operatorCa.caCertPem, () => ({ status: 200, body: { from: 'own' } }));
    const agent = await serve(await ca.issueAgentCert('h1', ['127.0.0.1']), ca.caCertPem, () => ({ status: 200, body: { from: 'agent' } }));
    servers.push(own, agent);
    const c = client([own.url], operatorCa.caCertPem);
    const d = client([agent.url]);
    try {
      assert.deepEqual(await c.get('/api/v1/version'), { from: 'own' });
      await assert.rejects(d.get('/api/v1/version'), { code: 'FERRY_E_TLS' });
      assert.equal(agent.seen.length, 0);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it('refuses a redirect to plain http, and one too many hops, without sending the token there', async () => {
    const toHttp = await serve(await ca.issueServerCert(['127.0.0.1']), ca.caCertPem, () => ({ status: 307, headers: { location: 'http://127.0.0.1:9/api/v1/vms' } }));
    let loopUrl = '';
    const loop = await serve(await ca.issueServerCert(['127.0.0.1']), ca.caCertPem, (s) => ({ status: 307, headers: { location: new URL(s.url, loopUrl).toString() } }));
    loopUrl = loop.url;
    servers.push(toHttp, loop);
    const c = client([toHttp.url]);
    const d = client([loop.url]);
    try {
      await assert.rejects(c.post('/api/v1/vms', {}), { code: 'FERRY_E_REDIRECT' });
      await assert.rejects(d.post('/api/v1/vms', {}), { code: 'FERRY_E_REDIRECT' });
      assert.equal(loop.seen.length, MAX_REDIRECTS + 1);
    } finally {
      await c.close();
      await d.close();
    }
  });

  it('a follower with no leader (503 FERRY_E_NO_LEADER) hands over to the next server; every one down is FERRY_E_SERVER_UNREACHABLE', async () => {
    const noLeader = await serve(await ca.issueServerCert(['127.0.0.1']), ca.caCertPem, () => ({ status: 503, body: { error: { code: 'FERRY_E_NO_LEADER', message: 'no leader' } } }));
    servers.push(noLeader);
    const c = client([noLeader.url, leader.url]);
    const d = client([down, await downUrl()]);
    try {
      assert.equal((await c.post<{ from: string }>('/api/v1/vms', {})).from, 'leader');
      await assert.rejects(d.get('/api/v1/vms'), { code: 'FERRY_E_SERVER_UNREACHABLE' });
    } finally {
      await c.close();
      await d.close();
    }
  });
});
