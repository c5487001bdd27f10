import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCpio, writeCpio, S_IFMT, type CpioEntry } from './cpio.ts';
import { FerryError } from '../common/errors.ts';

const entries: CpioEntry[] = [
  { type: 'dir', path: 'bin' },
  { type: 'dir', path: 'dev' },
  { type: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  { type: 'file', path: 'init', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
  { type: 'file', path: 'bin/busybox', data: Buffer.from([0, 1, 2, 3, 4]), mode: 0o755 },
  { type: 'symlink', path: 'bin/sh', target: 'busybox' },
  { type: 'file', path: 'empty', data: new Uint8Array() },
];

test('what is written parses back: types, modes, devices, data, link targets', () => {
  const buf = writeCpio(entries);
  assert.equal(buf.length % 4, 0);
  const parsed = parseCpio(buf);
  assert.deepEqual(
    parsed.map((e) => e.path),
    entries.map((e) => e.path),
  );
  const by = new Map(parsed.map((e) => [e.path, e]));
  assert.equal(by.get('bin')!.mode, 0o040755);
  assert.equal(by.get('dev/console')!.mode & S_IFMT, 0o020000);
  assert.equal(by.get('dev/console')!.rdevMajor, 5);
  assert.equal(by.get('dev/console')!.rdevMinor, 1);
  assert.equal(by.get('init')!.mode, 0o100755);
  assert.equal(by.get('init')!.data.toString(), '#!/bin/sh\necho hi\n');
  assert.deepEqual([...by.get('bin/busybox')!.data], [0, 1, 2, 3, 4]);
  assert.equal(by.get('bin/sh')!.mode, 0o120777);
  assert.equal(by.get('bin/sh')!.data.toString(), 'busybox');
  assert.equal(by.get('empty')!.data.length, 0);
  for (const [i, e] of parsed.entries()) {
    assert.equal(e.ino, i + 1, 'inodes follow entry order');
    assert.equal(e.mtime, 0);
    assert.equal(e.uid, 0);
    assert.equal(e.gid, 0);
  }
  assert.ok(buf.includes(Buffer.from('TRAILER!!!\0')));
});

test('same input gives the same bytes', () => {
  assert.ok(writeCpio(entries).equals(writeCpio(entries)));
  const copy = entries.map((e) => (e.type === 'file' ? { ...e, data: Buffer.from(e.data) } : { ...e }));
  assert.ok(writeCpio(copy).equals(writeCpio(entries)));
});

test('bad paths and duplicates are refused', () => {
  for (const path of ['/init', '../x', 'a//b', '', 'a/./b']) {
    assert.throws(
      () => writeCpio([{ type: 'dir', path }]),
      (e: unknown) => e instanceof FerryError && e.code === 'FERRY_E_BAD_INPUT',
      path,
    );
  }
  assert.throws(() => writeCpio([{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a' }]), /duplicate/);
});
