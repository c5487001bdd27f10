/** Host routes: list and show (inventory, state, VMs, free memory); drain and undrain. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { NameParams, NoOptions } from './schemas.ts';
import { Drain, DrainStatus, failures, Host, ref, Undrained } from './responses.ts';

const NO_HOST = 'No host of that name: FERRY_E_HOST_NOT_FOUND';

export function registerHostRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/hosts',
    { schema: { operationId: 'listHosts', tags: ['hosts'], summary: 'Hosts of the cluster', response: { 200: Type.Array(ref(Host), { description: 'Every host, by name' }), ...failures({}) } } },
    async () => ctl.hosts.list(),
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
        summary: 'Put a host in maintenance and move every VM off it (live; cold for stopped VMs)',
        params: NameParams,
        body: Type.Object({ deadline: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })])) }, { additionalProperties: false }),
        response: {
          202: ref(Drain, 'The drain started (or the one under way): follow it with GET …/drain'),
          ...failures({ 400: 'Bad input or a bad deadline: FERRY_E_BAD_INPUT, FERRY_E_BAD_DURATION', 404: NO_HOST }, { body: true }),
        },
      },
    },
    async (req, reply) => {
      ctl.hosts.get(req.params.name); // FERRY_E_HOST_NOT_FOUND before anything changes
      return reply.status(202).send(ctl.drains.drain(req.params.name, req.body));
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
}
