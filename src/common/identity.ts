/**
 * Who is who in a cluster: the names the cluster CA issues to the controller itself (and that no host may
 * therefore join as), the host-name rule for joins, the marker that only the controller's own HTTPS
 * certificate carries, the public-key pin agents keep of the controller's client certificate, and what an
 * agent signs to renew its certificate.
 * ARCHITECTURE.md (Security) says why each check exists.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { FerryError } from './errors.ts';
import { validateName } from './units.ts';

/** Subjects (CN) of the certificates the controller issues to itself. */
export const CLUSTER_CN = {
  /** The controller's client certificate, presented to agents (pki/controller.crt). */
  controller: 'ferry-controller',
  /** The controller's HTTPS certificate, issued afresh at every `ferry server` start. */
  server: 'ferry-server',
} as const;

/**
 * Host names a join must never get: every CN the CA issues on its own behalf. One constant, so that a new
 * identity of the controller cannot be added to ca.ts and forgotten here.
 */
export const RESERVED_HOST_NAMES: readonly string[] = Object.values(CLUSTER_CN);

/**
 * An extended key usage that only the controller's own HTTPS certificate carries (ca.ts issueServerCert);
 * join never sets it. Clients (CLI, agents at join) require it on top of the cluster CA, so a certificate a
 * join handed out can never pass for the server, whatever its CN. A UUID OID (ITU-T X.667, arc 2.25) needs
 * no registration and cannot collide.
 */
export const SERVER_ROLE_OID = '2.25.314277313377359789556018613780565874790';

/** A host name a join may take: a valid name (FERRY_E_BAD_NAME) that is none of the cluster's own. */
export function validateHostName(name: unknown): string {
  const n = validateName(name, 'host name');
  if (RESERVED_HOST_NAMES.includes(n)) {
    throw new FerryError(
      'FERRY_E_HOST_NAME_RESERVED',
      `The host name ${JSON.stringify(n)} is reserved for the controller's own certificates (${RESERVED_HOST_NAMES.join(', ')}): choose another.`,
    );
  }
  return n;
}

/** `sha256:HEX` of a certificate's public key (SPKI DER): a pin that survives re-issuing with the same key. */
export function spkiPin(pemOrCert: string | X509Certificate): string {
  const cert = typeof pemOrCert === 'string' ? new X509Certificate(pemOrCert) : pemOrCert;
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(spki).digest('hex')}`;
}

/** True when a certificate (node's X509Certificate, or the OID list of a peer certificate) has the server role. */
export function hasServerRole(ekus: readonly string[] | undefined): boolean {
  return ekus !== undefined && ekus.includes(SERVER_ROLE_OID);
}

/**
 * For `checkServerIdentity` of a client talking to the controller: the usual name check first, then the
 * server role. Returns an Error (as node wants it) or undefined.
 */
export function serverRoleError(ekus: readonly string[] | undefined, host: string): Error | undefined {
  if (hasServerRole(ekus)) return undefined;
  const err = new Error(
    `The certificate of ${host} is from the cluster CA but is not the controller's HTTPS certificate (no Ferry server role): refusing to send it anything.`,
  ) as Error & { code: string };
  err.code = 'ERR_FERRY_NOT_SERVER';
  return err;
}

/**
 * `checkServerIdentity` for every client of the controller (CLI, lab): the usual name check, then the
 * server role. Chaining to the cluster CA is not enough, since every joined agent holds a CA-signed
 * certificate too; the role is set only by the controller's own issuance (ca.ts issueServerCert), never by
 * a join. A role rather than a key pin, because `ferry server` issues itself a fresh key at every start, and
 * a pinned key would break every CLI config at each restart.
 */
export function checkControllerIdentity(host: string, cert: PeerCertificate): Error | undefined {
  return checkServerIdentity(host, cert) ?? serverRoleError(cert.ext_key_usage, host);
}

/**
 * The SNI name under which a controller serving an operator's own certificate (`ferry server --tls-cert`)
 * presents its cluster-CA certificate instead: an agent's join asks for it, so agents keep the cluster CA.
 */
export const CLUSTER_SNI = CLUSTER_CN.server;

/** id-kp-clientAuth: every certificate the cluster CA issues carries it (agents present theirs to agents). */
export const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';
/** id-kp-serverAuth. */
export const SERVER_AUTH_OID = '1.3.6.1.5.5.7.3.1';

/**
 * Whether a certificate could be a cluster member's rather than an operator's own server certificate:
 * every certificate the cluster CA issues carries clientAuth, and one without extended key usages may be
 * used for anything. Such a certificate passes for the controller only with the server role.
 */
export function mayBeClusterMember(ekus: readonly string[] | undefined): boolean {
  return ekus === undefined || ekus.length === 0 || ekus.includes(CLIENT_AUTH_OID);
}

/**
 * `checkServerIdentity` for the CLI's configured controllers, which may serve an operator's own
 * certificate (`ferry server --tls-cert`, serverAuth only, checked at start): the name check, then the
 * server role for any certificate that could be a cluster member's. A joined agent's certificate carries
 * clientAuth, so it never passes; an operator's serverAuth-only certificate passes on its name, against
 * the CA the context trusts.
 */
export function checkApiServerIdentity(host: string, cert: PeerCertificate): Error | undefined {
  return checkServerIdentity(host, cert) ?? (mayBeClusterMember(cert.ext_key_usage) ? serverRoleError(cert.ext_key_usage, host) : undefined);
}

/**
 * What a renewing agent signs, with its current key and with its new one (RenewRequest): the request's
 * fields bound together, so that no signature can be moved to another name, certificate, key or time.
 */
export function renewalPayload(r: { name: string; certPem: string; publicKeyPem: string; signedAt: string }): Buffer {
  const certHash = createHash('sha256').update(new X509Certificate(r.certPem).raw).digest('hex');
  const keyHash = createHash('sha256').update(r.publicKeyPem.trim()).digest('hex');
  return Buffer.from(`ferry-renew-v1\n${r.name}\n${certHash}\n${keyHash}\n${r.signedAt}\n`, 'utf8');
}
