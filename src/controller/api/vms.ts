/** VM routes: create, list, show, start, stop, delete, guest pass-through and the serial console. */
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import Type from 'typebox';
import { CreateVm, GuestCommand, NameParams, StopVm } from './schemas.ts';

export function registerVmRoutes(app: App, ctl: Controller): void {
  app.get('/api/v1/vms', { schema: { summary: 'VMs of the cluster' } }, async () => ctl.vms.list());

  app.post('/api/v1/vms', { schema: { summary: 'Create and boot a VM (placed by the scheduler unless host is given)', body: CreateVm } }, async (req, reply) => {
    const vm = await ctl.vms.create(req.body);
    return reply.status(201).send(vm);
  });

  app.get('/api/v1/vms/:name', { schema: { summary: 'One VM', params: NameParams } }, async (req) => ctl.vms.get(req.params.name));

  app.delete('/api/v1/vms/:name', { schema: { summary: 'Stop and remove a VM and its disks', params: NameParams } }, async (req) =>
    ctl.vms.delete(req.params.name),
  );

  app.post('/api/v1/vms/:name/start', { schema: { summary: 'Start a stopped VM', params: NameParams, body: Type.Object({}, { additionalProperties: false }) } }, async (req) =>
    ctl.vms.start(req.params.name),
  );

  app.post('/api/v1/vms/:name/stop', { schema: { summary: 'Stop a VM (ACPI, then quit; force: quit now)', params: NameParams, body: StopVm } }, async (req) =>
    ctl.vms.stop(req.params.name, req.body),
  );

  app.post('/api/v1/vms/:name/pause', { schema: { summary: 'Pause a running VM (the guest keeps its memory)', params: NameParams, body: Type.Object({}, { additionalProperties: false }) } }, async (req) =>
    ctl.vms.pause(req.params.name),
  );

  app.post(
    '/api/v1/vms/:name/resume',
    { schema: { summary: "Resume a paused VM (after a failed migration, against the destination's discard receipt)", params: NameParams, body: Type.Object({}, { additionalProperties: false }) } },
    async (req) => ctl.vms.resume(req.params.name),
  );

  app.post('/api/v1/vms/:name/guest', { schema: { summary: "Pass a command to the guest tool; returns the guest's JSON reply", params: NameParams, body: GuestCommand } }, async (req) => {
    const reply = await ctl.vms.guest(req.params.name, req.body.command);
    // Wrapped, so that a guest reply of any JSON type (even null) is a well-formed body.
    return { reply };
  });

  app.get('/api/v1/vms/:name/console', { schema: { summary: 'The serial console log (text)', params: NameParams, produces: ['text/plain'] } }, async (req, reply) => {
    const text = await ctl.vms.console(req.params.name);
    return reply.type('text/plain; charset=utf-8').send(text);
  });
}
