/**
 * The host's image cache: a sha256 mismatch keeps nothing, concurrent first uses of one image write it once
 * (the others find it present), a disk resolves to the cached copy or is refused, and an overlay copied from
 * another host is pointed at this host's copy (real qemu-img).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { basePathOf, cachedImagePath, ImageCache, rebaseOverlay } from './images.ts';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The bytes in small chunks with pauses: a transfer that is still going when the next one starts. */
function slowly(b: Buffer, chunks = 8): Readable {
  const size = Math.ceil(b.length / chunks);
  return Readable.from(
    (async function* () {
      for (let i = 0; i < b.length; i += size) {
        await sleep(5);
        yield b.subarray(i, i + size);
      }
    })(),
  );
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-images-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('a sha256 mismatch is refused with FERRY_E_IMAGE_CHECKSUM and keeps nothing', () =>
  withDir(async (dir) => {
    const cache = new ImageCache(dir);
    const want = sha(Buffer.from('the image the store has'));
    await assert.rejects(cache.receive(want, slowly(Buffer.from('something else arrived'))), {
      code: 'FERRY_E_IMAGE_CHECKSUM',
    });
    assert.deepEqual(await readdir(cache.dir), [], 'no file, no temporary file');
    assert.deepEqual(await cache.list(), []);
    assert.throws(
      () =>
        basePathOf(dir, {
          id: 'vda',
          sizeBytes: 2 ** 20,
          shared: false,
          backing: { image: 'img', sha256: want, format: 'raw' },
        }),
      {
        code: 'FERRY_E_IMAGE_NOT_ON_HOST',
      },
    );
    await assert.rejects(cache.receive('NOT-A-SHA', Readable.from([Buffer.from('x')])), {
      code: 'FERRY_E_BAD_INPUT',
    });
  }));

test('concurrent first uses of one image write it once; the others find it present', () =>
  withDir(async (dir) => {
    const cache = new ImageCache(dir);
    const img = randomBytes(256 * 1024);
    const s = sha(img);
    const results = await Promise.all(Array.from({ length: 4 }, () => cache.receive(s, slowly(img))));
    assert.deepEqual(results.map((r) => r.action).sort(), ['fetched', 'present', 'present', 'present']);
    assert.ok(results.every((r) => r.sha256 === s && r.bytes === img.length));
    assert.deepEqual(await readdir(cache.dir), [s], 'one file, no leftovers');
    assert.ok((await readFile(cachedImagePath(dir, s))).equals(img));
    assert.deepEqual(await cache.list(), [{ sha256: s, bytes: img.length }]);
    // A failed write of another image beside it does not disturb it.
    await assert.rejects(cache.receive(sha(Buffer.from('b')), Readable.from([Buffer.from('c')])), {
      code: 'FERRY_E_IMAGE_CHECKSUM',
    });
    assert.deepEqual(await readdir(cache.dir), [s]);
    const disk = {
      id: 'vda',
      sizeBytes: 2 ** 20,
      shared: false,
      backing: { image: 'img', sha256: s, format: 'raw' as const },
    };
    assert.equal(basePathOf(dir, disk), join(dir, 'images', s));
    assert.equal(
      basePathOf(dir, { ...disk, backing: { path: '/srv/own.raw', format: 'raw' } }),
      '/srv/own.raw',
      "a user's own file stays its path",
    );
  }));

test("an overlay copied from another host is rebased onto this host's copy, its data untouched", () =>
  withDir(async (dir) => {
    const base = join(dir, 'base.raw');
    await writeFile(base, Buffer.alloc(2 ** 20));
    const overlay = join(dir, 'vda.qcow2');
    // Made on "another host": its header names a base this one does not have.
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-u',
      '-b',
      '/elsewhere/images/abc',
      '-F',
      'raw',
      overlay,
      '1M',
    ]);
    await rebaseOverlay(overlay, base, 'raw');
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', overlay], { encoding: 'utf8' }),
    ) as Record<string, unknown>;
    assert.equal(info['backing-filename'], base);
    assert.equal(info['backing-filename-format'], 'raw');
  }));
