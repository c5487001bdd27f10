import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../common/errors.ts';
import { attachQemu, isOurQemu, killQemu, launchQemu, processGone, readPidfile, runFiles, waitForExit, type QemuHandle } from './process.ts';

/** A QEMU without a guest (`-machine none`): enough to exercise launch, attach and exit cheaply. */
function bareArgv(runDir: string): string[] {
  const f = runFiles(runDir);
  return ['-machine', 'none,accel=tcg', '-nodefaults', '-display', 'none', '-no-user-config',
    '-qmp', `unix:${f.qmpSocket},server=on,wait=off`, '-pidfile', f.pidfile];
}

test('launch, 0600 sockets, pidfile, attach after the first client left, quit = QMP closed + process gone', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-proc-'));
  let h: QemuHandle | undefined;
  try {
    const g = runFiles(dir).guestSocket;
    h = await launchQemu([...bareArgv(dir), '-chardev', `socket,id=guest0,path=${g},server=on,wait=off`], { runDir: dir });
    const f = runFiles(dir);
    assert.equal((await stat(f.qmpSocket)).mode & 0o777, 0o600);
    assert.equal((await stat(f.guestSocket)).mode & 0o777, 0o600);
    assert.equal(await readPidfile(f.pidfile), h.pid);
    assert.ok(isOurQemu(h.pid, f.qmpSocket));
    assert.ok(!isOurQemu(h.pid, join(dir, 'other.sock')));
    assert.equal(typeof (await h.qmp.execute('query-status')).status, 'string');
    await h.qmp.close();

    const again = await attachQemu(dir);
    assert.ok(again);
    assert.equal(again.pid, h.pid);
    assert.equal(again.child, false);
    await again.qmp.execute('quit');
    assert.equal(await waitForExit(again, 5000), true);
    assert.ok(processGone(h.pid));
    assert.equal(await attachQemu(dir), undefined);
  } finally {
    if (h) killQemu(h.pid, runFiles(dir).qmpSocket);
    await rm(dir, { recursive: true, force: true });
  }
});

test('QEMU that refuses its argv fails fast with FERRY_E_QEMU_START and its stderr', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-proc-'));
  try {
    const t0 = Date.now();
    await assert.rejects(launchQemu([...bareArgv(dir), '-no-such-option'], { runDir: dir, timeoutMs: 10_000 }), (e: unknown) => {
      assert.ok(e instanceof FerryError);
      assert.equal(e.code, 'FERRY_E_QEMU_START');
      assert.match(e.message, /no-such-option/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('attach ignores a pidfile whose PID is not our QEMU (recycled PID)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-proc-'));
  try {
    await writeFile(runFiles(dir).pidfile, `${process.pid}\n`);
    assert.equal(await attachQemu(dir), undefined);
    killQemu(process.pid, runFiles(dir).qmpSocket); // must be a no-op: we are not a QEMU
    assert.ok(!processGone(process.pid));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
