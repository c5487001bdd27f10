/**
 * Booting a user's own disk (issue #9), through the real CLI in a two-host lab: images imported into the
 * server's store (qemu-img decides the format, sha256 recorded), booted by name; SeaBIOS boots a raw disk
 * whose boot sector prints a line on the serial port, under a qcow2 overlay of the VM (the base is never
 * written); the VM is `running` but not `ready` (its qemu-guest-agent port has nobody behind it), which is
 * not a failure; a live migration with copied storage moves only the overlay, the destination opening the
 * same base; a disk image that is neither qcow2 nor raw is refused with exit 2 and creates nothing. Direct
 * kernel boot (the tiny guest's kernel and initramfs standing in for a distribution's, the disk attached as
 * root) with an address reserved by --ip; a bad --append, a missing kernel, a taken or outside address are
 * refused with exit 2 and their stable codes.
 *
 * The boot sector (16-bit real mode, loaded at 0x7c00) is 17 bytes of code, assembled here by hand:
 *   mov dx,0x3f8 · mov si,msg · l: lodsb · test al,al · jz h · out dx,al · jmp l · h: hlt · jmp h · msg: …
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationJson } from '../../src/common/migration.ts';
import type { VmSpec } from '../../src/common/spec.ts';
import { resolveImage } from '../../src/guest/image.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, waitFor } from './helpers.ts';

const VM = 'disk1';
const MARK = 'FERRY-DISK BOOTED';
const BASE_MIB = 32;
const h = new LabHarness('b');

function bootSector(): Buffer {
  const code = [0xba, 0xf8, 0x03, 0xbe, 0x11, 0x7c, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector, 0);
  Buffer.from(`${MARK}\r\n\0`, 'latin1').copy(sector, code.length);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

interface VmDoc {
  name: string;
  host: string;
  state: string;
  ready: boolean;
  spec: VmSpec;
}

describe('boot from a disk image under an overlay, in a two-host lab', { timeout: 480_000 }, () => {
  let base = '';
  let baseSum = '';

  before(async () => {
    // A raw disk: the boot sector, then 16 MiB of data a whole-disk copy would have to move.
    base = join(h.root, 'base.raw');
    const img = Buffer.alloc(BASE_MIB * 2 ** 20);
    bootSector().copy(img, 0);
    randomBytes(16 * 2 ** 20).copy(img, 2 ** 20);
    writeFileSync(base, img);
    baseSum = sha(base);
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
  });

  after(() => h.down());

  it('imports the base into the store; refuses a vmdk, an unknown image name and an unknown path, creating nothing', async () => {
    const img = await h.ferryJson<{ name: string; format: string; virtualSizeBytes: number; sha256: string; path: string }>(['image', 'import', 'boot1', base]);
    assert.deepEqual([img.format, img.virtualSizeBytes, img.sha256], ['raw', BASE_MIB * 2 ** 20, baseSum]);
    const unknown = await h.ferry(['vm', 'create', 'bad0', '--image', 'nope', '--host', 'h1', '--json']);
    assert.equal(unknown.code, 2, unknown.stdout + unknown.stderr);
    assert.equal((JSON.parse(unknown.stdout) as { error: { code: string } }).error.code, 'FERRY_E_IMAGE_NOT_FOUND');
    const vmdk = join(h.root, 'disk.qcow2'); // the name lies: qemu-img decides
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', vmdk, '1M']);
    const badImport = await h.ferry(['image', 'import', 'bad2', vmdk, '--json']);
    assert.equal(badImport.code, 2);
    assert.equal((JSON.parse(badImport.stdout) as { error: { code: string } }).error.code, 'FERRY_E_BAD_IMAGE_FORMAT');
    assert.deepEqual((await h.ferryJson<{ name: string }[]>(['image', 'list'])).map((i) => i.name), ['boot1']);
    for (const [file, code] of [[vmdk, 'FERRY_E_BAD_IMAGE_FORMAT'], [join(h.root, 'nope.raw'), 'FERRY_E_BAD_IMAGE']] as const) {
      const r = await h.ferry(['vm', 'create', 'bad1', '--disk-image', file, '--host', 'h1', '--json']);
      assert.equal(r.code, 2, `${file}: ${r.stdout}${r.stderr}`);
      assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code);
    }
    const list = await h.ferryJson<VmDoc[]>(['vm', 'list']);
    assert.deepEqual(list.map((v) => v.name), []);
  });

  it('SeaBIOS boots the disk through the overlay; running, not ready, and that is no failure', async () => {
    const t0 = Date.now();
    const v = await h.ferryJson<VmDoc>(['vm', 'create', VM, '--image', 'boot1', '--memory', '64M', '--host', 'h1']);
    assert.equal(v.state, 'running');
    assert.equal(v.ready, false);
    assert.equal(v.spec.boot.kind, 'disk');
    // By identity, not by the store's path: each host opens its own copy.
    assert.deepEqual(v.spec.disks[0]?.backing, { image: 'boot1', sha256: baseSum, format: 'raw' });
    const inUse = await h.ferry(['image', 'delete', 'boot1', '--json']);
    assert.equal(inUse.code, 2);
    assert.equal((JSON.parse(inUse.stdout) as { error: { code: string } }).error.code, 'FERRY_E_IMAGE_IN_USE');
    await waitFor('the boot sector line on the serial console', async () => {
      const c = await h.ferryJson<{ console: string }>(['vm', 'console', VM]);
      return c.console.includes(MARK);
    }, 60_000, 250);
    console.log(`disk boot: create → boot sector on the console in ${Date.now() - t0} ms`);
    // The same disk given by path, not imported: booted the same way.
    const byPath = await h.ferryJson<VmDoc>(['vm', 'create', 'disk2', '--disk-image', base, '--memory', '64M', '--host', 'h2', '--no-guest-agent']);
    assert.deepEqual([byPath.state, byPath.spec.disks[0]?.backing, byPath.spec.guestAgent], ['running', { path: base, format: 'raw' }, false]);
    assert.equal(v.spec.disks[0]?.sizeBytes, BASE_MIB * 2 ** 20);
    assert.equal(v.spec.guestAgent, true);
    await waitFor('the path-given disk to boot too', async () => (await h.ferryJson<{ console: string }>(['vm', 'console', 'disk2'])).console.includes(MARK), 60_000, 250);
    await h.ferryJson(['vm', 'delete', 'disk2']);
    // Asked to wait for a guest that never answers: the command fails (exit 1), the VM runs on, not ready.
    const waited = await h.ferry(['vm', 'create', 'disk3', '--disk-image', base, '--memory', '64M', '--host', 'h2', '--wait-ready', '--ready-timeout', '2s', '--json']);
    assert.equal(waited.code, 1, waited.stdout + waited.stderr);
    assert.equal((JSON.parse(waited.stdout) as { error: { code: string } }).error.code, 'FERRY_E_GUEST_TIMEOUT');
    const d3 = await h.ferryJson<VmDoc>(['vm', 'show', 'disk3']);
    assert.deepEqual([d3.state, d3.ready], ['running', false]);
    await h.ferryJson(['vm', 'delete', 'disk3']);
  });

  it('direct kernel boot with the disk as root and a reserved address; bad input refused, nothing created', async () => {
    const { kernel, initrd } = await resolveImage('tiny');
    assert.ok(h.state);
    const [net, len] = h.state.network.vmCidr.split('/') as [string, string];
    const ip = `${net.split('.').slice(0, 3).join('.')}.200/${len}`;
    const common = ['--initrd', initrd, '--disk-image', base, '--host', 'h1', '--memory', '128M', '--json'];
    const v = await h.ferryJson<VmDoc & { ip: string }>(['vm', 'create', 'k1', '--kernel', kernel, '--append', 'console=ttyS0 ferry.name=k1', '--ip', ip, ...common.slice(0, -1)]);
    assert.equal(v.spec.boot.kind, 'direct');
    assert.equal(v.ip, ip.split('/')[0]);
    assert.equal(v.spec.nics[0]?.ip, ip);
    await waitFor('the directly booted kernel to reach ferry-guest', async () => (await h.ferryJson<{ console: string }>(['vm', 'console', 'k1'])).console.includes('FERRY-GUEST READY'), 90_000, 250);
    const refusals: [string[], string][] = [
      [['--kernel', kernel, '--append', 'console=ttyS0 ferry.name=x"', '--net', 'vm0'], 'FERRY_E_BAD_CMDLINE'],
      [['--kernel', kernel, '--append', 'console=ttyS0; reboot'], 'FERRY_E_BAD_CMDLINE'],
      [['--kernel', join(h.root, 'no-vmlinuz')], 'FERRY_E_BAD_BOOT'],
      [['--kernel', kernel, '--ip', ip], 'FERRY_E_IP_TAKEN'],
      [['--kernel', kernel, '--ip', '192.0.2.9/24'], 'FERRY_E_BAD_IP'],
    ];
    for (const [args, code] of refusals) {
      const r = await h.ferry(['vm', 'create', 'k2', ...args, ...common]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, args.join(' '));
    }
    assert.ok(!(await h.ferryJson<VmDoc[]>(['vm', 'list'])).some((x) => x.name === 'k2'), 'refusals create nothing');
    await h.ferryJson(['vm', 'delete', 'k1']);
  });

  it('a live migration with copied storage moves only the overlay; the base stays untouched', async () => {
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', VM, '--to', 'h2', '--storage', 'copy', '--wait'], [0, 1]);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    const disk = m.progress?.disk;
    assert.ok(disk, `the job reports the disk copy: ${JSON.stringify(m.progress)}`);
    // A whole-disk copy would move ≥ 16 MiB of random data; the overlay holds next to nothing.
    assert.ok(disk.totalBytes < 2 ** 20, `only the overlay is mirrored (${disk.totalBytes} bytes)`);
    console.log(`disk boot: live h1→h2 with storage copy: total ${m.totalMs} ms, disk ${disk.transferredBytes}/${disk.totalBytes} bytes mirrored (base ${BASE_MIB} MiB not copied)`);
    const v = await h.ferryJson<VmDoc>(['vm', 'show', VM]);
    assert.deepEqual([v.host, v.state], ['h2', 'running']);
    await h.ferryJson(['vm', 'delete', VM]);
    assert.equal(sha(base), baseSum, 'the base image was never written');
    const stored = await h.ferryJson<{ path: string; sha256: string }>(['image', 'show', 'boot1']);
    assert.equal(sha(stored.path), stored.sha256, 'nor the stored copy');
    await h.ferryJson(['image', 'delete', 'boot1']);
    assert.deepEqual(await h.ferryJson<unknown[]>(['image', 'list']), []);
  });
});
