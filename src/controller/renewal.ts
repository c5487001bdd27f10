/**
 * Agent certificate renewal, the controller's side (POST /api/v1/renew): a joined agent proves who it is
 * with its current certificate and a signature by that certificate's key, and gets a certificate for the
 * same host name and address over a new public key it made (its private key never leaves the host).
 *
 * Why a signature and not the TLS handshake: the controller's API does not ask clients for certificates
 * (the CLI and browsers hold none, and asking would change every client's handshake), and today agents
 * are authenticated to the controller only at join, by the token. Signing a payload that binds the name,
 * the current certificate, the new key and the time (renewalPayload, src/common/identity.ts) proves
 * possession of the current key as well as an mTLS handshake would, without touching the API's TLS.
 *
 * Refused (FERRY_E_CERT_REFUSED, `details.reason` says which): a certificate not from the cluster CA; one
 * whose name (CN and DNS SAN) is not the host asking; a host the controller does not know, or that was
 * removed; a host whose address is not the certificate's; a bad signature by either key; a signature more
 * than a few minutes old or ahead. An expired certificate cannot renew (FERRY_E_CERT_EXPIRED) unless the
 * request carries a one-time join token, which the operator gives the agent to re-join under its name.
 */
import { createPublicKey, verify, X509Certificate } from 'node:crypto';
import type { RenewRequest, RenewResponse } from '../common/protocol.ts';
import { FerryError } from '../common/errors.ts';
import { renewalPayload } from '../common/identity.ts';
import type { Log } from '../common/log.ts';
import type { Store } from './store/db.ts';
import type { ClusterCa } from './ca.ts';
import type { EventBus } from './events.ts';
import { consumeJoinToken } from './tokens.ts';

/** How far `signedAt` may be from the controller's clock: a replayed request is useless after this. */
export const RENEW_SKEW_MS = 5 * 60_000;

export interface RenewalDeps {
  store: Store;
  ca: ClusterCa;
  events: EventBus;
  log: Log;
  /** Lifetime of the certificates issued (`ferry server --agent-cert-days`); the CA's default otherwise. */
  lifetimeMs?: number;
  now?: () => number;
}

export type RenewRefusal =
  | 'bad-certificate'
  | 'not-cluster-ca'
  | 'name-mismatch'
  | 'unknown-host'
  | 'address-mismatch'
  | 'bad-signature'
  | 'stale-signature'
  | 'not-yet-valid';

const refuse = (reason: RenewRefusal, message: string): FerryError => new FerryError('FERRY_E_CERT_REFUSED', message, { details: { reason } });

/** The DNS names and IP addresses of a certificate's subjectAltName. */
function sans(cert: X509Certificate): { dns: string[]; ips: string[] } {
  const parts = (cert.subjectAltName ?? '').split(', ');
  const pick = (prefix: string): string[] => parts.filter((p) => p.startsWith(prefix)).map((p) => p.slice(prefix.length));
  return { dns: pick('DNS:'), ips: pick('IP Address:') };
}

function verifies(payload: Buffer, key: Parameters<typeof verify>[2], signature: string): boolean {
  try {
    return verify('sha256', payload, key, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}

/** The host's address as the registry stores it (`https://IP:PORT`, IPv6 in brackets). */
const urlIp = (url: string): string => new URL(url).hostname.replace(/^\[|\]$/g, '');

export async function renewAgentCert(d: RenewalDeps, req: RenewRequest): Promise<RenewResponse> {
  const now = (d.now ?? Date.now)();
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(req.certPem);
  } catch (err) {
    throw new FerryError('FERRY_E_CERT_REFUSED', 'certPem is not a PEM certificate.', { cause: err, details: { reason: 'bad-certificate' } });
  }
  const ca = new X509Certificate(d.ca.caCertPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw refuse('not-cluster-ca', 'The certificate is not from this cluster\'s CA.');
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
  const names = sans(cert);
  if (cn !== req.name || !names.dns.includes(req.name)) {
    throw refuse('name-mismatch', `The certificate is ${JSON.stringify(cn ?? '')}'s, not ${JSON.stringify(req.name)}'s.`);
  }
  const row = d.store.sql.prepare('SELECT url FROM hosts WHERE name = ?').get(req.name) as { url: string } | undefined;
  if (row === undefined) throw refuse('unknown-host', `No host ${JSON.stringify(req.name)} (never joined, or removed): join it again with a new token.`);
  const ip = urlIp(row.url);
  if (!names.ips.includes(ip)) {
    throw refuse('address-mismatch', `The certificate is for ${names.ips.join(', ') || 'no address'}, but host ${req.name} is at ${ip}.`);
  }
  let payload: Buffer;
  let newKey: ReturnType<typeof createPublicKey>;
  try {
    payload = renewalPayload(req);
    newKey = createPublicKey(req.publicKeyPem);
  } catch (err) {
    throw new FerryError('FERRY_E_CERT_REFUSED', 'publicKeyPem is not a public key in PEM.', { cause: err, details: { reason: 'bad-signature' } });
  }
  if (!verifies(payload, cert.publicKey, req.signature)) throw refuse('bad-signature', "The request is not signed by the certificate's key.");
  if (!verifies(payload, newKey, req.proof)) throw refuse('bad-signature', 'The request is not signed by the new key.');
  const signedAt = Date.parse(req.signedAt);
  if (!Number.isFinite(signedAt) || Math.abs(now - signedAt) > RENEW_SKEW_MS) {
    throw refuse('stale-signature', `The request was signed at ${req.signedAt}, more than ${RENEW_SKEW_MS / 60_000} minutes from the controller's clock: check the host's clock.`);
  }
  if (now < Date.parse(cert.validFrom)) throw refuse('not-yet-valid', `The certificate is valid only from ${cert.validFrom}: check the host's clock.`);
  const expired = now >= Date.parse(cert.validTo);
  if (expired && req.joinToken === undefined) {
    throw new FerryError(
      'FERRY_E_CERT_EXPIRED',
      `The certificate of ${req.name} expired at ${new Date(cert.validTo).toISOString()}: re-join with a new join token (ferry agent --join-token T).`,
      { details: { notAfter: new Date(cert.validTo).toISOString() } },
    );
  }
  // The token is checked before anything is issued and used up only after: a failure burns nothing.
  if (expired) consumeJoinToken(d.store, req.joinToken!, req.name, { dryRun: true });
  const issued = await d.ca.issueAgentCert(req.name, [ip], {
    publicKeyPem: req.publicKeyPem,
    ...(d.lifetimeMs === undefined ? {} : { lifetimeMs: d.lifetimeMs }),
  });
  if (expired) consumeJoinToken(d.store, req.joinToken!, req.name);
  const notAfter = new Date(new X509Certificate(issued.certPem).validTo).toISOString();
  d.events.publish('host.certificate-renewed', req.name, { notAfter, rejoined: expired });
  d.log.info({ host: req.name, notAfter, rejoined: expired }, `host ${req.name}: certificate ${expired ? 're-issued after expiry (join token)' : 'renewed'}, valid until ${notAfter}`);
  return { certPem: issued.certPem, caCertPem: d.ca.caCertPem };
}
