import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { connect, createServer, type PeerCertificate, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { caFromPem, createCaCert, loadOrCreateCa, type KeyPairPem } from './ca.ts';
import { checkControllerIdentity, RESERVED_HOST_NAMES, SERVER_ROLE_OID, spkiPin } from '../common/identity.ts';

/** Real TLS handshake on loopback: server presents `server`, client trusts `caPem` and presents `client`. */
async function handshake(server: KeyPairPem, caPem: string, client: KeyPairPem, serverCaPem = caPem): Promise<string> {
  const srv = createServer({ key: server.keyPem, cert: server.certPem, ca: serverCaPem, requestCert: true, rejectUnauthorized: true }, (s: TLSSocket) => {
    s.end(String((s.getPeerCertificate().subject as { CN?: string } | undefined)?.CN ?? ''));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  try {
    const port = (srv.address() as AddressInfo).port;
    return await new Promise<string>((resolve, reject) => {
      const c = connect({ host: '127.0.0.1', port, ca: caPem, cert: client.certPem, key: client.keyPem });
      let data = '';
      c.on('data', (d: Buffer) => (data += d.toString()));
      c.on('end', () => resolve(data));
      c.on('error', reject);
    });
  } finally {
    srv.close();
  }
}

test('agent certificates verify against the CA and work for mutual TLS; another CA is refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-ca-'));
  try {
    const { ca, created } = await loadOrCreateCa(dir);
    assert.equal(created, true);
    assert.equal(statSync(join(dir, 'ca.key')).mode & 0o777, 0o600);
    const again = await loadOrCreateCa(dir);
    assert.equal(again.created, false);
    assert.equal(again.ca.fingerprint, ca.fingerprint);

    const agent = await ca.issueAgentCert('h1', ['127.0.0.1']);
    const cert = new X509Certificate(agent.certPem);
    assert.equal(cert.verify(new X509Certificate(ca.caCertPem).publicKey), true);
    assert.match(cert.subject, /CN=h1/);
    assert.match(cert.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
    assert.equal(cert.checkIP('127.0.0.1'), '127.0.0.1');

    // Controller client → agent server, both from the cluster CA.
    assert.equal(await handshake(agent, ca.caCertPem, ca.controllerClient), 'ferry-controller');

    const other = await createCaCert('other');
    const otherCa = await caFromPem(other.certPem, other.keyPem);
    const foreign = await otherCa.issueAgentCert('h1', ['127.0.0.1']);
    assert.equal(new X509Certificate(foreign.certPem).verify(new X509Certificate(ca.caCertPem).publicKey), false);
    // A server with a foreign certificate is refused by a client that pins the cluster CA...
    await assert.rejects(handshake(foreign, ca.caCertPem, ca.controllerClient, other.certPem));
    // ...and a client with a foreign certificate is refused by an agent that pins it.
    // (TLS 1.3: the client may see a closed stream instead of an error, so check that no reply came.)
    const reply = await handshake(agent, ca.caCertPem, otherCa.controllerClient).catch(() => 'refused');
    assert.notEqual(reply, 'ferry-controller');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('only the controller’s own HTTPS certificate has the server role; agent certificates carry their name; reserved names get none', async () => {
  const { certPem, keyPem } = await createCaCert('roles');
  const ca = await caFromPem(certPem, keyPem);
  const server = new X509Certificate((await ca.issueServerCert(['127.0.0.1'])).certPem);
  const agent = new X509Certificate((await ca.issueAgentCert('h1', ['127.0.0.1'])).certPem);
  const named = new X509Certificate((await ca.issue('ferry-server', ['127.0.0.1'])).certPem);
  assert.ok(server.keyUsage.includes(SERVER_ROLE_OID));
  assert.ok(!agent.keyUsage.includes(SERVER_ROLE_OID));
  assert.ok(!named.keyUsage.includes(SERVER_ROLE_OID), 'a CN is not a role');
  assert.match(agent.subjectAltName ?? '', /DNS:h1/);
  assert.equal(agent.checkHost('h1'), 'h1');
  for (const name of RESERVED_HOST_NAMES) {
    await assert.rejects(ca.issueAgentCert(name, ['127.0.0.1']), { code: 'FERRY_E_HOST_NAME_RESERVED' });
  }
  // What the CLI and the lab check on top of the CA (src/common/identity.ts).
  const peer = (c: X509Certificate): PeerCertificate => ({ subject: { CN: '' }, subjectaltname: c.subjectAltName, ext_key_usage: c.keyUsage }) as unknown as PeerCertificate;
  assert.equal(checkControllerIdentity('127.0.0.1', peer(server)), undefined);
  assert.match(String(checkControllerIdentity('127.0.0.1', peer(named))), /not the controller's HTTPS certificate/);
  assert.match(String(checkControllerIdentity('127.0.0.1', peer(agent))), /not the controller's HTTPS certificate/);
  assert.equal(ca.controllerPin, spkiPin(ca.controllerClient.certPem));
});
