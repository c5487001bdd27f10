/**
 * The agent's HTTPS API: the host's routes of the table (src/common/agent-routes.ts) — inventory, version,
 * VMs, guest commands, console — served with mutual TLS behind the gates of http.ts (the client certificate
 * from the cluster CA, the controller's pinned key, the protocol version range); the migration routes
 * (migration/routes.ts) are mounted beside them. Params and bodies are validated against the table's
 * schemas before a handler runs; errors leave as `{error:{code,message,details}}` with the registry's status.
 */
import type { FastifyInstance } from 'fastify';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { PROTOCOL_RANGE } from '../common/agent-routes.ts';
import type { AgentCertificate } from '../common/protocol.ts';
import { FerryError } from '../common/errors.ts';
import { parseVmSpec } from '../common/spec.ts';
import { validateName } from '../common/units.ts';
import type { Log } from '../common/log.ts';
import { loadIdentity, type AgentIdentity } from './identity.ts';
import { certificateView } from './renewal.ts';
import { createAgentMetrics, type AgentMetrics } from './metrics.ts';
import { AgentHost, type AgentHostOptions, type VmHost } from './host.ts';
import { agentFastify, mountAgentRoutes, type AgentHandlers, type HostRouteName } from './http.ts';
import { readAgentVersion } from './inventory.ts';
import { TermFence } from './term.ts';
import { withMigrationRoutes } from './migration/routes.ts';

/** How much of a serial log the console route returns. */
export const CONSOLE_TAIL_BYTES = 64 * 1024;

export interface AgentServerOptions {
  host: VmHost;
  tls: AgentIdentity;
  listen: { host: string; port: number };
  log?: Log;
  /** The newest leader term seen (term.ts); `ferry agent` keeps it in its data dir. */
  fence?: TermFence;
  /** The agent's metrics (GET /metrics); default: a registry of its own over `host`. */
  metrics?: AgentMetrics;
  /** Called with the app after the agent's own routes, before listening. */
  extend?: (app: FastifyInstance) => void | Promise<void>;
  /** The versions served: this Ferry's, or an older one's for a rolling-upgrade test (`ferry agent --protocol`). */
  protocol?: { current: number; min: number };
  /** The certificate's validity and renewal (GET /certificate); default: read from `tls`, renewal unknown. */
  certificate?: () => AgentCertificate;
}

export interface RunningAgent {
  url: string;
  port: number;
  host: VmHost;
  /**
   * Serves new connections with the identity's current pair (after a renewal replaced it in place);
   * connections already open keep the pair they were opened with.
   */
  reloadCertificate(): void;
  /** Stops serving and detaches from the VMs; the VMs keep running. */
  close(): Promise<void>;
}

/** The host's routes, one handler per route of the table that is not a migration's. */
export function hostHandlers(
  host: VmHost,
  metrics: AgentMetrics = createAgentMetrics(() => host.list()),
  served: { protocol?: { current: number; min: number }; certificate?: () => AgentCertificate } = {},
): Pick<AgentHandlers, HostRouteName> {
  const range = served.protocol ?? PROTOCOL_RANGE;
  const vm = (p: { name: string }): string => validateName(p.name, 'VM name');
  return {
    version: () => ({ agentVersion: readAgentVersion(), protocol: { ...range } }),
    certificate: () => {
      if (served.certificate === undefined) throw new FerryError('FERRY_E_NOT_FOUND', 'This agent reports no certificate.');
      return served.certificate();
    },
    // The inventory's protocol is the version this agent speaks, played or real.
    inventory: async () => ({ ...(await host.inventory()), protocol: range.current }),
    listVms: () => host.list(),
    createVm: ({ body }) =>
      host.create(parseVmSpec(body.spec), {
        ...(body.readiness === undefined ? {} : { readiness: body.readiness }),
        ...(body.readyTimeoutMs === undefined ? {} : { readyTimeoutMs: body.readyTimeoutMs }),
      }),
    getVm: ({ params }) => host.get(vm(params)),
    stopVm: ({ params, body }) =>
      host.stop(vm(params), {
        ...(body.timeoutMs === undefined ? {} : { timeoutMs: body.timeoutMs }),
        ...(body.force === undefined ? {} : { force: body.force }),
      }),
    startVm: ({ params }) => host.start(vm(params)),
    pauseVm: ({ params }) => host.pause(vm(params)),
    resumeVm: ({ params }) => host.resume(vm(params)),
    deleteVm: async ({ params }) => {
      await host.destroy(vm(params));
      return { deleted: true };
    },
    guest: ({ params, body }) => host.guest(vm(params), body.command),
    console: ({ params }) => host.console(vm(params), CONSOLE_TAIL_BYTES),
    sharedDisks: ({ params }) => host.sharedDisks(vm(params)),
    dirtyRate: ({ params }) => host.dirtyRate(vm(params)),
    listImages: () => host.listImages(),
    putImage: ({ params, body }) => {
      if (!(body instanceof Readable))
        throw new FerryError('FERRY_E_BAD_INPUT', 'Send the image as application/octet-stream.');
      return host.receiveImage(params.sha256, body);
    },
    metrics: () => metrics.registry.metrics(),
  };
}

/** Builds the fastify app with the host's routes (not listening); exported for tests that want `inject`. */
export function buildAgentApp(opts: Omit<AgentServerOptions, 'listen'>): FastifyInstance {
  const app = agentFastify({
    tls: opts.tls,
    ...(opts.fence === undefined ? {} : { fence: opts.fence }),
    ...(opts.log === undefined ? {} : { log: opts.log }),
    ...(opts.protocol === undefined ? {} : { protocol: opts.protocol }),
  });
  const certificate = opts.certificate ?? ((): AgentCertificate => certificateView(opts.tls.certPem));
  mountAgentRoutes(app, hostHandlers(opts.host, opts.metrics, { certificate, ...(opts.protocol === undefined ? {} : { protocol: opts.protocol }) }));
  return app;
}

export async function startAgentServer(opts: AgentServerOptions): Promise<RunningAgent> {
  const app = buildAgentApp(opts);
  await opts.extend?.(app);
  await app.listen({ host: opts.listen.host, port: opts.listen.port });
  const addr = app.server.address() as AddressInfo;
  const hostPart = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `https://${hostPart}:${addr.port}`,
    port: addr.port,
    host: opts.host,
    reloadCertificate: () => {
      // The same context options as agentFastify's; requestCert and rejectUnauthorized are the server's own.
      (app.server as HttpsServer).setSecureContext({ key: opts.tls.keyPem, cert: opts.tls.certPem, ca: opts.tls.caPem, minVersion: 'TLSv1.2' });
    },
    close: async () => {
      // Stop accepting, then let in-flight requests end; the controller retries what was cut.
      await app.close();
      await opts.host.close();
    },
  };
}

/** What another route set of the agent (migrations) gets to mount its routes behind the same gates. */
export interface AgentExtensionContext {
  app: FastifyInstance;
  host: AgentHost;
  /** The agent's cluster identity (the migration stream's TLS uses it too). */
  tls: AgentIdentity;
  log?: Log;
  metrics: AgentMetrics;
}

export interface StartAgentOptions extends AgentHostOptions {
  listen: { host: string; port: number };
  /** Certificates; read from the data dir (ca.pem, cert.pem, key.pem) when absent. */
  tls?: AgentIdentity;
  /** Mounts more routes (e.g. /agent/v1/migrations/…) before listening; mTLS, CN and protocol checks apply. */
  extend?: (ctx: AgentExtensionContext) => void | Promise<void>;
  protocol?: { current: number; min: number };
  certificate?: () => AgentCertificate;
}

/** Opens the host (re-attaching its VMs) and serves it: what `ferry agent` and in-process tests run. */
export async function startAgent(opts: StartAgentOptions): Promise<RunningAgent & { host: AgentHost }> {
  const tls = opts.tls ?? (await loadIdentity(opts.dataDir));
  if (tls === undefined) {
    throw new FerryError(
      'FERRY_E_CONFIG',
      `No certificates in ${opts.dataDir}: join the cluster first (ferry agent --server … --join-token …).`,
    );
  }
  const host = await AgentHost.open(opts);
  const metrics = createAgentMetrics(() => host.list());
  const extend = withMigrationRoutes(opts.extend); // /agent/v1/migrations/… (src/agent/migrations.ts)
  try {
    const running = await startAgentServer({
      host,
      tls,
      listen: opts.listen,
      metrics,
      fence: new TermFence(opts.dataDir),
      ...(opts.log === undefined ? {} : { log: opts.log }),
      ...(opts.protocol === undefined ? {} : { protocol: opts.protocol }),
      ...(opts.certificate === undefined ? {} : { certificate: opts.certificate }),
      ...(extend === undefined ? {} : { extend: (app: FastifyInstance) => extend({ app, host, tls, metrics, ...(opts.log === undefined ? {} : { log: opts.log }) }) }),
    });
    return { ...running, host };
  } catch (err) {
    await host.close();
    if (err instanceof FerryError) throw err;
    throw new FerryError(
      'FERRY_E_CONFIG',
      `Cannot listen on ${opts.listen.host}:${opts.listen.port}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}
