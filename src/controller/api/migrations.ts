/** Migration routes: start one (`POST /vms/:name/migrate`), list, show, cancel. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams, NoOptions } from './schemas.ts';
import { failures, Migration, ref } from './responses.ts';
import { MigrateBody } from '../../common/policy.ts';

const IdParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' }) });
const NO_MIGRATION = 'No migration with that id: FERRY_E_MIGRATION_NOT_FOUND';

export function registerMigrationRoutes(app: App, ctl: Controller): void {
  app.post(
    '/api/v1/vms/:name/migrate',
    {
      schema: {
        operationId: 'migrateVm',
        tags: ['migrations'],
        summary: 'Migrate a VM (live by default); the scheduler picks the destination unless `to` is given',
        params: NameParams,
        body: MigrateBody,
        response: {
          202: ref(Migration, 'The migration job, queued: follow it with GET /api/v1/migrations/{id} or the events'),
          ...failures(
            {
              400: 'Bad input or policy, a destination that is the source, or --storage shared with local disks: FERRY_E_BAD_INPUT, FERRY_E_BAD_DURATION, FERRY_E_BAD_SIZE',
              404: 'No such VM or host: FERRY_E_VM_NOT_FOUND, FERRY_E_HOST_NOT_FOUND',
              409: 'A migration of this VM under way, a VM state that does not allow it, or no host can take it: FERRY_E_MIGRATION_ACTIVE, FERRY_E_VM_STATE, FERRY_E_NO_CAPACITY, FERRY_E_CPU_INCOMPATIBLE',
            },
            { body: true },
          ),
        },
      },
    },
    async (req, reply) => {
      const { to, ...policy } = req.body;
      const job = await ctl.migrations.migrate(req.params.name, { ...policy, ...(to === undefined ? {} : { to }) });
      return reply.status(202).send(job);
    },
  );

  app.get(
    '/api/v1/migrations',
    {
      schema: {
        operationId: 'listMigrations',
        tags: ['migrations'],
        summary: 'Migrations, newest first',
        querystring: Type.Object({ vm: Type.Optional(Name), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }),
        response: { 200: Type.Array(ref(Migration), { description: 'Newest first, at most limit (default 100)' }), ...failures({}) },
      },
    },
    async (req) => ctl.migrations.jobs.list(req.query),
  );

  app.get(
    '/api/v1/migrations/:id',
    {
      schema: {
        operationId: 'getMigration',
        tags: ['migrations'],
        summary: 'One migration: state, phase, progress, figures',
        params: IdParams,
        response: { 200: ref(Migration, 'The migration'), ...failures({ 404: NO_MIGRATION }) },
      },
    },
    async (req) => ctl.migrations.jobs.mustGet(req.params.id),
  );

  app.post(
    '/api/v1/migrations/:id/cancel',
    {
      schema: {
        operationId: 'cancelMigration',
        tags: ['migrations'],
        summary: 'Cancel a migration before post-copy; the VM keeps running on the source',
        params: IdParams,
        body: NoOptions,
        response: {
          200: ref(Migration, 'The job: cancel requested (it ends `cancelled` once the source runs alone), or as it ended when it had ended already'),
          ...failures({ 404: NO_MIGRATION, 409: 'Past the point where it can be cancelled (FERRY_E_VM_STATE), or it has ended (FERRY_E_MIGRATION_FINISHED)' }, { body: true }),
        },
      },
    },
    async (req) => ctl.migrations.cancel(req.params.id),
  );
}
