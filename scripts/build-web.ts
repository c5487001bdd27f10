/**
 * Builds the web console (web/) into the static bundle the controller serves at `/` (web/dist/: index.html,
 * app.js, app.css), with esbuild: one minified ES module, its CSS beside it, nothing fetched at run time.
 * `--if-stale` builds only when the bundle is missing or older than a file of web/ (setup.sh, test.sh).
 * Prints the bundle's sizes (raw and gzip); `--json` as one document.
 */
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { PACKAGE_ROOT } from '../src/common/paths.ts';

const WEB = join(PACKAGE_ROOT, 'web');
const DIST = join(WEB, 'dist');
const OUTPUTS = ['index.html', 'app.js', 'app.css'];

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'dist' || e.name.endsWith('.test.ts')) continue;
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

function stale(): boolean {
  if (!OUTPUTS.every((f) => existsSync(join(DIST, f)))) return true;
  const built = Math.min(...OUTPUTS.map((f) => statSync(join(DIST, f)).mtimeMs));
  return newest(WEB) > built;
}

const args = process.argv.slice(2);
const json = args.includes('--json');
if (args.includes('--if-stale') && !stale()) {
  if (json) console.log(JSON.stringify({ built: false }));
  process.exit(0);
}

mkdirSync(DIST, { recursive: true });
await build({
  entryPoints: [join(WEB, 'src', 'main.tsx')],
  outfile: join(DIST, 'app.js'),
  bundle: true,
  format: 'esm',
  minify: true,
  target: 'es2022',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'none',
  logLevel: 'warning',
});
copyFileSync(join(WEB, 'index.html'), join(DIST, 'index.html'));

const sizes = Object.fromEntries(
  OUTPUTS.map((f) => {
    const body = readFileSync(join(DIST, f));
    return [f, { bytes: body.length, gzipBytes: gzipSync(body, { level: 9 }).length }];
  }),
);
const total = Object.values(sizes).reduce((s, x) => s + x.gzipBytes, 0);
if (json) console.log(JSON.stringify({ built: true, sizes, gzipBytes: total }));
else console.log(`web console built into web/dist: ${OUTPUTS.map((f) => `${f} ${sizes[f]!.gzipBytes} B gzip`).join(', ')}; ${(total / 1024).toFixed(1)} KiB gzip in all`);
