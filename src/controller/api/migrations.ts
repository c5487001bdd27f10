/** Migration routes: start one (`POST /vms/:name/migrate`), list, show, cancel. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams } from './schemas.ts';
import { MIGRATION_MODES } from '../../common/states.ts';
import { POSTCOPY_MODES, STORAGE_MODES } from '../../common/policy.ts';

const Duration = Type.Union([Type.String({ pattern: '^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h)?\\s*$', maxLength: 32 }), Type.Number({ minimum: 0 })]);

export const MigrateBody = Type.Object(
  {
    to: Type.Optional(Name),
    mode: Type.Optional(Type.Union(MIGRATION_MODES.map((m) => Type.Literal(m)))),
    storage: Type.Optional(Type.Union(STORAGE_MODES.map((m) => Type.Literal(m)))),
    postcopy: Type.Optional(Type.Union(POSTCOPY_MODES.map((m) => Type.Literal(m)))),
    maxDowntime: Type.Optional(Duration),
    bandwidth: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })], { description: 'MiB/s, or a size per second (100M); 0 = no limit' })),
    tls: Type.Optional(Type.Boolean()),
    autoConverge: Type.Optional(Type.Boolean()),
    xbzrle: Type.Optional(Type.Boolean()),
    multifd: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 })),
    stallTimeout: Type.Optional(Duration),
    deadline: Type.Optional(Duration),
  },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' }) });

export function registerMigrationRoutes(app: App, ctl: Controller): void {
  app.post(
    '/api/v1/vms/:name/migrate',
    { schema: { summary: 'Migrate a VM (live by default); the scheduler picks the destination unless `to` is given', params: NameParams, body: MigrateBody } },
    async (req, reply) => {
      const { to, ...policy } = req.body;
      const job = await ctl.migrations.migrate(req.params.name, { ...policy, ...(to === undefined ? {} : { to }) });
      return reply.status(202).send(job);
    },
  );

  app.get(
    '/api/v1/migrations',
    { schema: { summary: 'Migrations, newest first', querystring: Type.Object({ vm: Type.Optional(Name), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }) } },
    async (req) => ctl.migrations.jobs.list(req.query),
  );

  app.get('/api/v1/migrations/:id', { schema: { summary: 'One migration: state, phase, progress, figures', params: IdParams } }, async (req) =>
    ctl.migrations.jobs.mustGet(req.params.id),
  );

  app.post(
    '/api/v1/migrations/:id/cancel',
    { schema: { summary: 'Cancel a migration before post-copy; the VM keeps running on the source', params: IdParams, body: Type.Object({}, { additionalProperties: false }) } },
    async (req) => ctl.migrations.cancel(req.params.id),
  );
}
