/** API tokens: create (with a role), list (never the secrets), revoke. Admin only, as every write is (app.ts). */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import { createApiToken, listApiTokens, revokeApiToken, TOKEN_ROLES } from '../tokens.ts';
import type { App } from './types.ts';
import { ApiToken, ApiTokenCreated, failures, ref } from './responses.ts';

const CreateToken = Type.Object({ role: Type.Enum(TOKEN_ROLES) }, { additionalProperties: false });
const TokenParams = Type.Object({ id: Type.String({ pattern: '^[a-z0-9]{8,32}$', description: "the token's id, the part before the dot" }) });

export function registerTokenRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/tokens',
    {
      schema: {
        operationId: 'listTokens',
        tags: ['tokens'],
        summary: 'Every API token: id, role, creation time (never the secret)',
        response: { 200: Type.Array(ref(ApiToken), { description: 'The tokens, oldest first' }), ...failures({}) },
      },
    },
    async () => listApiTokens(ctl.store),
  );

  app.post(
    '/api/v1/tokens',
    {
      schema: {
        operationId: 'createToken',
        tags: ['tokens'],
        summary: 'A new API token of a role; its secret is answered this once',
        body: CreateToken,
        response: { 201: ref(ApiTokenCreated, 'The token, with its secret'), ...failures({}, { body: true }) },
      },
    },
    async (req, reply) => {
      const t = createApiToken(ctl.store, req.body.role);
      ctl.events.publish('token.created', t.id, { role: t.role });
      void reply.status(201);
      return t;
    },
  );

  app.delete(
    '/api/v1/tokens/:id',
    {
      schema: {
        operationId: 'revokeToken',
        tags: ['tokens'],
        summary: 'Revoke an API token: refused from now on',
        params: TokenParams,
        response: { 200: ref(ApiToken, 'The revoked token'), ...failures({ 404: 'No such token: FERRY_E_TOKEN_NOT_FOUND' }, { body: true }) },
      },
    },
    async (req) => {
      const t = revokeApiToken(ctl.store, req.params.id);
      ctl.events.publish('token.revoked', t.id, { role: t.role });
      return t;
    },
  );
}
