/**
 * The agent's renewal: when it renews, how it backs off, what an expired certificate does; the journal a
 * crash may leave; and one renewal against a real controller over TLS on loopback, after which the
 * agent's own server presents the new certificate without a restart.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { caFromPem, createCaCert } from '../controller/ca.ts';
import { startServer, type RunningServer } from '../controller/server.ts';
import { createJoinToken } from '../controller/tokens.ts';
import { completeRenewal, IDENTITY_FILES, joinCluster, loadIdentity, loadJoinRecord, saveIdentity, type AgentIdentity } from './identity.ts';
import { CertificateRenewer, certificateView, renewalStep, retryDelayMs } from './renewal.ts';
import { startAgent, type RunningAgent } from './server.ts';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const iso = (ms: number): string => new Date(ms).toISOString();

describe('when to renew', () => {
  const cert = { notBefore: iso(T0), notAfter: iso(T0 + 90_000), renewAfter: iso(T0 + 60_000) };

  it('waits until renewAfter, renews between renewAfter and notAfter, and gives up once expired', () => {
    assert.deepEqual(renewalStep(cert, T0 + 10_000), { kind: 'wait', ms: 50_000 });
    assert.deepEqual(renewalStep(cert, T0 + 60_000), { kind: 'renew' });
    assert.deepEqual(renewalStep(cert, T0 + 89_999), { kind: 'renew' });
    assert.deepEqual(renewalStep(cert, T0 + 90_000), { kind: 'expired' });
  });

  it('renewAfter is two thirds of the lifetime, and a short lifetime is not eaten by the backdating', async () => {
    const c = await createCaCert();
    const ca = await caFromPem(c.certPem, c.keyPem);
    const v = certificateView((await ca.issueAgentCert('h1', ['127.0.0.1'], { lifetimeMs: 90_000 })).certPem);
    const [from, to, at] = [v.notBefore, v.notAfter, v.renewAfter].map(Date.parse) as [number, number, number];
    assert.ok(Math.abs(at - (from + ((to - from) * 2) / 3)) < 1000);
    assert.ok(at > Date.now() + 40_000, `renewal due in about a minute, not at once (${v.renewAfter})`);
    assert.equal(v.renewedAt, null);
  });

  it('backs off by doubling up to the cap, and never waits past a quarter of the time left', () => {
    const far = { notAfter: iso(T0 + 365 * 86_400_000) };
    const o = { baseMs: 1000, maxMs: 60_000 };
    assert.deepEqual([1, 2, 3, 4, 7, 8, 40].map((n) => retryDelayMs(n, far, T0, o)), [1000, 2000, 4000, 8000, 60_000, 60_000, 60_000]);
    const near = { notAfter: iso(T0 + 20_000) };
    assert.equal(retryDelayMs(5, near, T0, o), 5000, 'a quarter of the 20 s left, not 16 s');
    assert.ok(retryDelayMs(5, { notAfter: iso(T0 + 100) }, T0, o) >= 250, 'still a pause, not a busy loop');
  });
});

describe('the renewal journal', () => {
  it('a crash between the two renames is finished at the next load: the new key with the new certificate', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-renew-journal-'));
    try {
      writeFileSync(join(dir, IDENTITY_FILES.key), 'NEW KEY'); // renew.key.pem was renamed already
      writeFileSync(join(dir, IDENTITY_FILES.cert), 'OLD CERT');
      writeFileSync(join(dir, IDENTITY_FILES.renewCert), 'NEW CERT');
      await completeRenewal(dir);
      assert.equal(readFileSync(join(dir, IDENTITY_FILES.cert), 'utf8'), 'NEW CERT');
      assert.equal(existsSync(join(dir, IDENTITY_FILES.renewCert)), false);
      // A journal without its certificate was cut while being written: the pair in use stays.
      writeFileSync(join(dir, IDENTITY_FILES.renewKey), 'HALF');
      await completeRenewal(dir);
      assert.equal(readFileSync(join(dir, IDENTITY_FILES.key), 'utf8'), 'NEW KEY');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a renewal against a real controller', () => {
  let dir: string;
  let srv: RunningServer;
  let agent: RunningAgent | undefined;
  let identity: AgentIdentity;
  const agentDir = (): string => join(dir, 'agent');

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-renew-'));
    srv = await startServer({ dataDir: join(dir, 'server'), listen: '127.0.0.1:0', agentCertMs: 60_000 });
    const { token } = createJoinToken(srv.controller.store);
    const joined = await joinCluster({ server: srv.url, token, name: 'h1', agentUrl: 'https://127.0.0.1:7443', caHash: srv.caHash });
    identity = joined.identity;
    await saveIdentity(agentDir(), identity, { name: 'h1', serverUrl: joined.serverUrl, agentUrl: 'https://127.0.0.1:7443', joinedAt: new Date().toISOString() });
  });
  after(async () => {
    await agent?.close();
    await srv?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The certificate the agent's server presents to a new connection from the controller. */
  const presented = (port: number): Promise<X509Certificate> =>
    new Promise((resolve, reject) => {
      const ctl = srv.controller.ca.controllerClient;
      const s = connect({ host: '127.0.0.1', port, ca: srv.caCertPem, cert: ctl.certPem, key: ctl.keyPem, checkServerIdentity: () => undefined }, () => {
        const c = s.getPeerX509Certificate();
        s.end();
        if (c === undefined) reject(new Error('no certificate'));
        else resolve(c);
      });
      s.on('error', reject);
    });

  it('gets a certificate for a new key, writes it 0600, and the agent serves it without a restart', async () => {
    const old = new X509Certificate(identity.certPem);
    assert.ok(Date.parse(old.validTo) - Date.parse(old.validFrom) <= 70_000, '--agent-cert-days applies at join: a minute here');
    agent = await startAgent({ name: 'h1', dataDir: agentDir(), migrationAddress: '127.0.0.1', listen: { host: '127.0.0.1', port: 0 }, tls: identity, accel: 'tcg' });
    const running = agent;
    const record = await loadJoinRecord(agentDir());
    const renewer = new CertificateRenewer({ dataDir: agentDir(), name: 'h1', serverUrl: record!.serverUrl, identity, apply: () => running.reloadCertificate() });
    assert.equal((await presented(running.port)).fingerprint256, old.fingerprint256);

    // Validity is kept to the second: renew a second later, so the new certificate must end later.
    await new Promise((r) => setTimeout(r, 1_100));
    await renewer.renewNow();

    const now = new X509Certificate(identity.certPem);
    assert.notEqual(now.fingerprint256, old.fingerprint256);
    assert.notEqual(now.publicKey.export({ type: 'spki', format: 'pem' }), old.publicKey.export({ type: 'spki', format: 'pem' }), 'a new key pair');
    assert.match(now.subject, /CN=h1/);
    assert.equal(now.subjectAltName, old.subjectAltName, 'the same name and address');
    assert.ok(Date.parse(now.validTo) > Date.parse(old.validTo), 'it ends later than the old one');
    assert.equal((await presented(running.port)).fingerprint256, now.fingerprint256, 'new connections see the new certificate');
    const onDisk = await loadIdentity(agentDir());
    assert.equal(onDisk?.certPem, identity.certPem);
    assert.equal(onDisk?.keyPem, identity.keyPem);
    assert.equal(statSync(join(agentDir(), IDENTITY_FILES.key)).mode & 0o777, 0o600);
    assert.equal(existsSync(join(agentDir(), IDENTITY_FILES.renewCert)), false, 'the journal is gone');
    const view = renewer.view();
    assert.ok(view.renewedAt !== null);
    assert.equal((await loadJoinRecord(agentDir()))?.renewedAt, view.renewedAt, 'kept across restarts');
    const events = srv.controller.store.sql.prepare("SELECT type FROM events WHERE type = 'host.certificate-renewed'").all();
    assert.equal(events.length, 1);
  });

  it('keeps the pair in use when the controller is unreachable, and says so', async () => {
    const before = { ...identity };
    const renewer = new CertificateRenewer({ dataDir: agentDir(), name: 'h1', serverUrl: 'https://127.0.0.1:1', identity, apply: () => assert.fail('nothing to apply') });
    await assert.rejects(renewer.renewNow(), { code: 'FERRY_E_SERVER_UNREACHABLE' });
    assert.deepEqual(identity, before);
    assert.equal((await loadIdentity(agentDir()))?.certPem, before.certPem);
  });
});
