/** Image routes: import (the server copies a file it can read into its store), list, show, delete. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams } from './schemas.ts';
import { Deleted, failures, Image, ref } from './responses.ts';

export const ImportImage = Type.Object(
  {
    name: Name,
    file: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$', maxLength: 4096, description: 'absolute path of a qcow2 or raw image the server reads' }),
  },
  { additionalProperties: false },
);

const NO_IMAGE = 'No image of that name: FERRY_E_IMAGE_NOT_FOUND';

export function registerImageRoutes(app: App, ctl: Controller): void {
  app.get(
    '/api/v1/images',
    { schema: { operationId: 'listImages', tags: ['images'], summary: 'Disk images of the store', response: { 200: Type.Array(ref(Image), { description: 'Every image, by name' }), ...failures({}) } } },
    async () => ctl.images.withHosts(ctl.images.list()),
  );
  app.post(
    '/api/v1/images',
    {
      schema: {
        operationId: 'importImage',
        tags: ['images'],
        summary: 'Import a qcow2 or raw image (format, virtual size, sha256 recorded)',
        body: ImportImage,
        response: {
          201: ref(Image, 'Imported'),
          ...failures(
            {
              400: 'Bad input, a reserved name, no readable file, or not qcow2/raw: FERRY_E_BAD_INPUT, FERRY_E_BAD_NAME, FERRY_E_BAD_IMAGE, FERRY_E_BAD_IMAGE_FORMAT',
              409: 'An image of that name exists: FERRY_E_IMAGE_EXISTS',
            },
            { body: true },
          ),
        },
      },
    },
    async (req, reply) => reply.status(201).send(await ctl.images.import(req.body.name, req.body.file)),
  );
  app.get(
    '/api/v1/images/:name',
    { schema: { operationId: 'getImage', tags: ['images'], summary: 'One image', params: NameParams, response: { 200: ref(Image, 'The image'), ...failures({ 404: NO_IMAGE }) } } },
    async (req) => (await ctl.images.withHosts([ctl.images.get(req.params.name)]))[0],
  );
  app.delete(
    '/api/v1/images/:name',
    {
      schema: {
        operationId: 'deleteImage',
        tags: ['images'],
        summary: 'Delete an image no VM boots from',
        params: NameParams,
        response: { 200: ref(Deleted, 'Deleted'), ...failures({ 404: NO_IMAGE, 409: 'VMs boot from it: FERRY_E_IMAGE_IN_USE' }, { body: true }) },
      },
    },
    async (req) => ctl.images.delete(req.params.name),
  );
}
