import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildTinyImage, VIRTIO_MODULES } from './image.ts';
import { parseCpio } from './cpio.ts';
import { kernelPackageDir } from '../common/paths.ts';
import { FerryError } from '../common/errors.ts';

const haveKernel = existsSync(join(kernelPackageDir(), 'boot'));

test('no kernel: FERRY_E_KERNEL_MISSING', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-image-'));
  try {
    await mkdir(join(dir, 'kernel', 'boot'), { recursive: true });
    await assert.rejects(
      buildTinyImage({ outDir: join(dir, 'out'), kernelDir: join(dir, 'kernel') }),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_KERNEL_MISSING',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('same inputs, same bytes; an unchanged build is reused', { skip: !haveKernel && 'no guest kernel (npm run setup)' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-image-'));
  try {
    const a = await buildTinyImage({ outDir: join(dir, 'a') });
    const b = await buildTinyImage({ outDir: join(dir, 'b') });
    assert.equal(a.version, 1);
    assert.equal(a.name, 'tiny');
    assert.deepEqual(a.files, b.files);
    assert.equal(a.inputsSha256, b.inputsSha256);
    for (const f of a.files) {
      const bytes = await readFile(join(dir, 'a', f.name));
      assert.equal(createHash('sha256').update(bytes).digest('hex'), f.sha256, f.name);
      assert.equal(bytes.length, f.size);
    }
    const before = (await stat(join(dir, 'a', 'initramfs.gz'))).mtimeMs;
    const again = await buildTinyImage({ outDir: join(dir, 'a') });
    assert.deepEqual(again, a);
    assert.equal((await stat(join(dir, 'a', 'initramfs.gz'))).mtimeMs, before, 'reused, not rewritten');

    const entries = parseCpio(gunzipSync(await readFile(join(dir, 'a', 'initramfs.gz'))));
    const paths = new Set(entries.map((e) => e.path));
    for (const p of ['init', 'bin/busybox', 'bin/ferry-guest', 'bin/sh', 'bin/ip', 'bin/insmod', 'dev/console']) {
      assert.ok(paths.has(p), p);
    }
    for (const m of VIRTIO_MODULES) assert.ok(paths.has(`lib/modules/${m}.ko`), m);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
