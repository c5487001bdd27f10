/**
 * TLS for the migration stream and the NBD disk exports: QEMU's x509 credentials built from the agent's own
 * cluster identity. The agent's certificate carries both serverAuth and clientAuth, so the same pair serves
 * QEMU as server (destination) and as client (source); the cluster CA verifies the peer on both ends, so a
 * QEMU outside the cluster can neither send a guest nor receive one.
 *
 * The CA alone says "some host of this cluster", so each end also checks it talks to the host the controller
 * chose: the source sets `tls-hostname` to the destination's host name (agent certificates carry it as a
 * DNS SAN, ca.ts), and the destination admits only the source's certificate through `tls-authz`, an
 * `authz-simple` object holding the source's distinguished name, for the migration stream and the NBD
 * exports alike. QEMU checks `tls-authz` only on the server side, and `tls-hostname` only on the client
 * side, hence one check per direction. Host names are unique and a join cannot take one over
 * (controller/hosts.ts), so a name is an identity.
 */
import { getDiffieHellman } from 'node:crypto';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { validateName } from '../../common/units.ts';
import type { ObjectOptionsTlsCredsX509 } from '../../qemu/qmp-types.ts';
import type { QmpClient } from '../../qemu/qmp.ts';

/** The agent's PEMs (src/agent/identity.ts AgentIdentity has this shape). */
export interface TlsIdentity {
  caPem: string;
  certPem: string;
  keyPem: string;
}

export type TlsEndpoint = 'server' | 'client';

/** QOM ids of the credentials objects Ferry adds to a QEMU for a migration. */
export const TLS_OBJECT_ID: Record<TlsEndpoint, string> = { server: 'ferry-tls-server', client: 'ferry-tls-client' };
/** QOM id of the destination's authorization object (the one peer it admits). */
export const TLS_AUTHZ_ID = 'ferry-tls-peer';

/**
 * The distinguished name QEMU sees for a host's certificate: GnuTLS's RFC 4514 form of its subject, which
 * ca.ts writes as the CN alone. Host names match [a-z0-9-], so nothing needs escaping.
 */
export function hostDistinguishedName(host: string): string {
  return `CN=${validateName(host, 'TLS peer host name')}`;
}

export function tlsAuthzObject(peerHost: string): { 'qom-type': 'authz-simple'; id: string; identity: string } {
  return { 'qom-type': 'authz-simple', id: TLS_AUTHZ_ID, identity: hostDistinguishedName(peerHost) };
}

/**
 * On the destination: admits only `peerHost`'s certificate (QEMU refuses any other in the TLS handshake).
 * Returns the object's id for `tls-authz`, or null when no peer was named (an older controller: the CA
 * check alone, as before).
 */
export async function addTlsAuthz(qmp: QmpClient, peerHost: string | undefined): Promise<string | null> {
  if (peerHost === undefined) return null;
  const obj = tlsAuthzObject(peerHost);
  await qmp.execute('object-del', { id: obj.id }).catch(() => undefined);
  try {
    await qmp.execute('object-add', obj);
  } catch (err) {
    throw new FerryError('FERRY_E_TLS', `QEMU refused the TLS authorization for ${obj.identity}: ${(err as Error).message}`, { cause: err });
  }
  return obj.id;
}

/** A DER length: short form below 128, else the long form. */
function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** A DER INTEGER of the unsigned big-endian `value` (a leading zero byte keeps it positive). */
function derUnsigned(value: Buffer): Buffer {
  const body = value[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), value]) : value;
  return Buffer.concat([Buffer.from([0x02]), derLength(body.length), body]);
}

let dhPem: string | undefined;

/**
 * `dh-params.pem` for QEMU's server credentials: PKCS#3 parameters of the 2048-bit MODP group of RFC 3526
 * (group 14: a published safe prime, generator 2). Without this file QEMU has GnuTLS generate fresh
 * parameters whenever a server credentials object is created — measured here at 70 to 810 ms inside each
 * TLS prepare, while the VM waits to move. A published group is what TLS uses anyway (RFC 7919).
 */
export function dhParamsPem(): string {
  if (dhPem === undefined) {
    const dh = getDiffieHellman('modp14');
    const ints = Buffer.concat([derUnsigned(dh.getPrime()), derUnsigned(dh.getGenerator())]);
    const der = Buffer.concat([Buffer.from([0x30]), derLength(ints.length), ints]);
    const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
    dhPem = `-----BEGIN DH PARAMETERS-----\n${b64}-----END DH PARAMETERS-----\n`;
  }
  return dhPem;
}

/**
 * Writes QEMU's x509 directory layout into `dir` (created 0700; keys 0600): `ca-cert.pem`, the agent's pair
 * as both `server-*` and `client-*`, and `dh-params.pem` (dhParamsPem). Rewrites it completely, so a
 * retried prepare finds fresh files.
 */
export async function writeQemuTlsDir(dir: string, id: TlsIdentity): Promise<string> {
  if (!id.caPem.includes('BEGIN CERTIFICATE') || !id.certPem.includes('BEGIN CERTIFICATE') || !id.keyPem.includes('PRIVATE KEY')) {
    throw new FerryError('FERRY_E_TLS', 'The agent identity is not a PEM CA, certificate and key: re-join the agent.');
  }
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const files: Array<[string, string, number]> = [
    ['ca-cert.pem', id.caPem, 0o644],
    ['server-cert.pem', id.certPem, 0o644],
    ['server-key.pem', id.keyPem, 0o600],
    ['client-cert.pem', id.certPem, 0o644],
    ['client-key.pem', id.keyPem, 0o600],
    ['dh-params.pem', dhParamsPem(), 0o644],
  ];
  for (const [name, pem, mode] of files) await writeFile(join(dir, name), pem, { mode });
  return dir;
}

export function tlsCredsObject(endpoint: TlsEndpoint, dir: string): ObjectOptionsTlsCredsX509 {
  return {
    'qom-type': 'tls-creds-x509',
    id: TLS_OBJECT_ID[endpoint],
    endpoint,
    dir,
    // The server demands a client certificate from the cluster CA; the client checks the server's.
    'verify-peer': true,
    // QEMU's own pre-check demands the RSA-era keyEncipherment usage, which the cluster's ECDSA certificates
    // rightly lack (ECDHE-ECDSA signs, it never encrypts with the key). The chain, the peer's name and
    // the dates are still verified by GnuTLS at every handshake.
    'sanity-check': false,
  };
}

/**
 * Adds the credentials object to QEMU, replacing one left by an earlier attempt (QEMU reads the files when
 * the object is created, so a replaced identity needs a new object). Returns its id.
 */
export async function addTlsCreds(qmp: QmpClient, endpoint: TlsEndpoint, dir: string): Promise<string> {
  const id = TLS_OBJECT_ID[endpoint];
  await qmp.execute('object-del', { id }).catch(() => undefined);
  try {
    await qmp.execute('object-add', tlsCredsObject(endpoint, dir));
  } catch (err) {
    throw new FerryError('FERRY_E_TLS', `QEMU refused the TLS credentials in ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return id;
}
