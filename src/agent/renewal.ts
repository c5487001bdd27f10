/**
 * Agent certificate renewal, the agent's side: after `renewAfter` (2/3 of the certificate's lifetime) and
 * before `notAfter`, the agent makes a new key pair, asks the controller (POST /api/v1/renew) for a
 * certificate of it, proving its identity by signing the request with its current key (why a signature:
 * src/controller/renewal.ts), writes the pair to its data dir, and serves with it from then on without a
 * restart (`server.setSecureContext`; the migration stream's TLS and the discard receipts read the same
 * identity object). The old pair stays in place, and in use, until the new one is written.
 *
 * ```mermaid
 * stateDiagram-v2
 *   [*] --> waiting
 *   waiting --> renewing: now ≥ renewAfter
 *   renewing --> waiting: renewed (a new renewAfter)
 *   renewing --> retrying: controller unreachable, or it refused
 *   retrying --> renewing: after the backoff (never past notAfter)
 *   waiting --> expired: now ≥ notAfter
 *   retrying --> expired: now ≥ notAfter
 *   expired --> [*]: FERRY_E_CERT_EXPIRED; the operator re-joins (ferry agent --join-token)
 * ```
 *
 * The write is a small journal: the new key and certificate are first written whole to `renew.key.pem`
 * and `renew.cert.pem`, then renamed over key.pem and cert.pem, key first. A crash between the two renames
 * leaves a new key beside the old certificate; `completeRenewal` (identity.ts, run before the identity is
 * read) finishes the renames, so a start never finds a pair that does not fit.
 */
import { generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import { FerryError, fromErrorJSON, toFerryError } from '../common/errors.ts';
import { CLUSTER_SNI, renewalPayload, serverRoleError } from '../common/identity.ts';
import { silentLogger, type Log } from '../common/log.ts';
import type { AgentCertificate, RenewRequest, RenewResponse } from '../common/protocol.ts';
import { checkIdentity, completeRenewal, IDENTITY_FILES, putPrivate, type AgentIdentity, type JoinRecord } from './identity.ts';

export interface RenewalTimes {
  notAfter: string;
  renewAfter: string;
}

export type RenewalStep =
  | { kind: 'wait'; ms: number }
  | { kind: 'renew' }
  | { kind: 'expired' };

/** What to do now: wait until renewAfter, renew, or nothing any more (expired: the operator re-joins). */
export function renewalStep(cert: RenewalTimes, now: number): RenewalStep {
  const notAfter = Date.parse(cert.notAfter);
  const renewAfter = Date.parse(cert.renewAfter);
  if (now >= notAfter) return { kind: 'expired' };
  if (now < renewAfter) return { kind: 'wait', ms: renewAfter - now };
  return { kind: 'renew' };
}

export interface BackoffOptions {
  /** The first retry's delay. */
  baseMs: number;
  /** No delay is longer than this. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 2_000, maxMs: 5 * 60_000 };

/**
 * The delay before retry number `failures` (1 = after the first failure): doubling from `baseMs` up to
 * `maxMs`, and never more than a quarter of the time left before `notAfter`, so that a controller that
 * comes back shortly before expiry is still asked several times in time.
 */
export function retryDelayMs(failures: number, cert: Pick<RenewalTimes, 'notAfter'>, now: number, o: BackoffOptions = DEFAULT_BACKOFF): number {
  const doubling = o.baseMs * 2 ** Math.max(0, Math.min(failures - 1, 30));
  const left = Date.parse(cert.notAfter) - now;
  return Math.max(Math.min(250, o.baseMs), Math.min(doubling, o.maxMs, left / 4));
}

export interface RenewOptions {
  serverUrl: string;
  name: string;
  identity: AgentIdentity;
  /** Only for an expired certificate: the operator's one-time token to re-join under the same name. */
  joinToken?: string;
  timeoutMs?: number;
  now?: () => number;
}

/** Asks the controller for a certificate of a new key pair; returns the new pair, checked, not saved. */
export async function requestRenewal(o: RenewOptions): Promise<{ certPem: string; keyPem: string }> {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicKeyPem = pair.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const fields = { name: o.name, certPem: o.identity.certPem, publicKeyPem, signedAt: new Date((o.now ?? Date.now)()).toISOString() };
  const payload = renewalPayload(fields);
  const body: RenewRequest = {
    ...fields,
    signature: sign('sha256', payload, o.identity.keyPem).toString('base64'),
    proof: sign('sha256', payload, pair.privateKey).toString('base64'),
    ...(o.joinToken === undefined ? {} : { joinToken: o.joinToken }),
  };
  const answer = (await postJson(new URL('/api/v1/renew', o.serverUrl), body, o.identity.caPem, o.timeoutMs ?? 15_000)) as Partial<RenewResponse>;
  if (typeof answer.certPem !== 'string') throw new FerryError('FERRY_E_AGENT_PROTOCOL', 'The renewal answer holds no certificate.');
  const renewed: AgentIdentity = { ...o.identity, certPem: answer.certPem, keyPem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
  // Signed by our CA, for our new key, under our name: anything else would lock the agent out once in use.
  const { cn } = checkIdentity(renewed);
  if (cn !== o.name) throw new FerryError('FERRY_E_TLS', `The renewed certificate is ${JSON.stringify(cn)}'s, not ${JSON.stringify(o.name)}'s.`);
  return { certPem: renewed.certPem, keyPem: renewed.keyPem };
}

/**
 * POST over HTTPS to the controller: its certificate must chain to the cluster CA and carry the server
 * role (src/common/identity.ts); asked for by the cluster SNI name, as at join, so that a server with an
 * operator's own certificate presents the cluster one. Follows one redirect (a follower controller sends
 * writes to the leader, docs/ha.md).
 */
function postJson(url: URL, body: unknown, caPem: string, timeoutMs: number, redirects = 1): Promise<unknown> {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'POST',
      ca: caPem,
      servername: CLUSTER_SNI,
      checkServerIdentity: (_name, cert) => serverRoleError(cert.ext_key_usage, url.host),
      agent: false,
      timeout: timeoutMs,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
    });
    req.on('timeout', () => req.destroy(new FerryError('FERRY_E_SERVER_UNREACHABLE', `No answer from ${url.origin} in time.`)));
    req.on('error', (err) =>
      reject(err instanceof FerryError ? err : new FerryError('FERRY_E_SERVER_UNREACHABLE', `Cannot reach the Ferry server at ${url.origin}: ${err.message}`, { cause: err })),
    );
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('error', reject);
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        const location = res.headers.location;
        if (status === 307 && location !== undefined && redirects > 0) {
          postJson(new URL(location, url), body, caPem, timeoutMs, redirects - 1).then(resolve, reject);
          return;
        }
        let parsed: unknown;
        try {
          parsed = JSON.parse(Buffer.concat(parts).toString('utf8'));
        } catch {
          parsed = undefined;
        }
        if (status >= 200 && status < 300) resolve(parsed);
        else reject(parsed === undefined ? new FerryError('FERRY_E_SERVER_UNREACHABLE', `The server answered HTTP ${status}.`) : fromErrorJSON(parsed, 'FERRY_E_CERT_REFUSED'));
      });
    });
    req.end(text);
  });
}

/** Writes the renewed pair through the journal (all 0600) and records when. */
export async function saveRenewal(dir: string, pair: { certPem: string; keyPem: string }, renewedAt: string): Promise<void> {
  const put = (name: string, text: string): Promise<void> => putPrivate(dir, name, text);
  await put(IDENTITY_FILES.renewKey, pair.keyPem);
  await put(IDENTITY_FILES.renewCert, pair.certPem);
  await completeRenewal(dir);
  const recordFile = join(dir, IDENTITY_FILES.record);
  const record = JSON.parse(await readFile(recordFile, 'utf8').catch(() => '{}')) as Partial<JoinRecord>;
  await put(IDENTITY_FILES.record, JSON.stringify({ ...record, renewedAt }, null, 2) + '\n');
}

/** What GET /certificate says of a certificate that is renewed after 2/3 of its lifetime. */
export function certificateView(certPem: string, renewedAt: string | null = null): AgentCertificate {
  const c = new X509Certificate(certPem);
  const from = Date.parse(c.validFrom);
  const to = Date.parse(c.validTo);
  return {
    notBefore: new Date(from).toISOString(),
    notAfter: new Date(to).toISOString(),
    renewAfter: new Date(from + ((to - from) * 2) / 3).toISOString(),
    renewedAt,
  };
}

export interface RenewerOptions {
  dataDir: string;
  name: string;
  serverUrl: string;
  /** The identity in use; a renewal replaces its certPem and keyPem in place, so every reader sees the new pair. */
  identity: AgentIdentity;
  /** Serves with the identity's new pair (the agent's `server.setSecureContext`). */
  apply: () => void;
  /** The last renewal before this process (agent.json), shown until this one renews. */
  renewedAt?: string | null;
  log?: Log;
  backoff?: BackoffOptions;
  now?: () => number;
}

/** Renews the agent's certificate when it is due, for as long as the agent runs. */
export class CertificateRenewer {
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private renewedAt: string | null;
  private readonly log: Log;
  private readonly now: () => number;

  constructor(private readonly o: RenewerOptions) {
    this.renewedAt = o.renewedAt ?? null;
    this.log = o.log ?? silentLogger();
    this.now = o.now ?? Date.now;
  }

  /** GET /agent/v1/certificate: the certificate in use and its last renewal. */
  view(): AgentCertificate {
    return certificateView(this.o.identity.certPem, this.renewedAt);
  }

  start(): void {
    this.stopped = false;
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(delayMs?: number): void {
    if (this.stopped) return;
    const step = renewalStep(this.view(), this.now());
    if (step.kind === 'expired') {
      const err = new FerryError('FERRY_E_CERT_EXPIRED', `The certificate of ${this.o.name} expired at ${this.view().notAfter} before it could be renewed: re-join with a new join token (ferry agent --join-token T).`);
      this.log.error({ err: err.toJSON(), code: err.code }, err.message);
      return;
    }
    const ms = delayMs ?? (step.kind === 'wait' ? step.ms : 0);
    // setTimeout takes at most 2^31-1 ms (24.8 days): a longer wait is taken in steps.
    this.timer = setTimeout(() => void this.tick(), Math.min(ms, 2 ** 31 - 1));
    this.timer.unref();
  }

  /** One attempt when due (exported through `renewNow` for tests); schedules the next. */
  private async tick(): Promise<void> {
    this.timer = undefined;
    if (this.stopped) return;
    if (renewalStep(this.view(), this.now()).kind !== 'renew') return this.schedule();
    await this.renewNow().then(
      () => this.schedule(),
      () => this.schedule(retryDelayMs(this.failures, this.view(), this.now(), this.o.backoff)),
    );
  }

  /** Renews at once, whatever the time; rejects (and counts a failure) when the controller does not give one. */
  async renewNow(): Promise<void> {
    const before = this.view();
    try {
      const pair = await requestRenewal({ serverUrl: this.o.serverUrl, name: this.o.name, identity: this.o.identity, now: this.now });
      const renewedAt = new Date(this.now()).toISOString();
      // On disk first: a crash now leaves the new pair to start with, and the old one serves until then.
      await saveRenewal(this.o.dataDir, pair, renewedAt);
      this.o.identity.certPem = pair.certPem;
      this.o.identity.keyPem = pair.keyPem;
      this.o.apply();
      this.renewedAt = renewedAt;
      this.failures = 0;
      const after = this.view();
      this.log.info({ notAfter: after.notAfter, previousNotAfter: before.notAfter, renewAfter: after.renewAfter }, `certificate renewed: valid until ${after.notAfter} (was ${before.notAfter})`);
    } catch (err) {
      this.failures++;
      const fe = toFerryError(err);
      const next = retryDelayMs(this.failures, before, this.now(), this.o.backoff);
      // Unreachable is expected now and then (a controller restarting); a refusal needs the operator.
      const level = fe.code === 'FERRY_E_SERVER_UNREACHABLE' ? 'warn' : 'error';
      this.log[level]({ code: fe.code, failures: this.failures, retryInMs: Math.round(next), notAfter: before.notAfter }, `certificate renewal failed (${fe.code}: ${fe.message}); retrying in ${Math.round(next / 1000)} s`);
      throw fe;
    }
  }
}
