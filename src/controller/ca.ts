/**
 * The cluster's certificate authority (ECDSA P-256, WebCrypto): created in the controller's data dir on
 * first start, it signs the controller's HTTPS certificate, the controller's client certificate for
 * calling agents (CN=ferry-controller), and each agent's certificate when it joins. Everyone pins this
 * CA; nothing trusts the system store.
 *
 * Chaining to the CA says "a member of this cluster", not which member: a joined agent holds a CA-signed
 * certificate too. So the two identities of the controller are told apart by more than their CN
 * (src/common/identity.ts): its HTTPS certificate carries SERVER_ROLE_OID, which only issueServerCert sets
 * (clients require it), and agents pin its client certificate's public key, received at join.
 */
import './reflect-shim.ts';
import * as x509 from '@peculiar/x509';
import { X509Certificate as NodeX509, randomBytes, webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { CLUSTER_CN, RESERVED_HOST_NAMES, SERVER_ROLE_OID, spkiPin } from '../common/identity.ts';

const crypto = webcrypto as unknown as Crypto;
x509.cryptoProvider.set(crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;
export const CONTROLLER_CLIENT_CN = CLUSTER_CN.controller;

export interface KeyPairPem {
  certPem: string;
  keyPem: string;
}

export interface ClusterCa {
  readonly caCertPem: string;
  /** SHA-256 of the CA certificate (DER), `AB:CD:…`, to compare out of band. */
  readonly fingerprint: string;
  /** Client certificate the controller presents to agents. */
  readonly controllerClient: KeyPairPem;
  /** `sha256:HEX` of the controller client certificate's public key: what agents pin at join. */
  readonly controllerPin: string;
  /** Certificate for a server or agent reachable at these names/addresses (serverAuth + clientAuth). */
  issue(commonName: string, sans: string[], opts?: IssueOptions): Promise<KeyPairPem>;
  /** The controller's own HTTPS certificate (CN ferry-server, SERVER_ROLE_OID): never for anyone else. */
  issueServerCert(sans: string[]): Promise<KeyPairPem>;
  /**
   * An agent's certificate: CN = host name, SAN DNS = the host name (what the migration source checks its
   * destination against: `tls-hostname`), SAN IP = the agent's address as the controller verified it.
   */
  issueAgentCert(name: string, ips: string[], opts?: AgentCertOptions): Promise<KeyPairPem>;
}

export interface AgentCertOptions {
  /** Lifetime in milliseconds (default CERT_DAYS days): `ferry server --agent-cert-days`. */
  lifetimeMs?: number;
  /**
   * The agent's own new public key (SPKI PEM), for a renewal: the private key never leaves the agent, and
   * the answer's `keyPem` is empty. Without it the CA makes the key pair (a join).
   */
  publicKeyPem?: string;
}

/** What the CA's certificates live unless told otherwise (agents': `ferry server --agent-cert-days`). */
export const CERT_DAYS = 825;

export interface IssueOptions {
  days?: number;
  /** Start of validity (default five minutes ago); with `days`, a certificate already expired can be made. */
  notBefore?: Date;
  /**
   * serverAuth only, as an operator's own server certificate (`ferry server --tls-cert`) has it: for tests
   * that play the operator's CA. The cluster CA never issues one, since clients accept a server-only
   * certificate without the server role (src/common/identity.ts, checkApiServerIdentity).
   */
  serverOnly?: boolean;
  /** Adds SERVER_ROLE_OID to the extended key usages; only issueServerCert sets it. */
  serverRole?: boolean;
  /** Lifetime in milliseconds; wins over `days`. */
  lifetimeMs?: number;
  /** Certify this public key instead of a new pair (the answer's keyPem is then empty). */
  publicKey?: CryptoKey;
}

const serial = (): string => {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive INTEGER
  return b.toString('hex');
};

async function keyToPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function pemToKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decodeFirst(pem);
  return crypto.subtle.importKey('pkcs8', der, ALG, true, ['sign']);
}

/** An agent's new public key: ECDSA P-256 as the whole cluster uses; anything else is refused. */
async function spkiToKey(pem: string): Promise<CryptoKey> {
  try {
    return await crypto.subtle.importKey('spki', x509.PemConverter.decodeFirst(pem), { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
  } catch (err) {
    throw new FerryError('FERRY_E_CERT_REFUSED', 'The new public key is not an ECDSA P-256 key in SPKI PEM.', { cause: err });
  }
}

const generate = (): Promise<CryptoKeyPair> => crypto.subtle.generateKey(ALG, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;

function sanNames(sans: string[]): x509.JsonGeneralName[] {
  const seen = new Set<string>();
  const out: x509.JsonGeneralName[] = [];
  for (const s of sans) {
    if (!s || seen.has(s)) continue;
    seen.add(s);
    out.push({ type: isIP(s) ? 'ip' : 'dns', value: s });
  }
  return out;
}

export function fingerprintOf(certPem: string): string {
  return new NodeX509(certPem).fingerprint256;
}

class Ca implements ClusterCa {
  readonly fingerprint: string;
  constructor(
    readonly caCertPem: string,
    private readonly caCert: x509.X509Certificate,
    private readonly caKey: CryptoKey,
    readonly controllerClient: KeyPairPem,
  ) {
    this.fingerprint = fingerprintOf(caCertPem);
  }

  get controllerPin(): string {
    return spkiPin(this.controllerClient.certPem);
  }

  async issue(commonName: string, sans: string[], opts: IssueOptions = {}): Promise<KeyPairPem> {
    const keys = opts.publicKey === undefined ? await generate() : undefined;
    const publicKey = opts.publicKey ?? keys!.publicKey;
    const lifetimeMs = opts.lifetimeMs ?? (opts.days ?? CERT_DAYS) * DAY;
    // Backdated against clocks a little behind ours, by at most a tenth of the lifetime: a certificate
    // of a minute (tests) must not be two-thirds through its life when it is issued.
    const notBefore = opts.notBefore ?? new Date(Date.now() - Math.min(5 * 60_000, lifetimeMs / 10));
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        ...(opts.serverOnly === true ? [] : [x509.ExtendedKeyUsage.clientAuth]),
        ...(opts.serverRole === true ? [SERVER_ROLE_OID] : []),
      ]),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(this.caCert),
    ];
    const names = sanNames(sans);
    if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: [{ CN: [commonName] }],
      issuer: this.caCert.subjectName,
      notBefore,
      notAfter: new Date((opts.notBefore?.getTime() ?? Date.now()) + lifetimeMs),
      signingAlgorithm: ALG,
      publicKey,
      signingKey: this.caKey,
      extensions,
    });
    return { certPem: cert.toString('pem'), keyPem: keys === undefined ? '' : await keyToPem(keys.privateKey) };
  }

  issueServerCert(sans: string[]): Promise<KeyPairPem> {
    return this.issue(CLUSTER_CN.server, sans, { serverRole: true });
  }

  async issueAgentCert(name: string, ips: string[], opts: AgentCertOptions = {}): Promise<KeyPairPem> {
    const bad = ips.filter((ip) => isIP(ip) === 0);
    if (bad.length > 0) throw new FerryError('FERRY_E_BAD_INPUT', `Not IP addresses: ${bad.join(', ')}.`);
    // The join checks this too (with its own error); here it guards every other path to an agent certificate.
    if (RESERVED_HOST_NAMES.includes(name)) throw new FerryError('FERRY_E_HOST_NAME_RESERVED', `No agent certificate for ${JSON.stringify(name)}.`);
    const publicKey = opts.publicKeyPem === undefined ? undefined : await spkiToKey(opts.publicKeyPem);
    return this.issue(name, [name, ...ips], {
      ...(opts.lifetimeMs === undefined ? {} : { lifetimeMs: opts.lifetimeMs }),
      ...(publicKey === undefined ? {} : { publicKey }),
    });
  }
}

export async function createCaCert(commonName = 'Ferry cluster CA'): Promise<{ certPem: string; keyPem: string }> {
  const keys = await generate();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: [{ CN: [commonName] }],
    notBefore: new Date(Date.now() - 5 * 60_000),
    notAfter: new Date(Date.now() + 3650 * DAY),
    signingAlgorithm: ALG,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await keyToPem(keys.privateKey) };
}

/** Builds a CA object from PEMs (a CA made by createCaCert, or loaded from disk). */
export async function caFromPem(caCertPem: string, caKeyPem: string, controllerClient?: KeyPairPem): Promise<ClusterCa> {
  const cert = new x509.X509Certificate(caCertPem);
  const key = await pemToKey(caKeyPem);
  const ca = new Ca(caCertPem, cert, key, controllerClient ?? { certPem: '', keyPem: '' });
  if (controllerClient) return ca;
  return new Ca(caCertPem, cert, key, await ca.issue(CONTROLLER_CLIENT_CN, []));
}

const write = (file: string, text: string, mode: number): void => writeFileSync(file, text, { mode, flag: 'wx' });

/**
 * Loads the CA from `dir` (ca.crt, ca.key, controller.crt, controller.key), creating what is missing.
 * `created` tells whether this was the first start.
 */
export async function loadOrCreateCa(dir: string): Promise<{ ca: ClusterCa; created: boolean }> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700); // also when it existed already: it holds the CA key
  const f = (n: string): string => join(dir, n);
  let created = false;
  if (!existsSync(f('ca.key'))) {
    const { certPem, keyPem } = await createCaCert();
    write(f('ca.key'), keyPem, 0o600);
    write(f('ca.crt'), certPem, 0o644);
    created = true;
  }
  const caCertPem = readFileSync(f('ca.crt'), 'utf8');
  const caKeyPem = readFileSync(f('ca.key'), 'utf8');
  let client: KeyPairPem | undefined;
  if (existsSync(f('controller.key')) && existsSync(f('controller.crt'))) {
    client = { certPem: readFileSync(f('controller.crt'), 'utf8'), keyPem: readFileSync(f('controller.key'), 'utf8') };
  }
  const ca = await caFromPem(caCertPem, caKeyPem, client);
  if (!client) {
    write(f('controller.key'), ca.controllerClient.keyPem, 0o600);
    write(f('controller.crt'), ca.controllerClient.certPem, 0o644);
  }
  return { ca, created };
}
