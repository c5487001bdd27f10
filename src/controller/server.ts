/**
 * `ferry server` as a function: opens (or creates) the data dir, issues this start's HTTPS certificate
 * for every address it listens on, serves the API, and closes everything gracefully. Used by the CLI
 * command and, in-process, by tests and the lab.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { networkInterfaces } from 'node:os';
import { isIP, type AddressInfo } from 'node:net';
import { FerryError } from '../common/errors.ts';
import { CLUSTER_SNI } from '../common/identity.ts';
import { buildApp } from './api/app.ts';
import { DEFAULT_LISTEN, type App } from './api/types.ts';
import { ADMIN_TOKEN_FILE, createController, type Controller, type HaOptions } from './controller.ts';
import type { VmNetwork } from './networks.ts';
import type { Log } from '../common/log.ts';
import type { QueueLimits } from './migrations/queue.ts';
import { loadOwnServerCert, type ServerCertFiles } from './server-cert.ts';

export { ADMIN_TOKEN_FILE, DEFAULT_LISTEN };

export interface StartServerOptions {
  dataDir: string;
  /** `HOST:PORT`; port 0 picks a free one. */
  listen?: string;
  vmNetworks?: VmNetwork[];
  heartbeatMs?: number;
  /** Lifetime of agent certificates (`--agent-cert-days`). */
  agentCertMs?: number;
  log?: Log;
  limits?: QueueLimits;
  /** `--store`: a SQLite file (PATH or sqlite:PATH); default the data dir's. */
  store?: string;
  /** Shares the store with other controllers, one leading (docs/ha.md). */
  ha?: HaOptions;
  /** More names for the HTTPS certificate (`--san`): DNS names clients use beside the addresses. */
  sans?: string[];
  /** An operator's certificate for the public API (`--tls-cert/--tls-key`), instead of the cluster CA's. */
  ownCert?: ServerCertFiles;
}

export interface RunningServer {
  /** `https://HOST:PORT` (for 0.0.0.0: https://127.0.0.1:PORT). */
  url: string;
  /** SHA-256 fingerprint of the CA certificate, `AB:CD:…`. */
  caFingerprint: string;
  /** `sha256:<hex>` of the CA certificate's DER, the form `ferry agent --ca-hash` takes. */
  caHash: string;
  caCertPem: string;
  /** Only on the first start over this data dir; also written once to `<data>/admin-token`. */
  adminToken: string | null;
  controller: Controller;
  app: App;
  close(): Promise<void>;
}

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(text.trim());
  const host = m ? (m[1] ?? m[2]!) : '';
  const port = m ? Number(m[3]) : -1;
  if (!m || port > 65535 || (isIP(host) === 0 && host !== 'localhost')) {
    throw new FerryError('FERRY_E_USAGE', `Bad --listen ${JSON.stringify(text)}: use ADDRESS:PORT, e.g. 127.0.0.1:7440 or 0.0.0.0:7440.`);
  }
  return { host, port };
}

/** Addresses clients may use to reach a server listening on `host` (the certificate's SANs). */
export function serverAddresses(host: string): string[] {
  const out = new Set<string>(['127.0.0.1', 'localhost', '::1']);
  if (host === '0.0.0.0' || host === '::') {
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address.split('%')[0]!);
  } else out.add(host);
  return [...out];
}

export async function startServer(opts: StartServerOptions): Promise<RunningServer> {
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  // Checked before anything is created: a bad certificate is the operator's mistake (exit 2).
  const own = opts.ownCert === undefined ? undefined : loadOwnServerCert(opts.ownCert);
  const ctl = await createController({
    dataDir: opts.dataDir,
    ...(opts.vmNetworks ? { vmNetworks: opts.vmNetworks } : {}),
    ...(opts.heartbeatMs === undefined ? {} : { heartbeatMs: opts.heartbeatMs }),
    ...(opts.agentCertMs === undefined ? {} : { agentCertMs: opts.agentCertMs }),
    ...(opts.limits === undefined ? {} : { limits: opts.limits }),
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.store === undefined ? {} : { store: opts.store }),
    ...(opts.ha === undefined ? {} : { ha: opts.ha }),
  });
  let app: App | undefined;
  try {
    // A fresh server certificate each start: the addresses may have changed. Clients pin the CA and require
    // the server role that only issueServerCert sets (src/common/identity.ts), so a new key each start is fine.
    const leaf = await ctl.ca.issueServerCert([...serverAddresses(host), ...(opts.sans ?? [])]);
    const cluster = { certPem: `${leaf.certPem.trim()}\n${ctl.ca.caCertPem.trim()}\n`, keyPem: leaf.keyPem };
    app = await buildApp(
      ctl,
      own === undefined ? { tls: cluster } : { tls: { certPem: own.certPem, keyPem: own.keyPem }, cluster: { ...cluster, servername: CLUSTER_SNI } },
    );
    if (own !== undefined) ctl.log.info({ subject: own.subject, notAfter: own.notAfter }, 'serving the public API with the operator\'s certificate (--tls-cert); agents keep the cluster CA');
    await app.listen({ host, port });
  } catch (err) {
    await app?.close().catch(() => undefined);
    await ctl.close();
    throw err;
  }
  const addr = app.server.address() as AddressInfo;
  const shown = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : isIP(host) === 6 ? `[${host}]` : host;
  const caHash = `sha256:${createHash('sha256').update(new X509Certificate(ctl.ca.caCertPem).raw).digest('hex')}`;
  let closing: Promise<void> | undefined;
  const url = `https://${shown}:${addr.port}`;
  ctl.ha?.start(url);
  const running: RunningServer = {
    url,
    caFingerprint: ctl.ca.fingerprint,
    caHash,
    caCertPem: ctl.ca.caCertPem,
    adminToken: ctl.newAdminToken,
    controller: ctl,
    app,
    close: () =>
      (closing ??= (async () => {
        await app.close();
        await ctl.close();
      })()),
  };
  return running;
}
