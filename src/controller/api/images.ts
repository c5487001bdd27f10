/** Image routes: import (the server copies a file it can read into its store), list, show, delete. */
import Type from 'typebox';
import type { Controller } from '../controller.ts';
import type { App } from './types.ts';
import { Name, NameParams } from './schemas.ts';

export const ImportImage = Type.Object(
  {
    name: Name,
    file: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$', maxLength: 4096, description: 'absolute path of a qcow2 or raw image the server reads' }),
  },
  { additionalProperties: false },
);

export function registerImageRoutes(app: App, ctl: Controller): void {
  app.get('/api/v1/images', { schema: { summary: 'Disk images of the store' } }, async () => ctl.images.withHosts(ctl.images.list()));
  app.post('/api/v1/images', { schema: { summary: 'Import a qcow2 or raw image (format, virtual size, sha256 recorded)', body: ImportImage } }, async (req, reply) =>
    reply.status(201).send(await ctl.images.import(req.body.name, req.body.file)),
  );
  app.get('/api/v1/images/:name', { schema: { summary: 'One image', params: NameParams } }, async (req) => (await ctl.images.withHosts([ctl.images.get(req.params.name)]))[0]);
  app.delete('/api/v1/images/:name', { schema: { summary: 'Delete an image no VM boots from', params: NameParams } }, async (req) => ctl.images.delete(req.params.name));
}
