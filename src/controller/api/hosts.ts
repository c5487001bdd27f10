/** Host routes: list and show (inventory, state, VMs, free memory). */
import type { Controller } from '../controller.ts';
import type { App } from './app.ts';
import { NameParams } from './schemas.ts';

export function registerHostRoutes(app: App, ctl: Controller): void {
  app.get('/api/v1/hosts', { schema: { summary: 'Hosts of the cluster' } }, async () => ctl.hosts.list());
  app.get('/api/v1/hosts/:name', { schema: { summary: 'One host', params: NameParams } }, async (req) => ctl.hosts.get(req.params.name));
}
