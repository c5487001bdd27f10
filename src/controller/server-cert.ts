/**
 * An operator's own certificate for the public API (`ferry server --tls-cert FILE --tls-key FILE`): read
 * and checked once at start, before anything is created — readable PEM (FERRY_E_TLS_FILE), the key is the
 * certificate's (FERRY_E_TLS_KEY_MISMATCH), valid now (FERRY_E_TLS_CERT_EXPIRED), and a server-only
 * certificate (FERRY_E_TLS_CERT_USAGE: serverAuth, never clientAuth). The last rule is what lets the CLI
 * accept it on its name alone: every certificate of the cluster CA carries clientAuth, so a joined agent's
 * can never pass for such a server (src/common/identity.ts, checkApiServerIdentity).
 *
 * Agents keep the cluster CA: the server presents its cluster certificate to a client that asks for the
 * name CLUSTER_SNI by SNI, which an agent's join does; everyone else gets the operator's.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { FerryError } from '../common/errors.ts';
import { CLIENT_AUTH_OID, SERVER_AUTH_OID } from '../common/identity.ts';

export interface ServerCertFiles {
  certFile: string;
  keyFile: string;
}

export interface OwnServerCert {
  /** The chain as given, leaf first. */
  certPem: string;
  keyPem: string;
  subject: string;
  /** When it expires (ISO 8601), for the start-up log. */
  notAfter: string;
}

function read(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new FerryError('FERRY_E_TLS_FILE', `Cannot read the ${what} ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
}

/** Reads and checks the operator's certificate and key; `now` for tests. */
export function loadOwnServerCert(files: ServerCertFiles, now = new Date()): OwnServerCert {
  const certPem = read(files.certFile, 'certificate (--tls-cert)');
  const keyPem = read(files.keyFile, 'key (--tls-key)');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new FerryError('FERRY_E_TLS_FILE', `${files.certFile} holds no PEM certificate: ${(err as Error).message}`, { cause: err, details: { file: files.certFile } });
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new FerryError('FERRY_E_TLS_FILE', `${files.keyFile} holds no PEM private key (or it is encrypted): ${(err as Error).message}`, { cause: err, details: { file: files.keyFile } });
  }
  if (!cert.checkPrivateKey(key)) {
    throw new FerryError('FERRY_E_TLS_KEY_MISMATCH', `${files.keyFile} is not the private key of the certificate in ${files.certFile} (${cert.subject.replace(/\n/g, ', ')}).`, { details: { cert: files.certFile, key: files.keyFile } });
  }
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from || now > to) {
    throw new FerryError('FERRY_E_TLS_CERT_EXPIRED', `The certificate in ${files.certFile} is valid from ${from.toISOString()} to ${to.toISOString()}, not now (${now.toISOString()}).`, {
      details: { file: files.certFile, validFrom: from.toISOString(), validTo: to.toISOString() },
    });
  }
  // X509Certificate.keyUsage lists the extended key usages (undefined without the extension).
  const ekus = cert.keyUsage;
  if (ekus === undefined || !ekus.includes(SERVER_AUTH_OID) || ekus.includes(CLIENT_AUTH_OID)) {
    throw new FerryError('FERRY_E_TLS_CERT_USAGE', `The certificate in ${files.certFile} must have the extended key usage serverAuth and not clientAuth (it has: ${ekus?.join(', ') ?? 'no extended key usage'}).`, {
      details: { file: files.certFile, extendedKeyUsage: ekus ?? null },
    });
  }
  return { certPem, keyPem, subject: cert.subject.replace(/\n/g, ', '), notAfter: to.toISOString() };
}
