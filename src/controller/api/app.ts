/**
 * The REST API as a fastify instance (HTTPS with the cluster CA's server certificate): bearer-token
 * auth, the error envelope `{error:{code,message,details?}}` for every failure, TypeBox schemas on every
 * route (validated, and published as OpenAPI at /api/v1/openapi.json), request metrics and one log line per
 * request (the controller's logger, with the request id that the answer's x-request-id carries). Routes live one
 * file per noun beside this one. `buildApp` does not listen, so tests use `inject()`.
 */
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { createSecureContext } from 'node:tls';
import type { Duplex } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyReply } from 'fastify';
import swagger from '@fastify/swagger';
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { FerryError, toFerryError, type ErrorCode } from '../../common/errors.ts';
import { NAME_RE } from '../../common/units.ts';
import type { Controller } from '../controller.ts';
import { checkApiToken } from '../tokens.ts';
import { API_VERSION, DEFAULT_LISTEN, type App } from './types.ts';
import { RESPONSE_SCHEMAS } from './responses.ts';
import { registerEventRoutes } from './events.ts';
import { registerHostRoutes } from './hosts.ts';
import { registerSystemRoutes } from './system.ts';
import { registerVmRoutes } from './vms.ts';
import { registerImageRoutes } from './images.ts';
import { registerMigrationRoutes } from './migrations.ts';
import { CONSOLE_FILES, registerConsoleRoutes } from './console.ts';
import { registerTokenRoutes } from './tokens.ts';


/** Largest request body the API reads (bytes); a larger one is refused with FERRY_E_BODY_TOO_LARGE (413). */
export const BODY_LIMIT = 4 * 1024 * 1024; // a cloud-init user-data of 1 MiB, JSON-escaped, fits

/**
 * Routes anyone may call: the health check, the join (it carries its own one-time token), an agent's
 * certificate renewal (signed by the key of its current certificate, src/controller/renewal.ts), and the web
 * console's static files (its sign-in page; all it shows comes from the API, with the token).
 */
const PUBLIC = new Set(['/api/v1/health', '/api/v1/join', '/api/v1/renew', ...CONSOLE_FILES]);

export interface BuildAppOptions {
  /** TLS certificate chain (server certificate, then the CA) and key. */
  tls: { certPem: string; keyPem: string };
  /**
   * With an operator's own certificate in `tls`: the cluster CA's server certificate, presented to clients
   * that ask for `clusterServername` by SNI (agents joining), so that agents keep the cluster CA.
   */
  cluster?: { certPem: string; keyPem: string; servername: string };
}

/** The HTTP statuses of fastify's and Node's own refusals that keep their status, each under its own code. */
const CLIENT_ERRORS: Partial<Record<number, ErrorCode>> = {
  408: 'FERRY_E_REQUEST_TIMEOUT',
  413: 'FERRY_E_BODY_TOO_LARGE',
  415: 'FERRY_E_MEDIA_TYPE',
  431: 'FERRY_E_HEADERS_TOO_LARGE',
};

/**
 * Requests Node's HTTP parser refuses (a broken request line, bad chunked encoding, headers too large)
 * never reach fastify's error handler: they are answered here, on the raw socket, in the same envelope.
 */
function clientErrorHandler(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
  const fe = new FerryError(CLIENT_ERRORS[status] ?? 'FERRY_E_BAD_INPUT', `The request is not valid HTTP (${err.code ?? err.message}).`, { cause: err });
  const body = JSON.stringify({ error: fe.toJSON() });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

function bearer(header: string | undefined): string | null {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m ? m[1]! : null;
}

/** The cluster certificate for its SNI name; the default (the operator's) for any other name or none. */
function sniCallback(cluster: NonNullable<BuildAppOptions['cluster']>): (name: string, cb: (err: Error | null, ctx?: ReturnType<typeof createSecureContext>) => void) => void {
  const ctx = createSecureContext({ cert: cluster.certPem, key: cluster.keyPem });
  return (name, cb) => cb(null, name === cluster.servername ? ctx : undefined);
}

export async function buildApp(ctl: Controller, opts: BuildAppOptions): Promise<App> {
  const app: App = Fastify({
    // Node would answer a request without Host itself, with an empty 400; the onRequest hook below
    // answers it in the envelope instead.
    https: {
      cert: opts.tls.certPem,
      key: opts.tls.keyPem,
      requireHostHeader: false,
      ...(opts.cluster === undefined ? {} : { SNICallback: sniCallback(opts.cluster) }),
    },
    // App's logger type is fastify's base one: the routes only call its level methods.
    loggerInstance: ctl.log as FastifyBaseLogger,
    // One line per request, written in onResponse below with its route pattern and duration.
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId: () => randomUUID(),
    // SSE streams are closed by our own onClose hook; other idle keep-alive sockets are closed here.
    forceCloseConnections: 'idle',
    bodyLimit: BODY_LIMIT,
    clientErrorHandler,
    // The router's own refusals (a path that is not valid percent-encoding) skip the error handler.
    frameworkErrors: (err, _req, reply) => {
      const fe = new FerryError('FERRY_E_BAD_INPUT', err.message, { cause: err, details: { fastifyCode: err.code } });
      // The reply's generic types are those of a route that does not exist yet; only plain JSON is sent.
      void (reply as unknown as FastifyReply).status(fe.status).type('application/json').send({ error: fe.toJSON() });
    },
  })
    .withTypeProvider<TypeBoxTypeProvider>()
    .setValidatorCompiler(TypeBoxValidatorCompiler);

  // Response schemas document the API and are checked against real answers by tests (responses.test.ts);
  // they do not serialize, so an answer is never cut down to its schema behind anyone's back.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  for (const schema of RESPONSE_SCHEMAS) app.addSchema(schema);

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Ferry API',
        version: API_VERSION,
        description:
          'Moves virtual machines between hosts, cold and live. Every failure answers the envelope `Error` with a stable FERRY_E_* code; ' +
          'any request may also be refused before it reaches a route (408 FERRY_E_REQUEST_TIMEOUT, 431 FERRY_E_HEADERS_TOO_LARGE), in the same envelope.',
        license: { name: 'Apache-2.0', url: 'https://www.apache.org/licenses/LICENSE-2.0' },
      },
      servers: [
        {
          url: 'https://{address}',
          description: 'A Ferry server (`ferry server --listen`), HTTPS with the cluster CA',
          variables: { address: { default: DEFAULT_LISTEN, description: 'HOST:PORT the server listens on' } },
        },
      ],
      tags: [
        { name: 'system', description: 'Health, metrics and this document' },
        { name: 'hosts', description: 'Hosts: their agents join, report, and are drained' },
        { name: 'vms', description: 'Virtual machines: create, control, reach the guest' },
        { name: 'images', description: "Disk images in the server's store" },
        { name: 'migrations', description: 'Live and cold migrations of VMs between hosts' },
        { name: 'events', description: 'What happens, as Server-Sent Events' },
        { name: 'tokens', description: 'API tokens and their roles (admin, read-only)' },
      ],
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'The token `ferry server` printed, or an API token' } } },
      security: [{ bearer: [] }],
    },
    // Shared schemas keep their own name (`$id`) under components.schemas.
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });

  app.addHook('onRequest', async (req, reply) => {
    void reply.header('x-request-id', req.id);
    if (req.raw.httpVersionMajor === 1 && req.raw.httpVersionMinor >= 1 && !req.headers.host) {
      throw new FerryError('FERRY_E_BAD_INPUT', 'HTTP/1.1 requests need a Host header.');
    }
    const path = req.url.split('?')[0]!;
    if (ctl.ha !== undefined && req.method !== 'GET' && req.method !== 'HEAD' && ctl.ha.lease.term() === undefined) {
      // A follower answers reads from the shared store; a write goes to the leader (docs/ha.md).
      const leader = await ctl.ha.lease.current();
      if (!leader.live || leader.url === '') {
        throw new FerryError('FERRY_E_NO_LEADER', 'No controller leads right now (an election takes a few seconds): retry.');
      }
      return reply.status(307).header('location', new URL(req.url, leader.url).toString()).send();
    }
    if (PUBLIC.has(path)) return;
    const token = bearer(req.headers.authorization);
    const role = token === null ? null : checkApiToken(ctl.store, token);
    if (role === null) {
      throw new FerryError('FERRY_E_UNAUTHORIZED', token === null ? 'Missing bearer token: pass --token or configure the CLI.' : 'Wrong or revoked token.');
    }
    // Reading is GET (and HEAD); everything else changes state, which a read-only token may not.
    if (role === 'read-only' && req.method !== 'GET' && req.method !== 'HEAD') {
      throw new FerryError('FERRY_E_READ_ONLY', `This token is read-only: ${req.method} ${path} changes state. Use an admin token.`);
    }
  });

  // An empty POST means "no options": validate it as `{}` so routes need no optional-body schemas.
  app.addHook('preValidation', async (req) => {
    if (req.method === 'POST' && req.body === undefined) req.body = {};
  });

  app.addHook('onResponse', async (req, reply) => {
    const labels = { method: req.method, route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) };
    ctl.metrics.apiRequests.inc(labels);
    ctl.metrics.apiLatency.observe(labels, reply.elapsedTime / 1000);
    // Reads that succeed (the CLI polls, Prometheus scrapes) only at debug: they would drown the changes.
    const level = reply.statusCode >= 500 ? 'error' : reply.statusCode >= 400 ? 'warn' : req.method === 'GET' ? 'debug' : 'info';
    const migration = labels.route.startsWith('/api/v1/migrations/:id') ? (req.params as { id?: unknown }).id : undefined;
    req.log[level]({ ...(typeof migration === 'string' ? { migration } : {}), method: req.method, route: labels.route, url: req.url.split('?')[0], status: reply.statusCode, durationMs: Math.round(reply.elapsedTime) }, 'request');
  });

  app.setErrorHandler((err: FastifyError | FerryError, req, reply) => {
    let fe: FerryError;
    if (err instanceof FerryError) fe = err;
    else if ((err as FastifyError).validation) {
      const validation = (err as FastifyError).validation!;
      // A name that breaks the name rule gets the code users see for it everywhere else (CLI, agent).
      const badName = validation.find((v) => v.keyword === 'pattern' && v.params.pattern === NAME_RE.source);
      fe = badName
        ? new FerryError(
            'FERRY_E_BAD_NAME',
            `Bad name in ${(err as FastifyError).validationContext ?? 'request'}${badName.instancePath}: names must match [a-z0-9][a-z0-9-]{0,62}.`,
            { details: { validation } },
          )
        : new FerryError('FERRY_E_BAD_INPUT', err.message, { details: { validation } });
    } else if (typeof (err as FastifyError).statusCode === 'number' && (err as FastifyError).statusCode! < 500) {
      // fastify's own 4xx (bad JSON, wrong content type, body too large): the client sent something wrong.
      const status = (err as FastifyError).statusCode!;
      fe = new FerryError(CLIENT_ERRORS[status] ?? 'FERRY_E_BAD_INPUT', err.message, { cause: err, details: { fastifyCode: (err as FastifyError).code } });
    } else {
      fe = toFerryError(err);
      req.log.error({ err }, `internal error: ${err.message}`);
    }
    void reply.status(fe.status).type('application/json').send({ error: fe.toJSON() });
  });

  app.setNotFoundHandler((req, reply) => {
    const fe = new FerryError('FERRY_E_NOT_FOUND', `No route ${req.method} ${req.url.split('?')[0]}.`);
    void reply.status(fe.status).send({ error: fe.toJSON() });
  });

  registerSystemRoutes(app, ctl);
  registerHostRoutes(app, ctl);
  registerVmRoutes(app, ctl);
  registerImageRoutes(app, ctl);
  registerMigrationRoutes(app, ctl);
  registerEventRoutes(app, ctl);
  registerConsoleRoutes(app);
  registerTokenRoutes(app, ctl);
  return app;
}
