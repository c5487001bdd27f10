/** Host routes: list (in full, or summaries) and show (inventory, state, VMs, free memory); drain and undrain. */
import Type from 'typebox';
import type { FastifyReply } from 'fastify';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { HostListQuery, NameParams, NoOptions } from './schemas.ts';
import { rebalance } from '../rebalance.ts';
import { DrainAnswer, DrainStatus, Rebalance, failures, Host, HostListEntry, ref, Undrained } from './responses.ts';

const NO_HOST = 'No host of that name: FERRY_E_HOST_NOT_FOUND';

export function registerHostRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/hosts',
    {
      schema: {
        operationId: 'listHosts',
        tags: ['hosts'],
        summary: 'Hosts of the cluster',
        querystring: HostListQuery,
        response: {
          200: Type.Array(ref(HostListEntry), { description: 'Every host (or a page of them), by name: in full, or with `view=summary` as a list shows them' }),
          ...failures({}),
        },
      },
    },
    async (req, reply) => {
      const { view, ...page } = req.query;
      if (view === 'summary') return ctl.hosts.summaries(page);
      // Already JSON (each stored inventory spliced in, not parsed and serialised again), which fastify sends
      // as it is; the route's typed reply takes only the parsed shape, hence the untyped one.
      return (reply as FastifyReply).type('application/json').send(ctl.hosts.listText(page));
    },
  );
  app.get(
    '/api/v1/hosts/:name',
    { schema: { operationId: 'getHost', tags: ['hosts'], summary: 'One host', params: NameParams, response: { 200: ref(Host, 'The host'), ...failures({ 404: NO_HOST }) } } },
    async (req) => ctl.hosts.get(req.params.name),
  );

  app.post(
    '/api/v1/hosts/:name/drain',
    {
      schema: {
        operationId: 'drainHost',
        tags: ['hosts'],
        summary: 'Plan, then put a host in maintenance and move every VM off it within the deadline (a dry run answers the plan and changes nothing)',
        params: NameParams,
        body: Type.Object(
          {
            deadline: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })])),
            dryRun: Type.Optional(Type.Boolean({ description: 'answer the plan only (200): nothing changes' })),
            bandwidth: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })], { description: "each migration's cap: MiB/s, or a size per second (100M); the plan predicts with it" })),
          },
          { additionalProperties: false },
        ),
        response: {
          // One success status per operation (the API's rule): a dry run answers 202 too, with the plan only.
          202: ref(DrainAnswer, 'The drain started (or the one under way), with its plan: follow it with GET …/drain; with dryRun, the plan (each VM, its destination and why, its predicted end and strategy) and nothing changed'),
          ...failures({ 400: 'Bad input or a bad deadline: FERRY_E_BAD_INPUT, FERRY_E_BAD_DURATION', 404: NO_HOST }, { body: true }),
        },
      },
    },
    async (req, reply) => {
      ctl.hosts.get(req.params.name); // FERRY_E_HOST_NOT_FOUND before anything changes
      const d = await ctl.drains.drain(req.params.name, req.body);
      return reply.status(202).send(d);
    },
  );
  app.get(
    '/api/v1/hosts/:name/drain',
    {
      schema: {
        operationId: 'getHostDrain',
        tags: ['hosts'],
        summary: "The host's last drain, if any",
        params: NameParams,
        response: { 200: ref(DrainStatus, 'The last drain, or state `none`'), ...failures({ 404: NO_HOST }) },
      },
    },
    async (req) => {
      ctl.hosts.get(req.params.name);
      return ctl.drains.status(req.params.name) ?? { host: req.params.name, state: 'none' as const, items: [] };
    },
  );
  app.post(
    '/api/v1/hosts/:name/undrain',
    {
      schema: {
        operationId: 'undrainHost',
        tags: ['hosts'],
        summary: 'Lift maintenance: the scheduler may place VMs on the host again',
        params: NameParams,
        body: NoOptions,
        response: {
          200: ref(Undrained, 'Maintenance lifted'),
          ...failures({ 404: NO_HOST, 409: 'The host is being drained: FERRY_E_VM_STATE' }, { body: true }),
        },
      },
    },
    async (req) => {
      ctl.hosts.get(req.params.name);
      return ctl.drains.undrain(req.params.name);
    },
  );
  app.post(
    '/api/v1/cluster/rebalance',
    {
      schema: {
        operationId: 'rebalanceCluster',
        tags: ['hosts'],
        summary: 'Even out memory use: the cheapest moves, each explained; started unless a dry run',
        body: Type.Object(
          {
            dryRun: Type.Optional(Type.Boolean()),
            maxMoves: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000 })),
            threshold: Type.Optional(Type.Union([Type.String({ maxLength: 16 }), Type.Number({ minimum: 0, maximum: 1 })], { description: 'the spread it stops at: 10% (default) or 0.1' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: ref(Rebalance, 'The moves (started, unless a dry run)'), ...failures({ 400: 'Bad input: FERRY_E_BAD_INPUT' }, { body: true }) },
      },
    },
    async (req) => rebalance({ store: ctl.store, migrations: ctl.migrations, pool: ctl.pool }, req.body),
  );
}

