/**
 * The API's OpenAPI document without a running server: the app built over a throwaway controller (a
 * temporary data dir, no heartbeats, nothing listening), asked for its document, then closed. What
 * scripts/openapi.ts writes for the linter; a running server serves the same at GET /api/v1/openapi.json.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createController } from '../controller.ts';
import { buildApp } from './app.ts';

export async function openApiDocument(): Promise<unknown> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-openapi-'));
  try {
    const ctl = await createController({ dataDir: dir, heartbeats: false, recover: false, probe: false });
    try {
      const app = await buildApp(ctl, { tls: await ctl.ca.issue('ferry-server', ['127.0.0.1']) });
      try {
        await app.ready();
        return app.swagger();
      } finally {
        await app.close();
      }
    } finally {
      await ctl.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
