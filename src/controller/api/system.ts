/**
 * Health, join tokens and the join itself, the OpenAPI document, and Prometheus metrics: the controller's,
 * and each agent's, fetched over the agents' mTLS (Prometheus holds no agent certificate).
 */
import type { Controller } from '../controller.ts';
import { createJoinToken } from '../tokens.ts';
import type { App } from './types.ts';
import { API_VERSION } from './types.ts';
import { ErrorBody, Health, JoinReply, JoinRequest, JoinTokenReply, JoinTokenRequest, NameParams } from './schemas.ts';

export function registerSystemRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/health',
    { schema: { summary: 'Liveness; public', security: [], response: { 200: Health } } },
    async () => ({ ok: true, version: API_VERSION, caFingerprint: ctl.ca.fingerprint }),
  );

  app.post(
    '/api/v1/join-tokens',
    { schema: { summary: 'A one-time token for an agent to join', body: JoinTokenRequest, response: { 200: JoinTokenReply } } },
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
        summary: "An agent joins with a one-time token and receives its certificate; public (the token is the credential)",
        security: [],
        body: JoinRequest,
        response: { 200: JoinReply, 401: ErrorBody, 403: ErrorBody, 409: ErrorBody },
      },
    },
    // The agent reached us at this address, so it is the one to hand back. The socket's own remote address
    // (never a forwarded header: no proxy is trusted) is what the agent's certificate may carry.
    async (req) => ctl.hosts.join(req.body, `https://${req.host}`, req.socket.remoteAddress),
  );

  app.get('/api/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.get('/metrics', { schema: { summary: 'Prometheus metrics', produces: ['text/plain'] } }, async (_req, reply) => {
    const text = await ctl.metrics.registry.metrics();
    return reply.type(ctl.metrics.registry.contentType).send(text);
  });

  app.get(
    '/metrics/hosts/:name',
    { schema: { summary: "A host agent's Prometheus metrics (QEMU processes, VM states, phase durations)", params: NameParams, produces: ['text/plain'] } },
    async (req, reply) => {
      const h = ctl.hosts.get(req.params.name);
      const text = await ctl.pool.client(h.name, h.url).call('metrics', {});
      return reply.type(ctl.metrics.registry.contentType).send(text);
    },
  );
}
