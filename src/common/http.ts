/**
 * What every Ferry HTTP client (the controller calling agents, the public API client, an agent joining)
 * makes of a request that got no HTTP answer: a transport failure mapped onto the error registry — a TLS
 * verification failure is FERRY_E_TLS (wrong CA or name: retrying will not help), anything else the
 * caller's "unreachable" code.
 */
import { FerryError } from './errors.ts';

/** Node's TLS verification failures: these mean "wrong CA or name", not "host down". */
const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  // src/common/identity.ts: a cluster certificate that is not the controller's HTTPS one.
  'ERR_FERRY_NOT_SERVER',
]);

/** Every `code` along the cause chain (undici wraps socket errors; connect errors may be aggregates). */
export function codesOf(err: unknown, out: string[] = []): string[] {
  if (!(err instanceof Error) || out.length > 16) return out;
  const c = (err as { code?: unknown }).code;
  if (typeof c === 'string') out.push(c);
  if (err instanceof AggregateError) for (const e of err.errors) codesOf(e, out);
  return codesOf(err.cause, out);
}

/** Maps a failure of the transport (not an HTTP answer) to the error registry. */
export function transportError(err: unknown, what: string, unreachable: 'FERRY_E_AGENT_UNREACHABLE' | 'FERRY_E_SERVER_UNREACHABLE'): FerryError {
  if (err instanceof FerryError) return err;
  const codes = codesOf(err);
  const msg = err instanceof Error ? err.message : String(err);
  const tls = codes.find((c) => TLS_CODES.has(c));
  if (tls !== undefined) {
    return new FerryError('FERRY_E_TLS', `TLS with ${what} failed (${tls}): ${msg}`, { cause: err });
  }
  const code = codes.find((c) => !c.startsWith('UND_ERR_')) ?? codes[0];
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return new FerryError(unreachable, `${what} did not answer in time.`, { cause: err });
  }
  return new FerryError(unreachable, `${what} did not answer (${code ?? msg}).`, { cause: err });
}

