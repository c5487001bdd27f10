/**
 * Health, the server's version, join tokens, the join itself and agents' certificate renewals, the OpenAPI
 * document, and Prometheus
 * metrics: the controller's, and each agent's, fetched over the agents' mTLS (Prometheus holds no agent
 * certificate).
 */
import Type, { type Static } from 'typebox';
import type { Controller } from '../controller.ts';
import { createJoinToken } from '../tokens.ts';
import type { App } from './types.ts';
import { API_VERSION } from './types.ts';
import { JoinRequest, JoinTokenRequest, NameParams, RenewRequest } from './schemas.ts';
import { failures, Health, Joined, JoinToken, OpenApiDocument, ref, Renewed, ServerVersion } from './responses.ts';
import { PROTOCOL_RANGE } from '../../common/agent-routes.ts';
import { ferryVersion } from '../../common/version.ts';

export function registerSystemRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/health',
    {
      schema: {
        operationId: 'getHealth',
        tags: ['system'],
        summary: 'Liveness; public',
        security: [],
        response: { 200: ref(Health, 'The server answers'), ...failures({ 400: 'An HTTP/1.1 request without a Host header: FERRY_E_BAD_INPUT' }, { public: true }) },
      },
    },
    async () => ({ ok: true, version: API_VERSION, caFingerprint: ctl.ca.fingerprint }),
  );

  app.get(
    '/api/v1/version',
    {
      schema: {
        operationId: 'getVersion',
        tags: ['system'],
        summary: "The server's version, the API's, and the agent protocol versions it speaks",
        response: { 200: ref(ServerVersion, 'The versions'), ...failures({}) },
      },
    },
    async () => ({ version: ferryVersion(), apiVersion: API_VERSION, agentProtocol: { ...PROTOCOL_RANGE } }),
  );

  app.post(
    '/api/v1/join-tokens',
    {
      schema: {
        operationId: 'createJoinToken',
        tags: ['hosts'],
        summary: 'A one-time token for an agent to join',
        body: JoinTokenRequest,
        response: { 200: ref(JoinToken, 'The token, valid once until expiresAt'), ...failures({}, { body: true }) },
      },
    },
    async (req) => {
      const ttl = req.body.ttlSeconds;
      const t = createJoinToken(ctl.store, ttl === undefined ? undefined : ttl * 1000);
      ctl.events.publish('join-token.created', t.token.split('.')[0]!, { expiresAt: t.expiresAt });
      return t;
    },
  );

  app.post(
    '/api/v1/join',
    {
      schema: {
        operationId: 'joinHost',
        tags: ['hosts'],
        summary: "An agent joins with a one-time token and receives its certificate; public (the token is the credential)",
        security: [],
        body: JoinRequest,
        response: {
          200: ref(Joined, 'Joined: the certificate the agent serves and presents from now on'),
          ...failures(
            {
              400: 'Bad input, or an agentUrl that is not https://IP:PORT: FERRY_E_BAD_INPUT, FERRY_E_BAD_NAME',
              401: 'The join token is unknown, expired or used: FERRY_E_JOIN_TOKEN',
              403: "A reserved name (FERRY_E_HOST_NAME_RESERVED), or a join not from agentUrl's address (FERRY_E_JOIN_ADDRESS)",
              409: 'A host of that name has joined already: FERRY_E_HOST_EXISTS',
            },
            { public: true, body: true },
          ),
        },
      },
    },
    // The agent reached us at this address, so it is the one to hand back. The socket's own remote address
    // (never a forwarded header: no proxy is trusted) is what the agent's certificate may carry.
    async (req) => ctl.hosts.join(req.body, `https://${req.host}`, req.socket.remoteAddress),
  );

  app.post(
    '/api/v1/renew',
    {
      schema: {
        operationId: 'renewHostCertificate',
        tags: ['hosts'],
        summary: "A joined agent's new certificate for a new key, proven by its current certificate and key; public (the signature is the credential)",
        security: [],
        body: RenewRequest,
        response: {
          200: ref(Renewed, 'Renewed: the same name and address, the new key, a new validity'),
          ...failures(
            {
              400: 'Bad input: FERRY_E_BAD_INPUT, FERRY_E_BAD_NAME',
              401: 'The certificate has expired (re-join with a join token): FERRY_E_CERT_EXPIRED; a bad join token: FERRY_E_JOIN_TOKEN',
              403: "Not the cluster CA's, not this host's (name, address), an unknown or removed host, or a bad or stale signature: FERRY_E_CERT_REFUSED",
            },
            { public: true, body: true },
          ),
        },
      },
    },
    async (req) => ctl.hosts.renew(req.body),
  );

  app.get(
    '/api/v1/openapi.json',
    {
      schema: {
        operationId: 'getOpenApi',
        tags: ['system'],
        summary: 'This document: the OpenAPI description of the API',
        response: { 200: ref(OpenApiDocument, 'The OpenAPI 3.0 document'), ...failures({}) },
      },
    },
    // Registered in `openapi` mode (app.ts), so always a 3.x document, never Swagger 2's.
    async () => app.swagger() as Static<typeof OpenApiDocument>,
  );

  app.get(
    '/metrics',
    {
      schema: {
        operationId: 'getMetrics',
        tags: ['system'],
        summary: 'Prometheus metrics',
        response: {
          200: { description: 'Metrics in the Prometheus text format', content: { 'text/plain': { schema: Type.String() } } },
          ...failures({}),
        },
      },
    },
    async (_req, reply) => {
      const text = await ctl.metrics.registry.metrics();
      return reply.type(ctl.metrics.registry.contentType).send(text);
    },
  );

  app.get(
    '/metrics/hosts/:name',
    {
      schema: {
        operationId: 'getHostMetrics',
        tags: ['system'],
        summary: "A host agent's Prometheus metrics (QEMU processes, VM states, phase durations), fetched over its mTLS",
        params: NameParams,
        response: {
          200: { description: "The agent's metrics in the Prometheus text format", content: { 'text/plain': { schema: Type.String() } } },
          ...failures({ 404: 'No such host: FERRY_E_HOST_NOT_FOUND' }),
        },
      },
    },
    async (req, reply) => {
      const h = ctl.hosts.get(req.params.name);
      const text = await ctl.pool.client(h.name, h.url).call('metrics', {});
      return reply.type(ctl.metrics.registry.contentType).send(text);
    },
  );
}
