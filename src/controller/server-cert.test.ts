/**
 * `ferry server --tls-cert/--tls-key`: what is refused at start (each with its code, nothing created), and a
 * real server that presents the operator's certificate to the CLI while an agent still joins against the
 * cluster CA.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { joinCluster } from '../agent/identity.ts';
import { ApiClient } from '../client/api.ts';
import { CLUSTER_SNI, hasServerRole } from '../common/identity.ts';
import { caFromPem, createCaCert, type ClusterCa, type KeyPairPem } from './ca.ts';
import { loadOwnServerCert } from './server-cert.ts';
import { startServer } from './server.ts';
import { createJoinToken } from './tokens.ts';

describe('an operator certificate for the public API', () => {
  let dir: string;
  let operator: ClusterCa;
  let good: KeyPairPem;
  const files = (name: string, pair: { certPem: string; keyPem: string }): { certFile: string; keyFile: string } => {
    const certFile = join(dir, `${name}.crt`);
    const keyFile = join(dir, `${name}.key`);
    writeFileSync(certFile, pair.certPem);
    writeFileSync(keyFile, pair.keyPem);
    return { certFile, keyFile };
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-own-cert-'));
    const o = await createCaCert('operator CA');
    operator = await caFromPem(o.certPem, o.keyPem);
    good = await operator.issue('ferry.example.org', ['127.0.0.1', 'ferry.example.org'], { serverOnly: true });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is checked at start: readable PEM, its own key, valid now, server-only', async () => {
    const ok = loadOwnServerCert(files('good', { certPem: `${good.certPem.trim()}\n${operator.caCertPem.trim()}\n`, keyPem: good.keyPem }));
    assert.match(ok.subject, /ferry\.example\.org/);
    const other = await operator.issue('other', ['127.0.0.1'], { serverOnly: true });
    const expired = await operator.issue('old', ['127.0.0.1'], { serverOnly: true, notBefore: new Date(Date.now() - 10 * 86_400_000), days: 1 });
    const member = await operator.issue('both', ['127.0.0.1']);
    const code = (f: { certFile: string; keyFile: string }): string | undefined => {
      try {
        loadOwnServerCert(f);
        return undefined;
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    assert.equal(code({ certFile: join(dir, 'missing.crt'), keyFile: join(dir, 'good.key') }), 'FERRY_E_TLS_FILE');
    assert.equal(code(files('garbage', { certPem: 'not a certificate', keyPem: good.keyPem })), 'FERRY_E_TLS_FILE');
    assert.equal(code(files('nokey', { certPem: good.certPem, keyPem: 'not a key' })), 'FERRY_E_TLS_FILE');
    assert.equal(code(files('mismatch', { certPem: good.certPem, keyPem: other.keyPem })), 'FERRY_E_TLS_KEY_MISMATCH');
    assert.equal(code(files('expired', expired)), 'FERRY_E_TLS_CERT_EXPIRED');
    assert.equal(code(files('member', member)), 'FERRY_E_TLS_CERT_USAGE', 'a certificate with clientAuth could be mistaken for a member');
  });

  it('a bad certificate stops the start before the data dir exists', async () => {
    const data = join(dir, 'never');
    const f = files('mismatch2', { certPem: good.certPem, keyPem: (await operator.issue('x', [], { serverOnly: true })).keyPem });
    await assert.rejects(startServer({ dataDir: data, listen: '127.0.0.1:0', ownCert: f }), { code: 'FERRY_E_TLS_KEY_MISMATCH' });
    assert.equal(existsSync(data), false);
  });

  it("serves the CLI with the operator's certificate while an agent joins against the cluster CA", async () => {
    const srv = await startServer({ dataDir: join(dir, 'server'), listen: '127.0.0.1:0', ownCert: files('served', good) });
    const client = new ApiClient({ server: srv.url, servers: [srv.url], token: srv.adminToken!, caCertPem: operator.caCertPem });
    try {
      assert.equal((await client.get<{ ok: boolean }>('/api/v1/health')).ok, true, "the CLI trusts the operator's CA, nothing else");
      const clusterOnly = new ApiClient({ server: srv.url, servers: [srv.url], token: srv.adminToken!, caCertPem: srv.caCertPem });
      await assert.rejects(clusterOnly.get('/api/v1/health'), { code: 'FERRY_E_TLS' }, 'the public API no longer shows the cluster certificate');
      await clusterOnly.close();
      // What an agent's join sees: the cluster's own server certificate, under its SNI name.
      const presented = await new Promise<X509Certificate>((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: Number(new URL(srv.url).port), servername: CLUSTER_SNI, ca: srv.caCertPem, checkServerIdentity: () => undefined }, () => {
          const c = s.getPeerX509Certificate();
          s.end();
          if (c === undefined) reject(new Error('no certificate'));
          else resolve(c);
        });
        s.on('error', reject);
      });
      assert.ok(hasServerRole(presented.keyUsage) && presented.checkIssued(new X509Certificate(srv.caCertPem)));
      const { token } = createJoinToken(srv.controller.store);
      const joined = await joinCluster({ server: srv.url, token, name: 'h1', agentUrl: 'https://127.0.0.1:7443', caHash: srv.caHash });
      assert.equal(new X509Certificate(joined.identity.caPem).fingerprint256, srv.caFingerprint, 'the agent pinned the cluster CA');
    } finally {
      await client.close();
      await srv.close();
    }
  });
});
