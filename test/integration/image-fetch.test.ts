/**
 * Images fetched on first use (issue #9), through the real CLI in a two-host lab, asserted from what the
 * hosts have — each agent's cache (`<host dir>/images/<sha256>`, its bytes hashed here) and `qemu-img info`
 * of the VM's overlay — never from the store. A small bootable raw image (a hand-assembled boot sector that
 * prints a line, then a dot about every second from the BIOS timer: the guest visibly goes on running) is
 * imported; a VM created from it on h1 makes h1 fetch it; a live migration with copied storage to h2 makes h2
 * fetch it first (the job says `fetched`), only the overlay is mirrored, and the guest runs on h2 only; back
 * to h1 the job says `present`; a cold move to h2 after h2's copy was removed fetches it again and the
 * copied overlay's header names h2's own copy.
 *
 * The boot sector (16-bit real mode at 0x7c00):
 *   mov dx,0x3f8 · mov si,msg · l: lodsb · test al,al · jz t · out dx,al · jmp l ·
 *   t: sti · d: mov al,'.' · out dx,al · mov cx,18 · w: hlt · loop w · jmp d · msg: …
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ImageTransfer, MigrationJson } from '../../src/common/migration.ts';
import { readLabState } from '../../src/lab/index.ts';
import { LabHarness, waitFor } from './helpers.ts';

const VM = 'fetch1';
const IMAGE = 'ticker';
const MARK = 'FERRY-TICKER UP';
const BASE_MIB = 8;
const h = new LabHarness('f');

function tickerBootSector(): Buffer {
  // prettier-ignore
  const code = [
    0xba, 0xf8, 0x03, 0xbe, 0x1a, 0x7c, // mov dx,0x3f8; mov si,0x7c1a (msg)
    0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, // print msg
    0xfb, 0xb0, 0x2e, 0xee, 0xb9, 0x12, 0x00, // sti; '.' out; cx = 18 timer ticks
    0xf4, 0xe2, 0xfd, 0xeb, 0xf5, // hlt; loop; jmp to the dot
  ];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector, 0);
  Buffer.from(`${MARK}\r\n\0`, 'latin1').copy(sector, code.length);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** The images a host's agent holds, each checked by hashing its bytes here. */
function cached(host: string): string[] {
  const dir = join(h.hostDir(host), 'images');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .sort()
    .map((f) => {
      assert.match(f, /^[0-9a-f]{64}$/, `${host} keeps only complete images, named by sha256 (${f})`);
      assert.equal(sha(join(dir, f)), f, `${host}'s copy ${f} holds the bytes of its name`);
      return f;
    });
}

/** The base named in the header of the VM's overlay on that host. */
function overlayBase(host: string): { file: string; format: string } {
  const info = JSON.parse(
    execFileSync('qemu-img', ['info', '--output=json', '-U', join(h.hostDir(host), 'vms', VM, 'vda.qcow2')], {
      encoding: 'utf8',
    }),
  ) as { 'backing-filename'?: string; 'backing-filename-format'?: string };
  return { file: String(info['backing-filename']), format: String(info['backing-filename-format']) };
}

/** The guest runs on `host` and nowhere else: one QEMU there, none on the other, and it keeps printing dots. */
async function runsOnlyOn(host: string, other: string): Promise<void> {
  assert.equal(h.qemuPids(host, VM).length, 1, `one QEMU of ${VM} on ${host}`);
  assert.deepEqual(h.qemuPids(other, VM), [], `no QEMU of ${VM} on ${other}`);
  const v = await h.ferryJson<{ host: string; state: string }>(['vm', 'show', VM]);
  assert.deepEqual([v.host, v.state], [host, 'running']);
  const dots = async () =>
    ((await h.ferryJson<{ console: string }>(['vm', 'console', VM])).console.match(/\./g) ?? []).length;
  const n0 = await dots();
  await waitFor(`the guest to go on ticking on ${host}`, async () => (await dots()) > n0 + 1, 30_000, 500);
}

describe('images fetched on first use, in a two-host lab', { timeout: 600_000 }, () => {
  let base = '';
  let baseSum = '';
  const measured: string[] = [];

  before(async () => {
    base = join(h.root, 'ticker.raw');
    const img = Buffer.alloc(BASE_MIB * 2 ** 20);
    tickerBootSector().copy(img, 0);
    randomBytes(4 * 2 ** 20).copy(img, 2 ** 20); // bytes a fetch must really move
    writeFileSync(base, img);
    baseSum = sha(base);
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
  });

  after(() => h.down(measured));

  it('a VM created from an image on h1 makes h1 fetch it; h2 has nothing; the overlay sits on h1’s copy', async () => {
    await h.ferryJson(['image', 'import', IMAGE, base]);
    assert.deepEqual([cached('h1'), cached('h2')], [[], []], 'import puts nothing on the hosts');
    const v = await h.ferryJson<{ host: string; state: string; spec: { disks: { backing?: unknown }[] } }>([
      'vm',
      'create',
      VM,
      '--image',
      IMAGE,
      '--memory',
      '64M',
      '--host',
      'h1',
      '--no-guest-agent',
    ]);
    assert.deepEqual([v.host, v.state], ['h1', 'running']);
    assert.deepEqual(v.spec.disks[0]?.backing, { image: IMAGE, sha256: baseSum, format: 'raw' });
    assert.deepEqual([cached('h1'), cached('h2')], [[baseSum], []]);
    assert.deepEqual(overlayBase('h1'), { file: join(h.hostDir('h1'), 'images', baseSum), format: 'raw' });
    await waitFor(
      'the boot sector line on the console',
      async () => (await h.ferryJson<{ console: string }>(['vm', 'console', VM])).console.includes(MARK),
      60_000,
      250,
    );
    await runsOnlyOn('h1', 'h2');
    const shown = await h.ferryJson<{ hosts?: string[] }>(['image', 'show', IMAGE]);
    assert.deepEqual(shown.hosts, ['h1']);
  });

  it('live with copied storage to h2: h2 fetches the base first (the job says fetched), only the overlay is mirrored', async () => {
    const m = await h.ferryJson<MigrationJson>(
      ['vm', 'migrate', VM, '--to', 'h2', '--storage', 'copy', '--wait'],
      [0, 1],
    );
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.deepEqual(m.images, [
      { name: IMAGE, sha256: baseSum, action: 'fetched', bytes: BASE_MIB * 2 ** 20 },
    ] satisfies ImageTransfer[]);
    assert.ok(
      (m.progress?.disk?.totalBytes ?? 0) < 2 ** 20,
      `only the overlay is mirrored: ${JSON.stringify(m.progress?.disk)}`,
    );
    assert.deepEqual([cached('h1'), cached('h2')], [[baseSum], [baseSum]]);
    assert.deepEqual(overlayBase('h2'), { file: join(h.hostDir('h2'), 'images', baseSum), format: 'raw' });
    await runsOnlyOn('h2', 'h1');
    const human = await h.ferry(['migration', 'show', m.id]);
    assert.match(human.stdout, new RegExp(`base images on h2: ${IMAGE} fetched first`));
    measured.push(
      `live h1→h2, base fetched first: total ${m.totalMs} ms, overlay mirrored ${m.progress?.disk?.totalBytes} bytes`,
    );
  });

  it('back to h1, which has the base: the job says present', async () => {
    const m = await h.ferryJson<MigrationJson>(
      ['vm', 'migrate', VM, '--to', 'h1', '--storage', 'copy', '--wait'],
      [0, 1],
    );
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.deepEqual(m.images, [{ name: IMAGE, sha256: baseSum, action: 'present', bytes: 0 }]);
    assert.deepEqual(overlayBase('h1'), { file: join(h.hostDir('h1'), 'images', baseSum), format: 'raw' });
    await runsOnlyOn('h1', 'h2');
    measured.push(`live h2→h1, base present: total ${m.totalMs} ms`);
  });

  it("cold to h2 after h2's copy is gone: fetched again, the copied overlay names h2's own copy", async () => {
    rmSync(join(h.hostDir('h2'), 'images', baseSum));
    const m = await h.ferryJson<MigrationJson>(
      ['vm', 'migrate', VM, '--to', 'h2', '--mode', 'cold', '--wait'],
      [0, 1],
    );
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    assert.deepEqual(m.images, [
      { name: IMAGE, sha256: baseSum, action: 'fetched', bytes: BASE_MIB * 2 ** 20 },
    ]);
    assert.deepEqual([cached('h1'), cached('h2')], [[baseSum], [baseSum]]);
    assert.deepEqual(overlayBase('h2'), { file: join(h.hostDir('h2'), 'images', baseSum), format: 'raw' });
    await runsOnlyOn('h2', 'h1');
    assert.equal(sha(base), baseSum, 'the base was never written');
    measured.push(`cold h1→h2, base fetched first: total ${m.totalMs} ms`);
    await h.ferryJson(['vm', 'delete', VM]);
  });
});
