/**
 * Bundles the `ferry` program (src/cli/main.ts and all it imports) into build/cli/ with esbuild: ES modules
 * split at every dynamic `import()`, so a client command loads the command line and the HTTP client, not
 * the controller, the agent, SQLite or PostgreSQL (those load when `ferry server` or `ferry agent` runs).
 * npm packages stay outside the bundle (node_modules), but one (see BUNDLED). bin/ferry.js runs the bundle when it is current and
 * the sources through tsx otherwise, so an edited file never runs stale: build/cli/inputs.json lists every
 * source file the bundle holds and when the build began.
 *
 * `--if-stale` builds only when the bundle is missing or a source file of it changed (setup.sh, test.sh).
 * `--json` prints one document.
 */
import { build, type Plugin } from 'esbuild';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../src/common/paths.ts';

const OUT = join(PACKAGE_ROOT, 'build', 'cli');
const STAMP = join(OUT, 'inputs.json');

interface Stamp {
  /** When the build began (ms since the epoch): a source modified later makes the bundle stale. */
  builtAt: number;
  /** The source files in the bundle, relative to the package root. */
  inputs: string[];
}

function stale(): boolean {
  if (!existsSync(STAMP)) return true;
  const stamp = JSON.parse(readFileSync(STAMP, 'utf8')) as Stamp;
  return stamp.inputs.some((f) => {
    const p = join(PACKAGE_ROOT, f);
    return !existsSync(p) || statSync(p).mtimeMs > stamp.builtAt;
  });
}

const args = process.argv.slice(2);
const json = args.includes('--json');
if (args.includes('--if-stale') && !stale()) {
  if (json) console.log(JSON.stringify({ built: false }));
  process.exit(0);
}

/**
 * npm packages stay in node_modules, but for @peculiar/x509 (and what it imports): its dependency injection
 * needs the `Reflect` functions of src/controller/reflect-shim.ts before it loads, and an external import
 * would be hoisted above the shim, which the bundle inlines. Bundled, the two keep their source order.
 */
const BUNDLED = new Set(['@peculiar/x509']);
const externalPackages: Plugin = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:')) return { path: args.path, external: true };
      if (args.importer.includes('/node_modules/')) return undefined;
      const pkg = args.path.startsWith('@') ? args.path.split('/').slice(0, 2).join('/') : args.path.split('/')[0]!;
      return BUNDLED.has(pkg) ? undefined : { path: args.path, external: true };
    });
  },
};

const builtAt = Date.now();
rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });
const result = await build({
  absWorkingDir: PACKAGE_ROOT,
  entryPoints: { main: join(PACKAGE_ROOT, 'src', 'cli', 'main.ts') },
  outdir: OUT,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  plugins: [externalPackages],
  sourcemap: true,
  outExtension: { '.js': '.mjs' },
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});
// The metafile names inputs relative to absWorkingDir, the package root; package-lock.json stands for the
// packages bundled (an `npm ci` that changes them rewrites it).
const inputs = [...Object.keys(result.metafile.inputs).filter((f) => !f.split('/').includes('node_modules')), 'package-lock.json'].sort();
writeFileSync(STAMP, JSON.stringify({ builtAt, inputs } satisfies Stamp, null, 2) + '\n');
const bytes = Object.entries(result.metafile.outputs)
  .filter(([f]) => f.endsWith('.mjs'))
  .reduce((s, [, o]) => s + o.bytes, 0);
if (json) console.log(JSON.stringify({ built: true, inputs: inputs.length, bytes }));
else console.log(`ferry bundled into build/cli: ${inputs.length} source files, ${(bytes / 1024).toFixed(0)} KiB`);
