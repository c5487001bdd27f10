/** VM routes: create, list, show, start, stop, delete, guest pass-through and the serial console. */
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import Type from 'typebox';
import { CreateVm, GuestCommand, NameParams, NoOptions, PageQuery, StopVm } from './schemas.ts';
import { Deleted, failures, GuestReply, Placements, ref, Vm, VmCreated } from './responses.ts';
import { placementsFor } from '../placements.ts';

const NO_VM = 'No VM of that name: FERRY_E_VM_NOT_FOUND';
const BUSY = 'Not in a state that allows this, another operation on it, or a migration under way: FERRY_E_VM_STATE, FERRY_E_MIGRATION_ACTIVE';

export function registerVmRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/vms',
    { schema: { operationId: 'listVms', tags: ['vms'], summary: 'VMs of the cluster', querystring: PageQuery, response: { 200: Type.Array(ref(Vm), { description: 'Every VM (or a page of them), by name' }), ...failures({}) } } },
    async (req) => ctl.vms.list(req.query),
  );

  app.post(
    '/api/v1/vms',
    {
      schema: {
        operationId: 'createVm',
        tags: ['vms'],
        summary: 'Create and boot a VM (placed by the scheduler unless host is given)',
        body: CreateVm,
        response: {
          201: ref(VmCreated, 'Created and booted (ready when waited for), with where the scheduler placed it and why'),
          ...failures(
            {
              400: 'Bad input: FERRY_E_BAD_INPUT, FERRY_E_BAD_NAME, FERRY_E_BAD_SIZE, FERRY_E_BAD_IMAGE, FERRY_E_BAD_BOOT, FERRY_E_BAD_CMDLINE, FERRY_E_BAD_IP, FERRY_E_BAD_DURATION, FERRY_E_MEMORY_TOO_LARGE, FERRY_E_USAGE',
              404: 'No such host, VM network or image: FERRY_E_HOST_NOT_FOUND, FERRY_E_NETWORK_NOT_FOUND, FERRY_E_IMAGE_NOT_FOUND',
              409: 'The name or the address is taken, or no host can take it: FERRY_E_VM_EXISTS, FERRY_E_IP_TAKEN, FERRY_E_NO_CAPACITY',
            },
            { body: true },
          ),
        },
      },
    },
    async (req, reply) => {
      const vm = await ctl.vms.create(req.body);
      return reply.status(201).send(vm);
    },
  );

  app.get(
    '/api/v1/vms/:name',
    { schema: { operationId: 'getVm', tags: ['vms'], summary: 'One VM', params: NameParams, response: { 200: ref(Vm, 'The VM'), ...failures({ 404: NO_VM }) } } },
    async (req) => ctl.vms.get(req.params.name),
  );

  app.get(
    '/api/v1/vms/:name/placements',
    {
      schema: {
        operationId: 'getVmPlacements',
        tags: ['vms'],
        summary: "Every host with the scheduler's verdict for this VM: fits, or why not",
        params: NameParams,
        response: { 200: ref(Placements, 'One verdict per host, by name'), ...failures({ 404: NO_VM }) },
      },
    },
    async (req) => placementsFor(ctl.store, req.params.name),
  );

  app.delete(
    '/api/v1/vms/:name',
    {
      schema: {
        operationId: 'deleteVm',
        tags: ['vms'],
        summary: 'Stop and remove a VM and its disks',
        params: NameParams,
        response: { 200: ref(Deleted, 'Removed from its host and the store'), ...failures({ 404: NO_VM, 409: BUSY }, { body: true }) },
      },
    },
    async (req) => ctl.vms.delete(req.params.name),
  );

  app.post(
    '/api/v1/vms/:name/start',
    {
      schema: {
        operationId: 'startVm',
        tags: ['vms'],
        summary: 'Start a stopped VM',
        params: NameParams,
        body: NoOptions,
        response: { 200: ref(Vm, 'Started'), ...failures({ 404: NO_VM, 409: BUSY }, { body: true }) },
      },
    },
    async (req) => ctl.vms.start(req.params.name),
  );

  app.post(
    '/api/v1/vms/:name/stop',
    {
      schema: {
        operationId: 'stopVm',
        tags: ['vms'],
        summary: 'Stop a VM (ACPI, then quit; force: quit now)',
        params: NameParams,
        body: StopVm,
        response: { 200: ref(Vm, 'Stopped'), ...failures({ 404: NO_VM, 409: BUSY }, { body: true }) },
      },
    },
    async (req) => ctl.vms.stop(req.params.name, req.body),
  );

  app.post(
    '/api/v1/vms/:name/pause',
    {
      schema: {
        operationId: 'pauseVm',
        tags: ['vms'],
        summary: 'Pause a running VM (the guest keeps its memory)',
        params: NameParams,
        body: NoOptions,
        response: { 200: ref(Vm, 'Paused'), ...failures({ 404: NO_VM, 409: BUSY }, { body: true }) },
      },
    },
    async (req) => ctl.vms.pause(req.params.name),
  );

  app.post(
    '/api/v1/vms/:name/resume',
    {
      schema: {
        operationId: 'resumeVm',
        tags: ['vms'],
        summary: "Resume a paused VM (after a failed migration, against the destination's discard receipt)",
        params: NameParams,
        body: NoOptions,
        response: {
          200: ref(Vm, 'Running again'),
          ...failures(
            { 404: NO_VM, 409: `${BUSY}; a source that handed the guest over without the destination's discard receipt: FERRY_E_RECEIPT_REQUIRED, FERRY_E_RECEIPT_INVALID` },
            { body: true },
          ),
        },
      },
    },
    async (req) => ctl.vms.resume(req.params.name),
  );

  app.post(
    '/api/v1/vms/:name/guest',
    {
      schema: {
        operationId: 'runGuestCommand',
        tags: ['vms'],
        summary: "Pass a command to the guest tool; returns the guest's JSON reply",
        params: NameParams,
        body: GuestCommand,
        response: { 200: ref(GuestReply, "The guest's reply"), ...failures({ 404: NO_VM, 409: BUSY }, { body: true }) },
      },
    },
    async (req) => {
      const reply = await ctl.vms.guest(req.params.name, req.body.command);
      // Wrapped, so that a guest reply of any JSON type (even null) is a well-formed body.
      return { reply };
    },
  );

  app.get(
    '/api/v1/vms/:name/console',
    {
      schema: {
        operationId: 'getVmConsole',
        tags: ['vms'],
        summary: 'The serial console log (text)',
        params: NameParams,
        response: { 200: { description: "The guest's serial console so far", content: { 'text/plain': { schema: Type.String() } } }, ...failures({ 404: NO_VM }) },
      },
    },
    async (req, reply) => {
      const text = await ctl.vms.console(req.params.name);
      return reply.type('text/plain; charset=utf-8').send(text);
    },
  );
}
