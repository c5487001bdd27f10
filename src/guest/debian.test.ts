import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBIAN_12, machineMirror, recipeHash } from './debian.ts';

test('the mirror comes from the machine\'s own apt sources: deb822 first, the suite must match, disabled stanzas skipped', async () => {
  const etc = mkdtempSync(join(tmpdir(), 'ferry-apt-'));
  try {
    mkdirSync(join(etc, 'sources.list.d'));
    writeFileSync(join(etc, 'sources.list.d', 'a.sources'), 'Types: deb\nURIs: http://mirror.invalid/off\nSuites: bookworm\nEnabled: no\n\nTypes: deb-src\nURIs: http://mirror.invalid/src\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n');
    assert.equal(await machineMirror('bookworm', etc), 'http://mirror.invalid/debian');
    await assert.rejects(machineMirror('trixie', etc), { code: 'FERRY_E_MISSING_TOOL' });
    rmSync(join(etc, 'sources.list.d', 'a.sources'));
    writeFileSync(join(etc, 'sources.list'), '# old style\ndeb [arch=amd64] http://mirror.invalid/old bookworm main\n');
    assert.equal(await machineMirror('bookworm', etc), 'http://mirror.invalid/old');
  } finally {
    rmSync(etc, { recursive: true, force: true });
  }
});

test('the cache key changes with the recipe and only with it', () => {
  assert.equal(recipeHash(DEBIAN_12), recipeHash({ ...DEBIAN_12, packages: [...DEBIAN_12.packages] }));
  assert.notEqual(recipeHash(DEBIAN_12), recipeHash({ ...DEBIAN_12, packages: [...DEBIAN_12.packages, 'curl'] }));
  assert.notEqual(recipeHash(DEBIAN_12), recipeHash({ ...DEBIAN_12, diskBytes: DEBIAN_12.diskBytes * 2 }));
});
