/** Migration routes: start one (`POST /vms/:name/migrate`), list, show, cancel. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams } from './schemas.ts';
import { MigrateBody } from '../../common/policy.ts';

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
