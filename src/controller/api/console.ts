/**
 * The web console's static bundle (web/, built into web/dist/ by scripts/build-web.ts) at `/`: the sign-in
 * page and the application behind it, the only things served without the token (CONSOLE_FILES). Everything
 * the console shows it reads through the public API with the token the operator typed in. A strict
 * Content-Security-Policy: scripts, styles and connections only from this origin, nothing inline, no frames.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../../common/errors.ts';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import type { App } from './types.ts';

const CONSOLE_DIR = join(PACKAGE_ROOT, 'web', 'dist');

/** URL path → file of the bundle and its content type. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

/** The paths app.ts lets through without a token. */
export const CONSOLE_FILES: readonly string[] = Object.keys(FILES);

export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export function registerConsoleRoutes(app: App): void {
  for (const [path, { file, type }] of Object.entries(FILES)) {
    // Not part of the API: hidden from the OpenAPI document.
    app.get(path, { schema: { hide: true } }, async (_req, reply) => {
      let body: Buffer;
      try {
        body = await readFile(join(CONSOLE_DIR, file));
      } catch (err) {
        throw new FerryError('FERRY_E_NOT_FOUND', `The web console is not built (${file} missing): run \`npm run build:web\`.`, { cause: err });
      }
      return reply
        .header('content-security-policy', CONSOLE_CSP)
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .header('cache-control', 'no-cache')
        .type(type)
        .send(body);
    });
  }
}
