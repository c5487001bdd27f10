/**
 * The agent's HTTPS API (protocol.ts, under /agent/v1), served with mutual TLS. Three gates, in order:
 * the TLS handshake (a client certificate from the cluster CA, or no connection at all), the client
 * certificate's public key (only the controller's, pinned at join, may drive an agent: every host's
 * certificate is from the same CA, and a CN is just a string someone may have got signed), and the
 * protocol version header. Errors leave as `{error:{code,message,details}}` with the registry's HTTP status.
 */
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { FerryError, toFerryError } from '../common/errors.ts';
import { spkiPin } from '../common/identity.ts';
import { AGENT_PROTOCOL, PROTOCOL_HEADER } from '../common/protocol.ts';
import { parseVmSpec } from '../common/spec.ts';
import { validateName } from '../common/units.ts';
import { loadIdentity, type AgentIdentity, type Log } from './identity.ts';
import { AgentHost, type AgentHostOptions, type CreateVmOptions, type VmHost } from './host.ts';
import type { Readiness } from './vm.ts';
import { withMigrationRoutes } from './migration/routes.ts';

/** How much of a serial log the console route returns. */
export const CONSOLE_TAIL_BYTES = 64 * 1024;

export interface AgentServerOptions {
  host: VmHost;
  tls: AgentIdentity;
  listen: { host: string; port: number };
  log?: Log;
  /** Called with the app after the agent's own routes, before listening. */
  extend?: (app: FastifyInstance) => void | Promise<void>;
}

export interface RunningAgent {
  url: string;
  port: number;
  host: VmHost;
  /** Stops serving and detaches from the VMs; the VMs keep running. */
  close(): Promise<void>;
}

/** The verified client certificate's key pin and CN (for messages), or undefined without one. */
function peerIdentity(req: FastifyRequest): { pin: string; cn: unknown } | undefined {
  const sock = req.raw.socket as TLSSocket;
  if (typeof sock.getPeerCertificate !== 'function' || !sock.authorized) return undefined;
  const peer = sock.getPeerCertificate();
  if (peer.raw === undefined) return undefined;
  return { pin: spkiPin(new X509Certificate(peer.raw)), cn: peer.subject?.CN };
}

function sendError(reply: FastifyReply, err: FerryError, status = err.status): FastifyReply {
  return reply.status(status).type('application/json').send({ error: err.toJSON() });
}

/** Maps what fastify itself throws (bad JSON, body too large, validation) onto registry codes. */
function toAgentError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  const fe = err as Partial<FastifyError>;
  if (
    fe.validation !== undefined ||
    (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500)
  ) {
    return new FerryError('FERRY_E_BAD_INPUT', fe.message ?? 'Bad request.', { cause: err });
  }
  return toFerryError(err);
}

function objectBody(req: FastifyRequest): Record<string, unknown> {
  const b = req.body;
  if (b === undefined || b === null || b === '') return {};
  if (typeof b !== 'object' || Array.isArray(b))
    throw new FerryError('FERRY_E_BAD_INPUT', 'The request body must be a JSON object.');
  return b as Record<string, unknown>;
}

function nameParam(req: FastifyRequest): string {
  return validateName((req.params as { name?: unknown }).name, 'VM name');
}

// --- readiness on create (issue #9): optional body fields next to `spec`; absent = `require` as before ---
const READINESS = ['require', 'wait', 'skip'] as const;
function createOptions(body: Record<string, unknown>): CreateVmOptions {
  const { readiness, readyTimeoutMs } = body;
  if (readiness !== undefined && !READINESS.includes(readiness as (typeof READINESS)[number])) {
    throw new FerryError('FERRY_E_BAD_INPUT', `readiness must be one of ${READINESS.join(', ')}.`);
  }
  if (readyTimeoutMs !== undefined && (typeof readyTimeoutMs !== 'number' || !Number.isInteger(readyTimeoutMs) || readyTimeoutMs < 1 || readyTimeoutMs > 3_600_000)) {
    throw new FerryError('FERRY_E_BAD_INPUT', 'readyTimeoutMs must be a whole number of milliseconds, 1 to 3600000.');
  }
  return {
    ...(readiness === undefined ? {} : { readiness: readiness as Readiness }),
    ...(readyTimeoutMs === undefined ? {} : { readyTimeoutMs }),
  };
}

/** Builds the fastify app (not listening); exported for tests that want `inject`. */
export function buildAgentApp(opts: Omit<AgentServerOptions, 'listen'>): FastifyInstance {
  const { host } = opts;
  const app = Fastify({
    logger: false,
    https: {
      key: opts.tls.keyPem,
      cert: opts.tls.certPem,
      ca: opts.tls.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
  }) as unknown as FastifyInstance; // fastify's https overload types the server as Http2/Https; routes are the same

  // An empty body with a JSON content type (POST /vms/x/start from some clients) is not an error.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8');
    if (text.trim() === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text) as unknown);
    } catch (err) {
      done(
        new FerryError('FERRY_E_BAD_INPUT', `The request body is not JSON: ${(err as Error).message}`, {
          cause: err,
        }),
        undefined,
      );
    }
  });

  // Pinned at join (identity.ts); a pin per connection would do, but hashing a key per request is cheap.
  const controllerPin = opts.tls.controllerPin;
  app.addHook('onRequest', async (req, reply) => {
    const peer = peerIdentity(req);
    if (peer === undefined || peer.pin !== controllerPin) {
      return sendError(
        reply,
        new FerryError(
          'FERRY_E_FORBIDDEN',
          `The client certificate (CN ${JSON.stringify(peer?.cn ?? null)}) may not drive this agent: only the controller it joined, whose key is pinned (${controllerPin}).`,
        ),
      );
    }
    const raw = req.headers[PROTOCOL_HEADER];
    if (raw !== String(AGENT_PROTOCOL)) {
      // 400 here, as protocol.ts promises: the request is what is wrong. The registry's 502 is the
      // controller's view of the same mismatch (a bad gateway).
      return sendError(
        reply,
        new FerryError(
          'FERRY_E_AGENT_PROTOCOL',
          `This agent speaks protocol ${AGENT_PROTOCOL}; the request has ${PROTOCOL_HEADER}: ${JSON.stringify(raw ?? null)}. Upgrade the older of the two.`,
          { details: { agentProtocol: AGENT_PROTOCOL, requestProtocol: raw ?? null } },
        ),
        400,
      );
    }
    return undefined;
  });

  app.setErrorHandler((err, _req, reply) => {
    const fe = toAgentError(err);
    if (fe.code === 'FERRY_E_INTERNAL') opts.log?.(`internal error: ${String((err as Error).stack ?? err)}`);
    return sendError(reply, fe);
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, new FerryError('FERRY_E_NOT_FOUND', `No route ${req.method} ${req.url.split('?')[0]}.`)),
  );

  const base = '/agent/v1';
  app.get(`${base}/inventory`, () => host.inventory());
  app.get(`${base}/vms`, () => host.list());
  app.post(`${base}/vms`, async (req, reply) => {
    const body = objectBody(req);
    const status = await host.create(parseVmSpec(body.spec), createOptions(body));
    return reply.status(201).send(status);
  });
  app.get(`${base}/vms/:name`, (req) => host.get(nameParam(req)));
  app.post(`${base}/vms/:name/stop`, (req) => {
    const body = objectBody(req);
    const timeoutMs = body.timeoutMs;
    if (
      timeoutMs !== undefined &&
      (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs < 0)
    ) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'timeoutMs must be a number of milliseconds ≥ 0.');
    }
    if (body.force !== undefined && typeof body.force !== 'boolean')
      throw new FerryError('FERRY_E_BAD_INPUT', 'force must be a boolean.');
    return host.stop(nameParam(req), {
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      ...(body.force === undefined ? {} : { force: body.force }),
    });
  });
  app.post(`${base}/vms/:name/start`, (req) => host.start(nameParam(req)));
  app.post(`${base}/vms/:name/pause`, (req) => host.pause(nameParam(req)));
  app.post(`${base}/vms/:name/resume`, (req) => host.resume(nameParam(req)));
  app.delete(`${base}/vms/:name`, async (req) => {
    await host.destroy(nameParam(req));
    return { deleted: true };
  });
  app.post(`${base}/vms/:name/guest`, (req) => {
    const { command } = objectBody(req);
    if (
      typeof command !== 'string' ||
      command.trim() === '' ||
      command.includes('\n') ||
      command.length > 4096
    ) {
      throw new FerryError(
        'FERRY_E_BAD_INPUT',
        'command must be one non-empty line of at most 4096 characters.',
      );
    }
    return host.guest(nameParam(req), command);
  });
  app.get(`${base}/vms/:name/console`, async (req, reply) => {
    const text = await host.console(nameParam(req), CONSOLE_TAIL_BYTES);
    return reply.type('text/plain; charset=utf-8').send(text);
  });
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
}

export interface StartAgentOptions extends AgentHostOptions {
  listen: { host: string; port: number };
  /** Certificates; read from the data dir (ca.pem, cert.pem, key.pem) when absent. */
  tls?: AgentIdentity;
  /** Mounts more routes (e.g. /agent/v1/migrations/…) before listening; mTLS, CN and protocol checks apply. */
  extend?: (ctx: AgentExtensionContext) => void | Promise<void>;
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
  const extend = withMigrationRoutes(opts.extend); // /agent/v1/migrations/… (src/agent/migrations.ts)
  try {
    const running = await startAgentServer({
      host,
      tls,
      listen: opts.listen,
      ...(opts.log === undefined ? {} : { log: opts.log }),
      ...(extend === undefined ? {} : { extend: (app: FastifyInstance) => extend({ app, host, tls }) }),
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
