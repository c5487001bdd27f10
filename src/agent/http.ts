/**
 * The agent's HTTP layer, made from the route table (src/common/agent-routes.ts): the fastify app with its
 * gates and its error envelope (`agentFastify`), and `mountAgentRoutes`, which turns a map of handlers —
 * one per route name, typed by the table — into fastify routes whose params, bodies and headers are
 * validated against the table's schemas before a handler runs. The real agent (server.ts,
 * migration/routes.ts) and the fake agent of the unit tests (src/testing/fake-agent.ts) both serve through
 * it, so both refuse what the table refuses, the same way.
 *
 * Three gates, in order: the TLS handshake (a client certificate from the cluster CA, or no connection at
 * all), the client certificate's public key (only the controller's, pinned at join, may drive an agent:
 * every host's certificate is from the same CA, and a CN is just a string someone may have got signed), and
 * the protocol version (the agent's current and previous one; a route newer than the request's version is
 * refused too). Every answer carries the agent's version. An app serves only the routes of the version it
 * speaks (the table's `since`): an agent playing an older version has no newer route at all.
 */
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox';
import { randomUUID, X509Certificate } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import {
  AGENT_ROUTES,
  PROTOCOL_RANGE,
  SHA256_HEADER,
  TERM_HEADER,
  describeRange,
  parseProtocol,
  protocolAccepted,
  routeIn,
  routePath,
  type BodyOf,
  type HeadersOf,
  type ParamsOf,
  type ResponseOf,
  type RouteName,
  type RouteSpec,
  type StreamOf,
} from '../common/agent-routes.ts';
import { FerryError, toFerryError } from '../common/errors.ts';
import { spkiPin } from '../common/identity.ts';
import { PROTOCOL_HEADER } from '../common/protocol.ts';
import { NAME_RE } from '../common/units.ts';
import type { AgentIdentity } from './identity.ts';
import type { TermFence } from './term.ts';
import type { Log } from '../common/log.ts';

/** What a download handler hands over: the bytes and what the headers say about them. */
export interface Download {
  stream: Readable;
  sha256: string;
  bytes: number;
}

export interface HandlerInput<N extends RouteName> {
  params: ParamsOf<N>;
  /** Validated against the route's body schema; an upload's body is the request stream. */
  body: StreamOf<N> extends 'upload' ? Readable : BodyOf<N>;
  headers: HeadersOf<N>;
  req: FastifyRequest;
  /** Its status is the table's already; a handler may change it (an idempotent replay answers 200). */
  reply: FastifyReply;
}

/** A download answers a Download; an event stream writes to the reply itself and returns it. */
export type HandlerResult<N extends RouteName> =
  StreamOf<N> extends 'download' ? Download : StreamOf<N> extends 'events' ? FastifyReply : ResponseOf<N>;

export type Handler<N extends RouteName> = (
  input: HandlerInput<N>,
) => HandlerResult<N> | Promise<HandlerResult<N>>;

export type AgentHandlers = { [N in RouteName]: Handler<N> };

/** The routes under /migrations (src/agent/migration/routes.ts) and the others (the host, server.ts). */
export type MigrationRouteName = {
  [N in RouteName]: (typeof AGENT_ROUTES)[N]['path'] extends `/migrations/${string}` ? N : never;
}[RouteName];
export type HostRouteName = Exclude<RouteName, MigrationRouteName>;

export function sendError(reply: FastifyReply, err: FerryError, status = err.status): FastifyReply {
  return reply.status(status).type('application/json').send({ error: err.toJSON() });
}

/** Maps what fastify itself throws (bad JSON, body too large, schema validation) onto registry codes. */
export function toAgentError(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  const fe = err as Partial<FastifyError>;
  if (fe.validation !== undefined) {
    const v = fe.validation;
    // A bad VM spec gets its own code, as parseVmSpec gives it; a name that breaks the name rule the code users
    // see for it everywhere else.
    if (
      fe.validationContext === 'body' &&
      v.some((e) => e.instancePath === '/spec' || e.instancePath.startsWith('/spec/'))
    ) {
      return new FerryError('FERRY_E_BAD_SPEC', `Bad VM spec: ${fe.message ?? ''}`, {
        cause: err,
        details: { validation: v },
      });
    }
    if (
      v.some((e) => e.keyword === 'pattern' && (e.params as { pattern?: unknown }).pattern === NAME_RE.source)
    ) {
      return new FerryError(
        'FERRY_E_BAD_NAME',
        `${fe.message ?? 'Bad name'}: names must match [a-z0-9][a-z0-9-]{0,62}.`,
        { cause: err, details: { validation: v } },
      );
    }
    return new FerryError('FERRY_E_BAD_INPUT', fe.message ?? 'Bad request.', {
      cause: err,
      details: { validation: v },
    });
  }
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new FerryError('FERRY_E_BAD_INPUT', fe.message ?? 'Bad request.', { cause: err });
  }
  return toFerryError(err);
}

/** The verified client certificate's key pin and CN (for messages), or undefined without one. */
function peerIdentity(req: FastifyRequest): { pin: string; cn: unknown } | undefined {
  const sock = req.raw.socket as TLSSocket;
  if (typeof sock.getPeerCertificate !== 'function' || !sock.authorized) return undefined;
  const peer = sock.getPeerCertificate();
  if (peer.raw === undefined) return undefined;
  return { pin: spkiPin(new X509Certificate(peer.raw)), cn: peer.subject?.CN };
}

export interface AgentFastifyOptions {
  tls: AgentIdentity;
  log?: Log;
  /** The versions served; this Ferry's (PROTOCOL_RANGE) unless a test plays an agent of another version. */
  protocol?: { current: number; min: number };
  /** Refuses orders of deposed leaders (term.ts); without it every term is taken. */
  fence?: TermFence;
}

/** The range each gated app serves, so that mountAgentRoutes leaves out the routes of newer versions. */
const SERVED = new WeakMap<FastifyInstance, { current: number; min: number }>();

/** Each route's full path and method → the version that added it, for the request gate. */
const SINCE = new Map<string, number>(
  (Object.keys(AGENT_ROUTES) as RouteName[]).flatMap((n) => {
    const since = (AGENT_ROUTES[n] as RouteSpec).since;
    return since === undefined ? [] : [[`${AGENT_ROUTES[n].method} ${routePath(n)}`, since] as [string, number]];
  }),
);

/** The agent's fastify app, gated and with the error envelope, but no routes yet (not listening). */
export function agentFastify(opts: AgentFastifyOptions): FastifyInstance {
  const app = Fastify({
    // Request lines are written by agentBasics' onResponse hook, with their route and duration.
    ...(opts.log === undefined ? { logger: false } : { loggerInstance: opts.log as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) }),
    genReqId: () => randomUUID(),
    https: {
      key: opts.tls.keyPem,
      cert: opts.tls.certPem,
      ca: opts.tls.caPem,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    },
  }) as unknown as FastifyInstance; // fastify's https overload types the server as Http2/Https; routes are the same
  const range = opts.protocol ?? PROTOCOL_RANGE;
  SERVED.set(app, range);
  addAgentGates(app, opts.tls.controllerPin, range, opts.fence);
  return agentBasics(app, opts.log);
}

/**
 * What every agent app has besides its gates: the table's validation, the body parsers, the error envelope
 * for every failure. Tests of route sets use it on a plain app with `inject`.
 */
export function agentBasics(app: FastifyInstance, log?: Log): FastifyInstance {
  app.setValidatorCompiler(TypeBoxValidatorCompiler);

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
  // Uploads stay a stream: disks are far larger than any JSON limit and are hashed as they arrive.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  // A route with a body schema validates an absent body as `{}`: "no options".
  app.addHook('preValidation', async (req) => {
    if (req.body === undefined && req.routeOptions.schema?.body !== undefined) req.body = {};
  });

  if (log !== undefined) {
    app.addHook('onResponse', async (req, reply) => {
      // The controller polls progress and heartbeats: successful reads only at debug.
      const level = reply.statusCode >= 500 ? 'error' : reply.statusCode >= 400 ? 'warn' : req.method === 'GET' ? 'debug' : 'info';
      // A migration's routes carry its id as :id: the line is then about that migration.
      const migration = (req.params as { id?: unknown } | undefined)?.id;
      req.log[level]({ ...(typeof migration === 'string' ? { migration } : {}), method: req.method, route: req.routeOptions.url ?? 'unknown', url: req.url.split('?')[0], status: reply.statusCode, durationMs: Math.round(reply.elapsedTime) }, 'request');
    });
  }

  app.setErrorHandler((err, _req, reply) => {
    const fe = toAgentError(err);
    if (fe.code === 'FERRY_E_INTERNAL') log?.error({ err }, `internal error: ${(err as Error).message ?? String(err)}`);
    return sendError(reply, fe);
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, new FerryError('FERRY_E_NOT_FOUND', `No route ${req.method} ${req.url.split('?')[0]}.`)),
  );
  return app;
}

/**
 * The caller's key, protocol version and leader term, checked before any route; every answer carries the
 * agent's version.
 */
function addAgentGates(
  app: FastifyInstance,
  controllerPin: string,
  range: { current: number; min: number },
  fence: TermFence | undefined,
): void {
  // Pinned at join (identity.ts); a pin per connection would do, but hashing a key per request is cheap.
  app.addHook('onRequest', async (req, reply) => {
    void reply.header(PROTOCOL_HEADER, String(range.current));
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
    const version = parseProtocol(raw);
    if (!protocolAccepted(version, range)) {
      // 400 here: the request is what is wrong. The registry's 502 is the controller's view of the same
      // mismatch (a bad gateway).
      return sendError(
        reply,
        new FerryError(
          'FERRY_E_AGENT_PROTOCOL',
          `This agent speaks ${describeRange(range)}; the request has ${PROTOCOL_HEADER}: ${JSON.stringify(raw ?? null)}. Upgrade the older of the two.`,
          {
            details: {
              agentProtocol: range.current,
              agentMinProtocol: range.min,
              requestProtocol: raw ?? null,
            },
          },
        ),
        400,
      );
    }
    const since = SINCE.get(`${req.method} ${req.routeOptions.url ?? ''}`);
    if (since !== undefined && version < since) {
      return sendError(
        reply,
        new FerryError(
          'FERRY_E_AGENT_PROTOCOL',
          `${req.method} ${req.routeOptions.url ?? ''} exists since protocol ${since}; the request has ${PROTOCOL_HEADER}: ${version}.`,
          { details: { agentProtocol: range.current, agentMinProtocol: range.min, requestProtocol: raw ?? null } },
        ),
        400,
      );
    }
    if (fence !== undefined) {
      try {
        await fence.admit(req.headers[TERM_HEADER]);
      } catch (err) {
        return sendError(reply, toAgentError(err));
      }
    }
    return undefined;
  });
}

/**
 * Mounts the handlers given, each on its route of the table, with the table's schemas. A route the app
 * has already (a test's stand-in, mounted by an extension first) is left to it.
 */
export function mountAgentRoutes(app: FastifyInstance, handlers: Partial<AgentHandlers>): void {
  const served = SERVED.get(app)?.current ?? PROTOCOL_RANGE.current;
  for (const name of Object.keys(handlers) as RouteName[]) {
    if (!routeIn(name, served)) continue;
    // Indexing the map by a name of the union loses the pairing of name and handler type; the table keeps it.
    const handler = handlers[name] as unknown as (
      input: HandlerInput<RouteName>,
    ) => Promise<unknown> | unknown;
    const def: RouteSpec = AGENT_ROUTES[name];
    const url = routePath(name);
    if (app.hasRoute({ method: def.method, url })) continue;
    const schema = {
      ...(def.params === undefined ? {} : { params: def.params }),
      ...(def.body === undefined || def.stream === 'upload' ? {} : { body: def.body }),
      ...(def.headers === undefined ? {} : { headers: def.headers }),
    };
    app.route({
      method: def.method,
      url,
      schema,
      handler: async (req, reply) => {
        void reply.status(def.status);
        const out = await handler({
          params: req.params as never,
          body: req.body as never,
          headers: req.headers as never,
          req,
          reply,
        });
        switch (def.stream) {
          case 'text':
            return reply.type('text/plain; charset=utf-8').send(out);
          case 'download': {
            const d = out as Download;
            return reply
              .header(SHA256_HEADER, d.sha256)
              .header('content-length', String(d.bytes))
              .type('application/octet-stream')
              .send(d.stream);
          }
          case 'events':
            return out;
          default:
            // Serialized here: a handler's answer may be a bare string (a guest reply), which fastify would send raw.
            return reply.type('application/json').send(JSON.stringify(out ?? null));
        }
      },
    });
  }
}
