#!/usr/bin/env node
// Entry point of the `ferry` binary. It runs the bundle of scripts/build-cli.ts (build/cli/) when that is
// current: every source file it holds unchanged since the build began. Otherwise, or with FERRY_NO_BUNDLE=1,
// it loads the TypeScript sources through tsx: about two seconds slower to start, never stale. The bundle has
// source maps: NODE_OPTIONS=--enable-source-maps puts the sources' lines in stack traces (it costs startup).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function bundleIsCurrent() {
  if (process.env.FERRY_NO_BUNDLE === '1') return false;
  const stampFile = join(root, 'build', 'cli', 'inputs.json');
  if (!existsSync(stampFile)) return false;
  try {
    const { builtAt, inputs } = JSON.parse(readFileSync(stampFile, 'utf8'));
    return inputs.every((f) => statSync(join(root, f), { throwIfNoEntry: false })?.mtimeMs <= builtAt);
  } catch {
    return false;
  }
}

let main;
if (bundleIsCurrent()) {
  ({ main } = await import('../build/cli/main.mjs'));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
}
process.exitCode = await main(process.argv);
