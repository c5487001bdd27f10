import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { defaultVmSpec, MIB, type VmSpec } from '../common/spec.ts';
import { checkSharedDisks, fingerprintSharedDisks } from './shared-disks.ts';

function withDir(fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-shared-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const specOn = (path: string): VmSpec =>
  defaultVmSpec('s1', { disks: [{ id: 'vda', sizeBytes: 2 * MIB, shared: true, path, format: 'raw' }] });

const code = (e: unknown): string => (e instanceof FerryError ? e.code : String(e));

test(
  'the same file passes; a missing path is FERRY_E_SHARED_MISSING',
  withDir(async (dir) => {
    const path = join(dir, 'd.raw');
    writeFileSync(path, Buffer.alloc(2 * MIB, 7));
    const seen = await fingerprintSharedDisks(specOn(path));
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.sizeBytes, 2 * MIB);
    await checkSharedDisks(specOn(path), seen);
    await assert.rejects(
      checkSharedDisks(specOn(join(dir, 'gone.raw')), seen),
      (e) => code(e) === 'FERRY_E_SHARED_MISSING',
    );
  }),
);

test(
  'another size, or another first MiB, is FERRY_E_SHARED_DIFFERS; bytes after the first MiB are not looked at',
  withDir(async (dir) => {
    const path = join(dir, 'd.raw');
    writeFileSync(path, Buffer.alloc(2 * MIB, 7));
    const source = await fingerprintSharedDisks(specOn(path));
    const tail = Buffer.alloc(2 * MIB, 7);
    tail[MIB + 5] = 1;
    writeFileSync(path, tail);
    await checkSharedDisks(specOn(path), source);
    const head = Buffer.alloc(2 * MIB, 7);
    head[5] = 1;
    writeFileSync(path, head);
    await assert.rejects(checkSharedDisks(specOn(path), source), (e) => code(e) === 'FERRY_E_SHARED_DIFFERS');
    writeFileSync(path, Buffer.alloc(3 * MIB, 7));
    await assert.rejects(
      checkSharedDisks(specOn(path), source),
      (e) => code(e) === 'FERRY_E_SHARED_DIFFERS' && /bytes here/.test((e as Error).message),
    );
  }),
);

test(
  'without fingerprints (an older controller) only presence is checked; local disks are not looked at',
  withDir(async (dir) => {
    await assert.rejects(
      checkSharedDisks(specOn(join(dir, 'none.raw')), undefined),
      (e) => code(e) === 'FERRY_E_SHARED_MISSING',
    );
    const local = defaultVmSpec('l1', { disks: [{ id: 'vda', sizeBytes: MIB, shared: false }] });
    await checkSharedDisks(local, undefined);
    assert.deepEqual(await fingerprintSharedDisks(local), []);
  }),
);
