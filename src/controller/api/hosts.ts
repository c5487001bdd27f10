/** Host routes: list and show (inventory, state, VMs, free memory); drain and undrain. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { NameParams } from './schemas.ts';

export function registerHostRoutes(app: App, ctl: Controller): void {
  app.get('/api/v1/hosts', { schema: { summary: 'Hosts of the cluster' } }, async () => ctl.hosts.list());
  app.get('/api/v1/hosts/:name', { schema: { summary: 'One host', params: NameParams } }, async (req) => ctl.hosts.get(req.params.name));

  app.post(
    '/api/v1/hosts/:name/drain',
    {
      schema: {
        summary: 'Put a host in maintenance and move every VM off it (live; cold for stopped VMs)',
        params: NameParams,
        body: Type.Object({ deadline: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })])) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      ctl.hosts.get(req.params.name); // FERRY_E_HOST_NOT_FOUND before anything changes
      return reply.status(202).send(ctl.drains.drain(req.params.name, req.body));
    },
  );
  app.get('/api/v1/hosts/:name/drain', { schema: { summary: "The host's last drain, if any", params: NameParams } }, async (req) => {
    ctl.hosts.get(req.params.name);
    return ctl.drains.status(req.params.name) ?? { host: req.params.name, state: 'none', items: [] };
  });
  app.post(
    '/api/v1/hosts/:name/undrain',
    { schema: { summary: 'Lift maintenance: the scheduler may place VMs on the host again', params: NameParams, body: Type.Object({}, { additionalProperties: false }) } },
    async (req) => {
      ctl.hosts.get(req.params.name);
      return ctl.drains.undrain(req.params.name);
    },
  );
}
