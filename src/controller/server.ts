/**
 * `ferry server` as a function: opens (or creates) the data dir, issues this start's HTTPS certificate
 * for every address it listens on, serves the API, and closes everything gracefully. Used by the CLI
 * command and, in-process, by tests and the lab.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { networkInterfaces } from 'node:os';
import { isIP, type AddressInfo } from 'node:net';
import { FerryError } from '../common/errors.ts';
import { buildApp } from './api/app.ts';
import { DEFAULT_LISTEN, type App } from './api/types.ts';
import { ADMIN_TOKEN_FILE, createController, type Controller } from './controller.ts';
import type { VmNetwork } from './networks.ts';
import type { Log } from '../common/log.ts';

export { ADMIN_TOKEN_FILE, DEFAULT_LISTEN };

export interface StartServerOptions {
  dataDir: string;
  /** `HOST:PORT`; port 0 picks a free one. */
  listen?: string;
  vmNetworks?: VmNetwork[];
  heartbeatMs?: number;
  log?: Log;
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
  const ctl = await createController({
    dataDir: opts.dataDir,
    ...(opts.vmNetworks ? { vmNetworks: opts.vmNetworks } : {}),
    ...(opts.heartbeatMs === undefined ? {} : { heartbeatMs: opts.heartbeatMs }),
    ...(opts.log ? { log: opts.log } : {}),
  });
  let app: App | undefined;
  try {
    // A fresh server certificate each start: the addresses may have changed. Clients pin the CA and require
    // the server role that only issueServerCert sets (src/common/identity.ts), so a new key each start is fine.
    const leaf = await ctl.ca.issueServerCert(serverAddresses(host));
    app = await buildApp(ctl, { tls: { certPem: `${leaf.certPem.trim()}\n${ctl.ca.caCertPem.trim()}\n`, keyPem: leaf.keyPem } });
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
  const running: RunningServer = {
    url: `https://${shown}:${addr.port}`,
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
