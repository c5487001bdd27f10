import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { caFromPem, createCaCert, type ClusterCa } from '../controller/ca.ts';
import { FerryError } from '../common/errors.ts';
import type { JoinRequest, JoinResponse } from '../common/protocol.ts';
import { memoryLogger } from '../common/log.ts';
import { certHash, ensureIdentity, joinCluster, parseCaHash } from './identity.ts';

/** A stand-in for the controller's join route, at the wire: HTTPS with a cert from `ca`. */
async function joinServer(
  ca: ClusterCa,
  opts: { sendChain: boolean; token?: string; serverRole?: boolean },
): Promise<{ url: string; seen: JoinRequest[]; server: Server }> {
  // serverRole false: a cluster certificate named ferry-server, but not issued as the controller's (a join's).
  const tls =
    opts.serverRole === false ? await ca.issue('ferry-server', ['127.0.0.1']) : await ca.issueServerCert(['127.0.0.1']);
  const seen: JoinRequest[] = [];
  const server = createServer(
    {
      key: tls.keyPem,
      cert: opts.sendChain ? `${tls.certPem.trim()}\n${ca.caCertPem.trim()}\n` : tls.certPem,
    },
    (req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => parts.push(d));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as JoinRequest;
        seen.push(body);
        if (body.token !== (opts.token ?? 'tok-1')) {
          res.writeHead(401, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({ error: { code: 'FERRY_E_JOIN_TOKEN', message: 'The join token is unknown.' } }),
          );
          return;
        }
        void ca.issueAgentCert(body.name, ['127.0.0.1']).then((cert) => {
          const r: JoinResponse = {
            caCertPem: ca.caCertPem,
            certPem: cert.certPem,
            keyPem: cert.keyPem,
            serverUrl: 'https://127.0.0.1:1',
            controllerPin: ca.controllerPin,
          };
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify(r));
        });
      });
    },
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

const closeServer = (s: Server): Promise<void> =>
  new Promise((r) => {
    s.closeAllConnections();
    s.close(() => r());
  });

async function newCa(): Promise<ClusterCa> {
  const { certPem, keyPem } = await createCaCert('test CA');
  return caFromPem(certPem, keyPem);
}

test('--ca-hash accepts sha256:hex and the controller’s AB:CD:… fingerprint', async () => {
  const ca = await newCa();
  const h = certHash(ca.caCertPem);
  assert.equal(parseCaHash(h), h);
  assert.equal(parseCaHash(ca.fingerprint), h);
  assert.throws(
    () => parseCaHash('md5:abc'),
    (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_BAD_INPUT',
  );
});

test('join with the right pin saves 0600 certificates; a restart reuses them without a token', async () => {
  const ca = await newCa();
  const dir = await mkdtemp(join(tmpdir(), 'ferry-agent-id-'));
  const srv = await joinServer(ca, { sendChain: true }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  try {
    const logs = memoryLogger();
    const first = await ensureIdentity({
      dataDir: dir,
      name: 'h1',
      agentUrl: 'https://127.0.0.1:7443',
      server: srv.url,
      token: 'tok-1',
      caHash: ca.fingerprint,
      log: logs.log,
    });
    assert.equal(first.joined, true);
    assert.deepEqual(srv.seen, [{ token: 'tok-1', name: 'h1', agentUrl: 'https://127.0.0.1:7443' }]);
    assert.match(logs.text(), /matches the pinned/);
    for (const f of ['ca.pem', 'cert.pem', 'key.pem', 'controller.pin', 'agent.json']) {
      assert.equal((await stat(join(dir, f))).mode & 0o777, 0o600, f);
    }
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.equal(await readFile(join(dir, 'ca.pem'), 'utf8'), ca.caCertPem);
    assert.equal(first.identity.controllerPin, ca.controllerPin);

    const again = await ensureIdentity({ dataDir: dir, name: 'h1', agentUrl: 'https://127.0.0.1:7443' });
    assert.equal(again.joined, false);
    assert.equal(again.identity.certPem, first.identity.certPem);
    assert.equal(again.identity.controllerPin, ca.controllerPin);
    assert.equal(srv.seen.length, 1);
    await assert.rejects(
      ensureIdentity({ dataDir: dir, name: 'h2', agentUrl: 'https://127.0.0.1:7443' }),
      /belongs to agent h1/,
    );
  } finally {
    await closeServer(srv.server);
    await rm(dir, { recursive: true, force: true });
  }
});

test('a wrong pin refuses the server before the token is sent', async () => {
  const ca = await newCa();
  const other = await newCa();
  const srv = await joinServer(ca, { sendChain: true });
  try {
    await assert.rejects(
      joinCluster({
        server: srv.url,
        token: 'tok-1',
        name: 'h1',
        agentUrl: 'https://127.0.0.1:7443',
        caHash: other.fingerprint,
      }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_TLS' && /pinned CA/.test(e.message),
    );
    assert.equal(srv.seen.length, 0, 'the token must not reach a server that failed the pin');
  } finally {
    await closeServer(srv.server);
  }
});

test('a server that sends only its leaf cannot be pinned (the token stays home); without a pin: trust on first use', async () => {
  const ca = await newCa();
  const srv = await joinServer(ca, { sendChain: false });
  try {
    await assert.rejects(
      joinCluster({
        server: srv.url,
        token: 'tok-1',
        name: 'h1',
        agentUrl: 'https://127.0.0.1:7443',
        caHash: ca.fingerprint,
      }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_TLS',
    );
    assert.equal(srv.seen.length, 0);
    const logs = memoryLogger();
    const r = await joinCluster({
      server: srv.url,
      token: 'tok-1',
      name: 'h1',
      agentUrl: 'https://127.0.0.1:7443',
      log: logs.log,
    });
    assert.equal(r.identity.caPem, ca.caCertPem);
    assert.match(logs.text(), /trusting the cluster CA on first use: sha256:[0-9a-f]{64}/);
  } finally {
    await closeServer(srv.server);
  }
});

test('a refused token comes back as FERRY_E_JOIN_TOKEN; no server as FERRY_E_SERVER_UNREACHABLE; nothing is saved', async () => {
  const ca = await newCa();
  const srv = await joinServer(ca, { sendChain: true });
  const dir = await mkdtemp(join(tmpdir(), 'ferry-agent-id-'));
  try {
    await assert.rejects(
      ensureIdentity({
        dataDir: dir,
        name: 'h1',
        agentUrl: 'https://127.0.0.1:7443',
        server: srv.url,
        token: 'wrong',
      }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_JOIN_TOKEN',
    );
    await assert.rejects(stat(join(dir, 'cert.pem')), /ENOENT/);
    await assert.rejects(
      ensureIdentity({ dataDir: dir, name: 'h1', agentUrl: 'https://127.0.0.1:7443' }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_USAGE' && /--join-token/.test(e.message),
    );
  } finally {
    await closeServer(srv.server);
    await rm(dir, { recursive: true, force: true });
  }
  await assert.rejects(
    joinCluster({ server: srv.url, token: 't', name: 'h1', agentUrl: 'https://127.0.0.1:7443' }),
    (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_SERVER_UNREACHABLE',
  );
});

test('a cluster certificate without the server role (what a join hands out) never gets the token', async () => {
  const ca = await newCa();
  const srv = await joinServer(ca, { sendChain: true, serverRole: false });
  try {
    for (const caHash of [ca.fingerprint, undefined]) {
      await assert.rejects(
        joinCluster({
          server: srv.url,
          token: 'tok-1',
          name: 'h1',
          agentUrl: 'https://127.0.0.1:7443',
          ...(caHash === undefined ? {} : { caHash }),
        }),
        (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_TLS' && /server role/.test(e.message),
      );
    }
    assert.equal(srv.seen.length, 0, 'the token must not reach a server without the server role');
  } finally {
    await closeServer(srv.server);
  }
});

test('certificates without controller.pin (an older join) are refused with a fix, not served by CN', async () => {
  const ca = await newCa();
  const dir = await mkdtemp(join(tmpdir(), 'ferry-agent-id-'));
  try {
    const mine = await ca.issueAgentCert('h1', ['127.0.0.1']);
    await writeFile(join(dir, 'ca.pem'), ca.caCertPem, { mode: 0o600 });
    await writeFile(join(dir, 'key.pem'), mine.keyPem, { mode: 0o600 });
    await writeFile(join(dir, 'cert.pem'), mine.certPem, { mode: 0o600 });
    await assert.rejects(
      ensureIdentity({ dataDir: dir, name: 'h1', agentUrl: 'https://127.0.0.1:7443' }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_CONFIG' && /controller\.pin/.test(e.message),
    );
    await writeFile(join(dir, 'controller.pin'), `${ca.controllerPin}\n`, { mode: 0o600 });
    const ok = await ensureIdentity({ dataDir: dir, name: 'h1', agentUrl: 'https://127.0.0.1:7443' });
    assert.equal(ok.identity.controllerPin, ca.controllerPin);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
