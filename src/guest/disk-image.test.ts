import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspectDiskImage } from './disk-image.ts';

test('disk images: qemu-img decides, never the name; only self-contained qcow2 and raw', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-img-'));
  try {
    const img = (name: string, format: string, size: string, ...extra: string[]): string => {
      execFileSync('qemu-img', ['create', '-q', '-f', format, ...extra, join(dir, name), size]);
      return join(dir, name);
    };
    const qcow = img('base.img', 'qcow2', '2M');
    assert.deepEqual(await inspectDiskImage(qcow), { format: 'qcow2', virtualSizeBytes: 2 * 1024 * 1024 });
    // A raw disk named .qcow2 is raw.
    assert.deepEqual(await inspectDiskImage(img('liar.qcow2', 'raw', '1M')), { format: 'raw', virtualSizeBytes: 1024 * 1024 });
    await assert.rejects(inspectDiskImage(img('d.vmdk', 'vmdk', '1M')), { code: 'FERRY_E_BAD_IMAGE_FORMAT' });
    await assert.rejects(inspectDiskImage(img('top.qcow2', 'qcow2', '2M', '-b', qcow, '-F', 'qcow2')), { code: 'FERRY_E_BAD_IMAGE_FORMAT' });
    await writeFile(join(dir, 'empty.qcow2'), '');
    await assert.rejects(inspectDiskImage(join(dir, 'empty.qcow2')), { code: 'FERRY_E_BAD_IMAGE_FORMAT' });
    await assert.rejects(inspectDiskImage(join(dir, 'none.qcow2')), { code: 'FERRY_E_BAD_IMAGE_FORMAT' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
