/**
 * Migration routes: request one (`POST /vms/:name/migrate`, queued within the limits) or its prediction
 * (`…/migrate/prediction`, a dry run), list, show, cancel,
 * steer a running one (set, postcopy, complete), and the queue's limits.
 */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams, NoOptions } from './schemas.ts';
import { failures, Limits, Migration, MigrationPlan, ref } from './responses.ts';
import { MigrateBody, SteerBody } from '../../common/policy.ts';

const IdParams = Type.Object({ id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' }) });
const NO_MIGRATION = 'No migration with that id: FERRY_E_MIGRATION_NOT_FOUND';
const NOT_RUNNING = 'The migration is not a live one transferring now (queued, preparing, past the switch, ended): FERRY_E_MIGRATION_NOT_RUNNING';

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

  app.post(
    '/api/v1/vms/:name/migrate/prediction',
    {
      schema: {
        operationId: 'predictMigration',
        tags: ['migrations'],
        summary: 'A dry run of migrateVm: the destination, the dirty rate measured now, the link bandwidth, the predicted time and downtime, whether pre-copy converges, and a strategy; nothing starts, nothing changes',
        params: NameParams,
        body: MigrateBody,
        response: {
          200: ref(MigrationPlan, 'Where it would go and what is predicted; nothing was created'),
          ...failures(
            {
              400: 'Bad input or policy, as for migrateVm: FERRY_E_BAD_INPUT, FERRY_E_BAD_DURATION, FERRY_E_BAD_SIZE',
              404: 'No such VM or host: FERRY_E_VM_NOT_FOUND, FERRY_E_HOST_NOT_FOUND',
              409: 'A migration of this VM under way, a VM state that does not allow it, or no host can take it: FERRY_E_MIGRATION_ACTIVE, FERRY_E_VM_STATE, FERRY_E_NO_CAPACITY, FERRY_E_CPU_INCOMPATIBLE',
            },
            { body: true },
          ),
        },
      },
    },
    async (req) => {
      const { to, ...policy } = req.body;
      return ctl.migrations.predict(req.params.name, { ...policy, ...(to === undefined ? {} : { to }) });
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

  app.post(
    '/api/v1/migrations/:id/set',
    {
      schema: {
        operationId: 'steerMigration',
        tags: ['migrations'],
        summary: "Change a running migration's bandwidth cap and/or downtime budget (applied to QEMU at once)",
        params: IdParams,
        body: SteerBody,
        response: {
          200: ref(Migration, 'The job, with the action recorded in `actions` and what QEMU runs with now in `tuning`'),
          ...failures(
            { 400: 'Nothing to set, or a bad size or duration: FERRY_E_BAD_INPUT, FERRY_E_BAD_SIZE, FERRY_E_BAD_DURATION', 404: NO_MIGRATION, 409: NOT_RUNNING },
            { body: true },
          ),
        },
      },
    },
    async (req) => ctl.migrations.steer(req.params.id, req.body),
  );

  app.post(
    '/api/v1/migrations/:id/postcopy',
    {
      schema: {
        operationId: 'postcopyMigration',
        tags: ['migrations'],
        summary: 'Switch a running migration to post-copy now, if its policy allows post-copy',
        params: IdParams,
        body: NoOptions,
        response: {
          200: ref(Migration, 'The job, the switch recorded in `actions`; it enters `postcopy` within a poll'),
          ...failures({ 404: NO_MIGRATION, 409: `${NOT_RUNNING}; or its policy is --postcopy never: FERRY_E_POSTCOPY_NOT_ALLOWED` }, { body: true }),
        },
      },
    },
    async (req) => ctl.migrations.postcopy(req.params.id),
  );

  app.post(
    '/api/v1/migrations/:id/complete',
    {
      schema: {
        operationId: 'completeMigration',
        tags: ['migrations'],
        summary: 'Pause the guest on the source so that the migration finishes; the pause is reported as its downtime',
        params: IdParams,
        body: NoOptions,
        response: {
          200: ref(Migration, 'The job, the pause recorded in `actions`'),
          ...failures({ 404: NO_MIGRATION, 409: NOT_RUNNING }, { body: true }),
        },
      },
    },
    async (req) => ctl.migrations.complete(req.params.id),
  );

  app.get(
    '/api/v1/limits',
    {
      schema: {
        operationId: 'getLimits',
        tags: ['migrations'],
        summary: "The migration queue's limits (per host, cluster-wide, link capacity) and how many jobs run and wait now",
        response: { 200: ref(Limits, 'The limits `ferry server` runs with'), ...failures({}) },
      },
    },
    async () => {
      const active = ctl.migrations.jobs.listActive();
      const queued = active.filter((j) => j.state === 'queued').length;
      return { ...ctl.migrations.limits, queued, running: active.length - queued };
    },
  );
}
