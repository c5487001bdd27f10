/**
 * The agent's identity in the cluster: the cluster CA, its own certificate and key, and the pin of the
 * controller's client key (ca.pem, cert.pem, key.pem, controller.pin, all 0600 in a 0700 data dir), and
 * the join that obtains them with a one-time token.
 *
 * At join time the agent does not know the cluster CA yet. With `--ca-hash sha256:HEX` it pins it: the
 * server must present a chain that contains a certificate with that hash (of its DER, or of its public
 * key's SPKI) and the leaf must chain to it, checked before the token is sent. Without a pin it trusts on
 * first use and logs the CA's hash so an operator can compare it. Either way, the CA returned in the join
 * response must be the one that signed the server's certificate, and the issued certificate must chain to it.
 * The server's certificate must also carry the server role (SERVER_ROLE_OID, src/common/identity.ts), which
 * only the controller's own HTTPS certificate has: another host's CA-signed certificate cannot collect tokens.
 *
 * A joined agent renews its certificate before it expires (renewal.ts); a renewal's journal is completed
 * here, before the identity is read.
 *
 * The join response names the controller's client key (`controllerPin`); the agent's API serves only a
 * caller presenting that key (server.ts), whatever the CN of its certificate.
 */
import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import { FerryError, fromErrorJSON } from '../common/errors.ts';
import { CLUSTER_SNI, hasServerRole, spkiPin } from '../common/identity.ts';
import { silentLogger, type Log } from '../common/log.ts';
import type { JoinRequest, JoinResponse } from '../common/protocol.ts';

export interface AgentIdentity {
  caPem: string;
  certPem: string;
  keyPem: string;
  /** `sha256:HEX` of the controller client certificate's public key (JoinResponse.controllerPin). */
  controllerPin: string;
}

const PIN_RE = /^sha256:[0-9a-f]{64}$/;

/** What the agent remembers about its join, next to the certificates. */
export interface JoinRecord {
  name: string;
  serverUrl: string;
  agentUrl: string;
  joinedAt: string;
  /** The certificate's last renewal (renewal.ts), absent before the first. */
  renewedAt?: string;
}

export const IDENTITY_FILES = {
  ca: 'ca.pem',
  cert: 'cert.pem',
  key: 'key.pem',
  controllerPin: 'controller.pin',
  record: 'agent.json',
  /** A renewal's journal (renewal.ts): the new pair, both written whole before either replaces the old one. */
  renewKey: 'renew.key.pem',
  renewCert: 'renew.cert.pem',
} as const;

/** `sha256:HEX` of a certificate's DER: what `--ca-hash` takes (its SPKI hash is accepted too). */
export function certHash(pemOrCert: string | X509Certificate): string {
  const cert = typeof pemOrCert === 'string' ? new X509Certificate(pemOrCert) : pemOrCert;
  return `sha256:${createHash('sha256').update(cert.raw).digest('hex')}`;
}

const spkiHash = (cert: X509Certificate): string => spkiPin(cert);

export function parseCaHash(text: string): string {
  // Also takes the `AB:CD:…` form the controller prints (a fingerprint256 of the same DER).
  const m = /^(?:sha256:)?([0-9a-fA-F:]+)$/.exec(text.trim());
  const hex = m?.[1]?.replaceAll(':', '').toLowerCase();
  if (hex === undefined || hex.length !== 64) {
    throw new FerryError(
      'FERRY_E_BAD_INPUT',
      `Bad --ca-hash ${JSON.stringify(text)}: expected sha256:<64 hex digits>.`,
    );
  }
  return `sha256:${hex}`;
}

function matchesPin(cert: X509Certificate, pin: string): boolean {
  return certHash(cert) === pin || spkiHash(cert) === pin;
}

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

/** The chain the peer presented, leaf first, as node:crypto certificates. */
function presentedChain(socket: TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  let c: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  const seen = new Set<string>();
  while (c !== undefined && c.raw !== undefined && Object.keys(c).length > 0) {
    const fp = c.fingerprint256;
    if (seen.has(fp)) break;
    seen.add(fp);
    out.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  return out;
}

/** True when the presented chain holds the pinned certificate and the leaf chains up to it. */
function chainReachesPin(chain: X509Certificate[], pin: string): boolean {
  for (let i = 0; i < chain.length; i++) {
    if (!matchesPin(chain[i]!, pin)) continue;
    let ok = true;
    for (let j = 0; j < i && ok; j++) ok = issuedBy(chain[j]!, chain[j + 1]!);
    if (ok) return true;
  }
  return false;
}

/** True when the presented chain leads from the leaf to `ca` (which the server need not have sent). */
function chainReachesCa(chain: X509Certificate[], ca: X509Certificate): boolean {
  for (let j = 0; j < chain.length; j++) {
    const c = chain[j]!;
    if (certHash(c) === certHash(ca) || issuedBy(c, ca)) return true;
    const next = chain[j + 1];
    if (next === undefined || !issuedBy(c, next)) return false;
  }
  return false;
}

/** Finishes a renewal a crash interrupted (renewal.ts); a no-op when there is none. */
export async function completeRenewal(dir: string): Promise<void> {
  const f = (n: string): string => join(dir, n);
  // The journal counts only once its certificate is in: before that, the old pair is whole and stays.
  if (!existsSync(f(IDENTITY_FILES.renewCert))) return;
  if (existsSync(f(IDENTITY_FILES.renewKey))) await rename(f(IDENTITY_FILES.renewKey), f(IDENTITY_FILES.key));
  await rename(f(IDENTITY_FILES.renewCert), f(IDENTITY_FILES.cert));
}

export async function loadIdentity(dir: string): Promise<AgentIdentity | undefined> {
  await completeRenewal(dir);
  try {
    const [caPem, certPem, keyPem] = await Promise.all(
      [IDENTITY_FILES.ca, IDENTITY_FILES.cert, IDENTITY_FILES.key].map((f) => readFile(join(dir, f), 'utf8')),
    );
    let pin: string;
    try {
      pin = (await readFile(join(dir, IDENTITY_FILES.controllerPin), 'utf8')).trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // Joined before agents pinned the controller: serving by CN alone is what this file exists to end.
      throw new FerryError(
        'FERRY_E_CONFIG',
        `${dir} has certificates but no ${IDENTITY_FILES.controllerPin} (joined by an older Ferry): write the controller's pin there, ` +
          "sha256:<hex of SHA-256 of the public key of the server's pki/controller.crt> (openssl x509 -in controller.crt -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum).",
      );
    }
    return { caPem: caPem!, certPem: certPem!, keyPem: keyPem!, controllerPin: pin };
  } catch (err) {
    if (err instanceof FerryError) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new FerryError('FERRY_E_CONFIG', `Cannot read the agent's certificates in ${dir}: ${String(err)}`, {
      cause: err,
    });
  }
}

export async function loadJoinRecord(dir: string): Promise<JoinRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, IDENTITY_FILES.record), 'utf8')) as JoinRecord;
  } catch {
    return undefined;
  }
}

/** Writes the identity; cert.pem goes last, since its presence is what marks the agent as joined. */
/** Writes one identity file atomically (a temporary file, then a rename), readable by root only. */
export async function putPrivate(dir: string, name: string, text: string): Promise<void> {
  const tmp = join(dir, `.${name}.${process.pid}.tmp`);
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, join(dir, name));
}

export async function saveIdentity(dir: string, id: AgentIdentity, record: JoinRecord): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode applies only to a directory it creates: a data dir made beforehand gets 0700 too.
  await chmod(dir, 0o700);
  const put = (name: string, text: string): Promise<void> => putPrivate(dir, name, text);
  await put(IDENTITY_FILES.ca, id.caPem);
  await put(IDENTITY_FILES.key, id.keyPem);
  await put(IDENTITY_FILES.controllerPin, id.controllerPin + '\n');
  await put(IDENTITY_FILES.record, JSON.stringify(record, null, 2) + '\n');
  await put(IDENTITY_FILES.cert, id.certPem);
}

/** Checks that an identity is coherent: the cert is from the CA and the key is the cert's. */
export function checkIdentity(id: AgentIdentity): { cn: string; notAfter: string } {
  try {
    const ca = new X509Certificate(id.caPem);
    const cert = new X509Certificate(id.certPem);
    if (!issuedBy(cert, ca)) throw new Error('the certificate is not signed by the CA');
    if (!cert.checkPrivateKey(createPrivateKey(id.keyPem)))
      throw new Error('the key does not belong to the certificate');
    if (!PIN_RE.test(id.controllerPin)) throw new Error(`the controller pin ${JSON.stringify(id.controllerPin)} is not sha256:<64 hex>`);
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? '';
    return { cn, notAfter: cert.validTo };
  } catch (err) {
    throw new FerryError(
      'FERRY_E_TLS',
      `The agent's certificates do not fit together: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

export interface JoinOptions {
  server: string;
  token: string;
  name: string;
  agentUrl: string;
  /** `sha256:HEX` of the cluster CA (see certHash); without it, trust on first use. */
  caHash?: string;
  log?: Log;
  timeoutMs?: number;
}

/** POST /api/v1/join; returns the identity handed out by the controller (not saved yet). */
export async function joinCluster(
  opts: JoinOptions,
): Promise<{ identity: AgentIdentity; serverUrl: string }> {
  const log = opts.log ?? silentLogger();
  const pin = opts.caHash === undefined ? undefined : parseCaHash(opts.caHash);
  let url: URL;
  try {
    url = new URL('/api/v1/join', opts.server);
  } catch (err) {
    throw new FerryError(
      'FERRY_E_BAD_INPUT',
      `Bad --server ${JSON.stringify(opts.server)}: expected https://HOST:PORT.`,
      { cause: err },
    );
  }
  if (url.protocol !== 'https:')
    throw new FerryError('FERRY_E_BAD_INPUT', `--server must be an https:// URL, not ${opts.server}.`);
  const body = JSON.stringify({
    token: opts.token,
    name: opts.name,
    agentUrl: opts.agentUrl,
  } satisfies JoinRequest);

  const { status, text, chain } = await new Promise<{
    status: number;
    text: string;
    chain: X509Certificate[];
  }>((resolve, reject) => {
    let chain: X509Certificate[] = [];
    const req = request(url, {
      method: 'POST',
      // The CA is not known yet: the certificate is checked below, against the pin or on first use.
      rejectUnauthorized: false,
      // A server with an operator's own certificate (`ferry server --tls-cert`) presents its cluster one
      // under this name: agents always join against the cluster CA.
      servername: CLUSTER_SNI,
      agent: false,
      timeout: opts.timeoutMs ?? 15_000,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    });
    req.on('socket', (s) => {
      s.once('secureConnect', () => {
        chain = presentedChain(s as TLSSocket);
        if (!hasServerRole(chain[0]?.keyUsage)) {
          // A certificate of the cluster CA, but not the controller's HTTPS one (a joined host's, say):
          // the token must not reach it.
          req.destroy(
            new FerryError(
              'FERRY_E_TLS',
              `The server at ${url.host} presented a certificate without the Ferry server role: it is not the controller.`,
            ),
          );
          return;
        }
        if (pin !== undefined && !chainReachesPin(chain, pin)) {
          // Refusing here keeps the token from reaching a server that cannot prove it holds the pinned CA.
          req.destroy(
            new FerryError(
              'FERRY_E_TLS',
              `The server at ${url.host} did not present the pinned CA ${pin} (presented: ${chain.map((c) => certHash(c)).join(', ') || 'nothing'}).`,
            ),
          );
          return;
        }
        req.end(body);
      });
    });
    req.on('timeout', () =>
      req.destroy(new FerryError('FERRY_E_SERVER_UNREACHABLE', `No answer from ${url.origin} in time.`)),
    );
    req.on('error', (err) =>
      reject(
        err instanceof FerryError
          ? err
          : new FerryError(
              'FERRY_E_SERVER_UNREACHABLE',
              `Cannot reach the Ferry server at ${url.origin}: ${err.message}`,
              { cause: err },
            ),
      ),
    );
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8'), chain }),
      );
      res.on('error', reject);
    });
  });

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (status < 200 || status >= 300) {
    if (parsed !== undefined) throw fromErrorJSON(parsed, 'FERRY_E_JOIN_TOKEN');
    throw new FerryError(
      'FERRY_E_JOIN_TOKEN',
      `The server refused the join (HTTP ${status}): ${text.slice(0, 200)}`,
    );
  }
  const r = (parsed ?? {}) as Partial<JoinResponse>;
  if (typeof r.caCertPem !== 'string' || typeof r.certPem !== 'string' || typeof r.keyPem !== 'string') {
    throw new FerryError('FERRY_E_AGENT_PROTOCOL', 'The join response lacks caCertPem, certPem or keyPem.');
  }
  if (typeof r.controllerPin !== 'string' || !PIN_RE.test(r.controllerPin)) {
    throw new FerryError('FERRY_E_AGENT_PROTOCOL', 'The join response lacks the controller pin (controllerPin): upgrade the controller.');
  }
  const identity: AgentIdentity = { caPem: r.caCertPem, certPem: r.certPem, keyPem: r.keyPem, controllerPin: r.controllerPin };
  let ca: X509Certificate;
  try {
    ca = new X509Certificate(identity.caPem);
  } catch (err) {
    throw new FerryError('FERRY_E_TLS', 'The join response holds no valid CA certificate.', { cause: err });
  }
  if (pin !== undefined && !matchesPin(ca, pin)) {
    throw new FerryError(
      'FERRY_E_TLS',
      `The CA returned by the server (${certHash(ca)}) is not the pinned ${pin}.`,
    );
  }
  if (!chainReachesCa(chain, ca)) {
    throw new FerryError(
      'FERRY_E_TLS',
      "The server's TLS certificate is not from the CA it handed out: refusing the join.",
    );
  }
  checkIdentity(identity);
  if (pin === undefined) {
    log.warn({ caHash: certHash(ca) }, `trusting the cluster CA on first use: ${certHash(ca)} (pass --ca-hash to pin it)`);
  } else {
    log.info({ caHash: pin }, `cluster CA matches the pinned ${pin}`);
  }
  return { identity, serverUrl: typeof r.serverUrl === 'string' ? r.serverUrl : opts.server };
}

export interface EnsureIdentityOptions extends Partial<Omit<JoinOptions, 'name' | 'agentUrl'>> {
  dataDir: string;
  name: string;
  agentUrl: string;
}

/**
 * Reuses the identity in the data dir, or joins with the token when there is none.
 * Returns the identity and whether this start was the join.
 */
export async function ensureIdentity(
  opts: EnsureIdentityOptions,
): Promise<{ identity: AgentIdentity; joined: boolean }> {
  const existing = await loadIdentity(opts.dataDir);
  if (existing !== undefined) {
    checkIdentity(existing);
    const record = await loadJoinRecord(opts.dataDir);
    if (record !== undefined && record.name !== opts.name) {
      throw new FerryError(
        'FERRY_E_USAGE',
        `The data dir ${opts.dataDir} belongs to agent ${record.name}, not ${opts.name}: use --name ${record.name} or another --data.`,
      );
    }
    return { identity: existing, joined: false };
  }
  if (opts.server === undefined || opts.token === undefined) {
    throw new FerryError(
      'FERRY_E_USAGE',
      `No certificates in ${opts.dataDir}: the first start needs --server URL and --join-token TOKEN.`,
    );
  }
  const { identity, serverUrl } = await joinCluster({ ...opts, server: opts.server, token: opts.token });
  await saveIdentity(opts.dataDir, identity, {
    name: opts.name,
    serverUrl,
    agentUrl: opts.agentUrl,
    joinedAt: new Date().toISOString(),
  });
  return { identity, joined: true };
}
