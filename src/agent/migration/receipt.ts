/**
 * Discard receipts: the destination's signed word that it destroyed its copy of a guest. Once the source
 * QEMU reported `completed` (or post-copy began) the destination may hold the only complete guest, so the
 * source agent resumes its own copy only against such a receipt — checked here, on the source, not taken
 * on the controller's say-so. The destination signs with its cluster key; the source checks that the
 * certificate was issued by the cluster CA, names the host the migration was sent to, and signed exactly
 * this migration's discard.
 */
import { X509Certificate, createPrivateKey, sign, verify } from 'node:crypto';
import { FerryError } from '../../common/errors.ts';
import type { TlsIdentity } from './tls.ts';
import type { DiscardReceipt } from '../../common/agent-migration.ts';

export type { DiscardReceipt };


const payload = (r: Pick<DiscardReceipt, 'migration' | 'vm' | 'host' | 'at'>): Buffer =>
  Buffer.from(`ferry-discard-receipt/1\n${r.migration}\n${r.vm}\n${r.host}\n${r.at}\n`);

function commonName(cert: X509Certificate): string | null {
  const m = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject);
  return m ? m[1]!.trim() : null;
}

/** The destination's receipt for migration `migration` of `vm`, signed with its identity. */
export function signReceipt(identity: TlsIdentity | null, migration: string, vm: string, host: string): DiscardReceipt {
  const at = new Date().toISOString();
  if (identity === null) return { version: 1, migration, vm, host, at, signature: '', certPem: '' };
  const cn = commonName(new X509Certificate(identity.certPem));
  const r = { migration, vm, host: cn ?? host, at };
  const signature = sign('sha256', payload(r), createPrivateKey(identity.keyPem)).toString('base64');
  return { version: 1, ...r, signature, certPem: identity.certPem };
}

/**
 * Throws FERRY_E_RECEIPT_INVALID unless `r` is the discard of `migration`/`vm` signed by `destination`
 * under the cluster CA. Without an identity of its own (no cluster, tests) the source can check only the
 * fields.
 */
export function checkReceipt(identity: TlsIdentity | null, r: unknown, want: { migration: string; vm: string; destination: string | null }): DiscardReceipt {
  const bad = (why: string): never => {
    throw new FerryError('FERRY_E_RECEIPT_INVALID', `The destination's discard receipt is not valid (${why}): the source is not resumed.`);
  };
  if (r === undefined || r === null) {
    throw new FerryError('FERRY_E_RECEIPT_REQUIRED', `The source QEMU completed migration ${want.migration}: VM ${want.vm} resumes here only against the destination's discard receipt.`);
  }
  if (typeof r !== 'object') return bad('malformed');
  const x = r as Partial<DiscardReceipt>;
  if (x.version !== 1 || typeof x.migration !== 'string' || typeof x.vm !== 'string' || typeof x.host !== 'string' || typeof x.at !== 'string') {
    return bad('malformed');
  }
  if (x.migration !== want.migration || x.vm !== want.vm) return bad('another migration');
  if (want.destination !== null && x.host !== want.destination) return bad(`signed by ${x.host}, not ${want.destination}`);
  if (identity === null) return x as DiscardReceipt;
  if (typeof x.signature !== 'string' || typeof x.certPem !== 'string' || x.signature === '') return bad('unsigned');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(x.certPem);
  } catch {
    return bad('no certificate');
  }
  const ca = new X509Certificate(identity.caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return bad('not issued by the cluster CA');
  if (commonName(cert) !== x.host) return bad('certificate of another host');
  const ok = verify('sha256', payload(x as DiscardReceipt), cert.publicKey, Buffer.from(x.signature, 'base64'));
  if (!ok) return bad('bad signature');
  return x as DiscardReceipt;
}
