/**
 * POST /api/v1/renew on a real server over TLS on loopback, with real keys: what it refuses (each with its
 * code and reason), an expired certificate (refused, then re-joined with a one-time token), a good renewal.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { joinCluster, type AgentIdentity } from '../agent/identity.ts';
import { requestRenewal } from '../agent/renewal.ts';
import { renewalPayload } from '../common/identity.ts';
import type { RenewRequest } from '../common/protocol.ts';
import { caFromPem, createCaCert } from './ca.ts';
import { startServer, type RunningServer } from './server.ts';
import { createJoinToken } from './tokens.ts';

describe('renewing an agent certificate', () => {
  let dir: string;
  let srv: RunningServer;
  const hosts: Record<string, AgentIdentity> = {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-renew-ctl-'));
    srv = await startServer({ dataDir: join(dir, 'server'), listen: '127.0.0.1:0' });
    for (const name of ['h1', 'h2']) {
      const { token } = createJoinToken(srv.controller.store);
      hosts[name] = (await joinCluster({ server: srv.url, token, name, agentUrl: 'https://127.0.0.1:7443', caHash: srv.caHash })).identity;
    }
  });
  after(async () => {
    await srv?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const renew = (name: string, identity: AgentIdentity, joinToken?: string): Promise<{ certPem: string }> =>
    requestRenewal({ serverUrl: srv.url, name, identity, ...(joinToken === undefined ? {} : { joinToken }) });
  const refused = (reason: string): { code: string; details: { reason: string } } => ({ code: 'FERRY_E_CERT_REFUSED', details: { reason } });

  /** A hand-made request (for what requestRenewal never sends), over the same route. */
  async function post(body: RenewRequest): Promise<{ status: number; code: string | undefined; reason: string | undefined }> {
    const r = await srv.app.inject({ method: 'POST', url: '/api/v1/renew', payload: body });
    const e = (r.json() as { error?: { code: string; details?: { reason?: string } } }).error;
    return { status: r.statusCode, code: e?.code, reason: e?.details?.reason };
  }
  function signed(identity: AgentIdentity, over: Partial<RenewRequest> = {}, signer = identity.keyPem): RenewRequest {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const fields = { name: 'h1', certPem: identity.certPem, publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(), signedAt: new Date().toISOString(), ...over };
    const payload = renewalPayload(fields);
    return { ...fields, signature: sign('sha256', payload, signer).toString('base64'), proof: sign('sha256', payload, pair.privateKey).toString('base64') };
  }

  it('signs a new key for the same name and address, and takes no token for it', async () => {
    const old = new X509Certificate(hosts.h1!.certPem);
    const r = await renew('h1', hosts.h1!);
    const c = new X509Certificate(r.certPem);
    assert.match(c.subject, /CN=h1/);
    assert.equal(c.subjectAltName, old.subjectAltName);
    assert.ok(c.checkIssued(new X509Certificate(srv.caCertPem)));
    assert.notEqual(c.publicKey.export({ type: 'spki', format: 'pem' }), old.publicKey.export({ type: 'spki', format: 'pem' }));
  });

  it("refuses another host's certificate, one not from the cluster CA, and a host it does not know", async () => {
    await assert.rejects(renew('h2', hosts.h1!), refused('name-mismatch'));
    const c = await createCaCert('stranger CA');
    const stranger = await caFromPem(c.certPem, c.keyPem);
    const fake = await stranger.issueAgentCert('h1', ['127.0.0.1']);
    await assert.rejects(renew('h1', { ...hosts.h1!, ...fake }), refused('not-cluster-ca'));
    // A certificate of this CA for a name with no host (never joined, or removed since).
    const ghost = await srv.controller.ca.issueAgentCert('h9', ['127.0.0.1']);
    await assert.rejects(renew('h9', { ...hosts.h1!, ...ghost }), refused('unknown-host'));
    const elsewhere = await srv.controller.ca.issueAgentCert('h2', ['10.9.9.9']);
    await assert.rejects(renew('h2', { ...hosts.h2!, ...elsewhere }), refused('address-mismatch'));
  });

  it('refuses a request not signed by the certificate, and one signed too long ago', async () => {
    const h1 = hosts.h1!;
    assert.deepEqual(await post(signed(h1, {}, hosts.h2!.keyPem)), { status: 403, code: 'FERRY_E_CERT_REFUSED', reason: 'bad-signature' });
    const replay = signed(h1, { signedAt: new Date(Date.now() - 3_600_000).toISOString() });
    assert.deepEqual(await post(replay), { status: 403, code: 'FERRY_E_CERT_REFUSED', reason: 'stale-signature' });
    const moved = { ...signed(h1), name: 'h2' };
    assert.equal((await post(moved)).code, 'FERRY_E_CERT_REFUSED', 'a signature does not move to another name');
  });

  it('an expired certificate cannot renew; with a join token it re-joins under its name, once', async () => {
    const ca = srv.controller.ca;
    const expired = await ca.issue('h1', ['h1', '127.0.0.1'], { notBefore: new Date(Date.now() - 3 * 86_400_000), days: 1 });
    const h1 = { ...hosts.h1!, ...expired };
    await assert.rejects(renew('h1', h1), (err: { code?: string; message?: string }) => err.code === 'FERRY_E_CERT_EXPIRED' && /re-join/.test(err.message ?? ''));
    const { token } = createJoinToken(srv.controller.store);
    const r = await renew('h1', h1, token);
    assert.ok(Date.parse(new X509Certificate(r.certPem).validTo) > Date.now() + 86_400_000);
    await assert.rejects(renew('h1', h1, token), { code: 'FERRY_E_JOIN_TOKEN' }, 'the token is used up');
    const events = srv.controller.store.sql.prepare("SELECT data FROM events WHERE type = 'host.certificate-renewed' AND subject = 'h1'").all() as { data: string }[];
    assert.deepEqual(events.map((e) => (JSON.parse(e.data) as { rejoined: boolean }).rejoined), [false, true]);
  });
});
