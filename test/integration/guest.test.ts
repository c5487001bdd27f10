/**
 * The tiny guest for real: build the image, boot it under QEMU (TCG), wait for ferry-guest's READY line on
 * the serial console, then drive it over the virtio-serial channel: boot id, the dirtier and its check
 * (which must be able to fail), and a disk pattern whose sum is stable. One boot for all of it.
 * The NIC is QEMU's user-mode network with one UDP port forwarded from 127.0.0.1, enough to check /init's
 * address set-up, UDP commands and the prober. (restrict=on would drop the guest's UDP replies; the guest
 * gets no default route instead, and ferry-guest only ever answers what it was sent.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolveImage } from '../../src/guest/image.ts';
import { GuestChannel, GuestUdp } from '../../src/guest/client.ts';
import { UdpProbe } from '../../src/guest/udp-probe.ts';
import { createSocket } from 'node:dgram';

const READY_RE = /FERRY-GUEST READY boot_id=(\S+)/;

/** A UDP port free on 127.0.0.1 right now (QEMU binds it for the forward a moment later). */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function waitReady(log: string, qemu: ChildProcess, stderr: () => string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(log, 'utf8').catch(() => '');
    const m = READY_RE.exec(text);
    if (m) return m[1]!;
    if (qemu.exitCode !== null || qemu.signalCode !== null) throw new Error(`QEMU exited: ${stderr()}\n${text}`);
    if (Date.now() > deadline) throw new Error(`no READY within ${timeoutMs} ms; serial log:\n${text.slice(-2000)}`);
    await sleep(200);
  }
}

test('the tiny guest boots, reports its boot id and answers over virtio-serial', { timeout: 180_000 }, async () => {
  const { kernel, initrd } = await resolveImage('tiny');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-guest-it-'));
  const log = join(dir, 'serial.log');
  const sock = join(dir, 'guest.sock');
  const disk = join(dir, 'disk.raw');
  await writeFile(disk, '');
  await truncate(disk, 16 * 1024 * 1024);
  let qemu: ChildProcess | undefined;
  let ch: GuestChannel | undefined;
  let udp: GuestUdp | undefined;
  const fwd = await freeUdpPort();
  let stderr = '';
  try {
    // -nographic without a default serial or monitor: the console goes to the log file only.
    qemu = spawn(
      'qemu-system-x86_64',
      [
        '-accel', 'tcg', '-machine', 'pc-q35-10.0', '-cpu', 'qemu64', '-m', '256M', '-smp', '1',
        '-nographic', '-nodefaults', '-serial', `file:${log}`,
        '-kernel', kernel, '-initrd', initrd,
        '-append', 'console=ttyS0 quiet panic=-1 ferry.name=guest-it ferry.ip=10.0.2.15/24',
        '-chardev', `socket,id=guest0,path=${sock},server=on,wait=off`,
        '-device', 'virtio-serial-pci,id=vser0',
        '-device', 'virtserialport,bus=vser0.0,chardev=guest0,name=org.ferry.guest.0',
        '-drive', `file=${disk},format=raw,if=none,id=d0,cache=none,aio=threads`,
        '-device', 'virtio-blk-pci,drive=d0',
        '-netdev', `user,id=n0,hostfwd=udp:127.0.0.1:${fwd}-10.0.2.15:7777`,
        '-device', 'virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    qemu.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const readyBootId = await waitReady(log, qemu, () => stderr, 120_000);

    ch = await GuestChannel.connect(sock);
    const info = await ch.info();
    assert.equal(info.bootId.length, 36);
    assert.match(info.bootId, /^[0-9a-f-]{36}$/);
    assert.equal(info.bootId, readyBootId);
    assert.equal(info.dirty.running, false);

    await ch.dirtyStart({ mib: 32, rateMBps: 50 });
    await sleep(1000);
    const good = await ch.dirtyVerify();
    assert.ok(good.ok, JSON.stringify(good));
    assert.equal(good.pages, 32 * 256);
    assert.ok(good.passes > 0, `passes ${good.passes}`);
    assert.equal((await ch.info()).dirty.running, true);

    // The check must be able to fail: break one page and see it named.
    await ch.dirtyCorrupt(100);
    const bad = await ch.dirtyVerify();
    assert.equal(bad.ok, false);
    assert.ok(!bad.ok && bad.firstBadPage === 100 && bad.badPages === 1, JSON.stringify(bad));
    await ch.dirtyStop();
    assert.equal((await ch.info()).dirty.running, false);

    const filled = await ch.diskFill('vda', 4, 20240501);
    assert.match(filled.sum, /^[0-9a-f]{16}$/);
    assert.equal((await ch.diskSum('vda', 4)).sum, filled.sum);
    assert.equal((await ch.diskSum('/dev/vda', 4)).sum, filled.sum);
    const other = await ch.diskFill('vda', 4, 7);
    assert.notEqual(other.sum, filled.sum);
    await ch.diskFill('vda', 4, 20240501);

    // Unknown commands are refused, bad devices too; the guest keeps answering.
    await assert.rejects(ch.command('no such thing'), /unknown command/);
    await assert.rejects(ch.diskSum('nope', 1), /open/);

    // The host side goes away and comes back (agent restart, migration): the guest picks it up again.
    await ch.close();
    ch = undefined;
    await sleep(300);
    ch = await GuestChannel.connect(sock);
    // Well under the guest's 5 s recheck: the reconnect is noticed by SIGIO, not by polling.
    const again = await ch.info({ timeoutMs: 2000 });
    assert.equal(again.bootId, readyBootId);
    assert.equal((await ch.diskSum('vda', 4)).sum, filled.sum);

    // Over the network: /init gave eth0 its address, ferry-guest answers UDP, the prober sees no gap.
    udp = await GuestUdp.open('127.0.0.1', { port: fwd });
    assert.equal((await udp.info({ timeoutMs: 3000 })).bootId, readyBootId);
    const prober = new UdpProbe({ ip: '127.0.0.1', port: fwd });
    await prober.start();
    await sleep(500);
    const probes = await prober.stop();
    assert.ok(probes.received >= 20, JSON.stringify(probes));
    assert.ok(probes.longestGapMs !== null && probes.longestGapMs < 150, JSON.stringify(probes));
  } finally {
    await udp?.close().catch(() => undefined);
    await ch?.close().catch(() => undefined);
    if (qemu?.pid !== undefined && qemu.exitCode === null && qemu.signalCode === null) {
      const gone = new Promise((r) => qemu!.once('exit', r));
      qemu.kill('SIGKILL');
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  }
});
